"""/pushrules over HTTP on both engines: reading the default ruleset, adding rules with
before/after, enabling, actions, deleting, m.push_rules account data, and the errors."""

from __future__ import annotations

from typing import Any

import pytest_twisted

from tests.support.client import Client, User, q
from tests.support.server import RunningServer


async def _setup(hs: RunningServer) -> tuple[Client, User]:
    c = Client(hs.client_url)
    return c, await c.register("alice")


async def _ids(c: Client, user: User, kind: str) -> list[str]:
    r = await c.call("GET", "/pushrules/", token=user.access_token)
    assert r.status == 200, r.body
    return [rule["rule_id"] for rule in r.json()["global"][kind]]


async def _put(c: Client, user: User, kind: str, rule_id: str, body: Any,
               query: str = "") -> tuple[int, Any]:
    r = await c.call("PUT", f"/pushrules/global/{kind}/{q(rule_id)}{query}", body,
                     token=user.access_token)
    return r.status, r.json()


@pytest_twisted.ensureDeferred
async def test_default_ruleset(hs: RunningServer) -> None:
    c, alice = await _setup(hs)
    r = await c.call("GET", "/pushrules/", token=alice.access_token)
    assert r.status == 200
    ruleset = r.json()["global"]
    assert set(ruleset) == {"override", "content", "room", "sender", "underride"}
    override = {rule["rule_id"]: rule for rule in ruleset["override"]}
    assert override[".m.rule.master"] == {
        "rule_id": ".m.rule.master", "default": True, "enabled": False, "conditions": [],
        "actions": [],
    }
    assert override[".m.rule.is_user_mention"]["conditions"][0]["value"] == alice.user_id
    assert override[".m.rule.invite_for_me"]["conditions"][2]["pattern"] == alice.user_id
    assert ruleset["content"][0]["pattern"] == "alice"
    assert [x["rule_id"] for x in ruleset["underride"]][-2:] == [".m.rule.message",
                                                                ".m.rule.encrypted"]
    # The same under /pushrules/global/ and per kind; a single rule and its fields.
    r = await c.call("GET", "/pushrules/global/", token=alice.access_token)
    assert r.json() == ruleset
    r = await c.call("GET", "/pushrules/global/underride/", token=alice.access_token)
    assert r.json() == ruleset["underride"]
    r = await c.call("GET", "/pushrules/global/override/.m.rule.suppress_notices",
                     token=alice.access_token)
    assert r.json()["conditions"] == [{"kind": "event_match", "key": "content.msgtype",
                                       "pattern": "m.notice"}]
    r = await c.call("GET", "/pushrules/global/override/.m.rule.master/enabled",
                     token=alice.access_token)
    assert r.json() == {"enabled": False}
    r = await c.call("GET", "/pushrules/global/underride/.m.rule.call/actions",
                     token=alice.access_token)
    assert r.json() == {"actions": ["notify", {"set_tweak": "sound", "value": "ring"}]}
    # Authentication is required.
    r = await c.call("GET", "/pushrules/")
    assert (r.status, r.json()["errcode"]) == (401, "M_MISSING_TOKEN")


@pytest_twisted.ensureDeferred
async def test_add_rules_with_before_and_after(hs: RunningServer) -> None:
    c, alice = await _setup(hs)
    body = {"pattern": "cake", "actions": ["notify", {"set_tweak": "sound",
                                                      "value": "cakealarm.wav"}]}
    assert await _put(c, alice, "content", "cake", body) == (200, {})
    r = await c.call("GET", "/pushrules/global/content/cake", token=alice.access_token)
    assert r.json() == {"rule_id": "cake", "default": False, "enabled": True,
                        "pattern": "cake", "actions": body["actions"]}
    # New rules without before/after go first; user rules come before the default ones.
    assert await _put(c, alice, "content", "tea", {"pattern": "tea", "actions": []}) == (200, {})
    assert await _ids(c, alice, "content") == ["tea", "cake", ".m.rule.contains_user_name"]
    # before: just above; after: just below.
    status, _ = await _put(c, alice, "content", "lie", {"pattern": "cake*lie",
                                                        "actions": ["notify"]}, "?before=cake")
    assert status == 200
    assert await _ids(c, alice, "content") == ["tea", "lie", "cake",
                                               ".m.rule.contains_user_name"]
    status, _ = await _put(c, alice, "content", "tea", {"pattern": "tea", "actions": []},
                           "?after=cake")
    assert status == 200
    assert await _ids(c, alice, "content") == ["lie", "cake", "tea",
                                               ".m.rule.contains_user_name"]
    # before wins over after.
    status, _ = await _put(c, alice, "content", "new", {"pattern": "x", "actions": []},
                           "?before=lie&after=tea")
    assert status == 200
    assert (await _ids(c, alice, "content"))[:4] == ["new", "lie", "cake", "tea"]
    # Updating in place keeps the position and the enabled flag.
    r = await c.call("PUT", "/pushrules/global/content/cake/enabled", {"enabled": False},
                     token=alice.access_token)
    assert r.status == 200
    assert await _put(c, alice, "content", "cake", {"pattern": "cakes", "actions": []}) == (
        200, {})
    assert (await _ids(c, alice, "content"))[:4] == ["new", "lie", "cake", "tea"]
    r = await c.call("GET", "/pushrules/global/content/cake", token=alice.access_token)
    assert (r.json()["pattern"], r.json()["enabled"]) == ("cakes", False)

    # Override and underride rules with conditions; room and sender rules.
    beer = {"conditions": [{"kind": "event_match", "key": "content.body", "pattern": "beer"},
                           {"kind": "room_member_count", "is": "<=10"}],
            "actions": ["notify", {"set_tweak": "sound", "value": "beeroclock.wav"}]}
    assert await _put(c, alice, "override", "beer", beer) == (200, {})
    ids = await _ids(c, alice, "override")
    assert ids[:3] == [".m.rule.master", "beer", ".m.rule.suppress_notices"]
    room = "!dj234r78wl45Gh4D:matrix.org"
    assert await _put(c, alice, "room", room, {"actions": []}) == (200, {})
    assert await _put(c, alice, "sender", "@spambot:matrix.org", {"actions": []}) == (200, {})
    r = await c.call("GET", f"/pushrules/global/room/{q(room)}", token=alice.access_token)
    assert r.json() == {"rule_id": room, "default": False, "enabled": True, "actions": []}
    # Historical actions are dropped.
    assert await _put(c, alice, "underride", "quiet", {"conditions": [],
                                                       "actions": ["dont_notify"]}) == (200, {})
    r = await c.call("GET", "/pushrules/global/underride/quiet/actions", token=alice.access_token)
    assert r.json() == {"actions": []}
    assert (await _ids(c, alice, "underride"))[0] == "quiet"


@pytest_twisted.ensureDeferred
async def test_enable_actions_delete_and_account_data(hs: RunningServer) -> None:
    c, alice = await _setup(hs)
    # Server-default rules can be switched and given new actions, not deleted.
    r = await c.call("PUT", "/pushrules/global/override/.m.rule.master/enabled",
                     {"enabled": True}, token=alice.access_token)
    assert r.status == 200
    r = await c.call("GET", "/pushrules/global/override/.m.rule.master", token=alice.access_token)
    assert r.json()["enabled"] is True
    actions = ["notify", {"set_tweak": "highlight"}]
    r = await c.call("PUT", "/pushrules/global/underride/.m.rule.message/actions",
                     {"actions": actions}, token=alice.access_token)
    assert r.status == 200
    r = await c.call("GET", "/pushrules/global/underride/.m.rule.message/actions",
                     token=alice.access_token)
    assert r.json() == {"actions": actions}
    r = await c.call("DELETE", "/pushrules/global/underride/.m.rule.message",
                     token=alice.access_token)
    assert (r.status, r.json()["errcode"]) == (400, "M_INVALID_PARAM")
    assert ".m.rule.message" in await _ids(c, alice, "underride")

    # The whole ruleset is mirrored to m.push_rules account data for /sync.
    r = await c.call("GET", f"/user/{q(alice.user_id)}/account_data/m.push_rules",
                     token=alice.access_token)
    assert r.status == 200
    mirrored = {x["rule_id"]: x for x in r.json()["global"]["underride"]}
    assert mirrored[".m.rule.message"]["actions"] == actions
    r = await c.call("PUT", f"/user/{q(alice.user_id)}/account_data/m.push_rules", {},
                     token=alice.access_token)
    assert r.status == 405

    # User rules: delete, then gone.
    assert await _put(c, alice, "content", "cake", {"pattern": "cake", "actions": []}) == (
        200, {})
    r = await c.call("DELETE", "/pushrules/global/content/cake", token=alice.access_token)
    assert (r.status, r.json()) == (200, {})
    for method, path in [("GET", "/pushrules/global/content/cake"),
                         ("DELETE", "/pushrules/global/content/cake"),
                         ("GET", "/pushrules/global/content/cake/enabled"),
                         ("GET", "/pushrules/global/content/cake/actions")]:
        r = await c.call(method, path, token=alice.access_token)
        assert (r.status, r.json()["errcode"]) == (404, "M_NOT_FOUND"), (method, path)
    for path, body in [("/pushrules/global/content/cake/enabled", {"enabled": True}),
                       ("/pushrules/global/content/cake/actions", {"actions": []}),
                       # A default rule under the wrong kind does not exist.
                       ("/pushrules/global/content/.m.rule.master/enabled", {"enabled": True})]:
        r = await c.call("PUT", path, body, token=alice.access_token)
        assert (r.status, r.json()["errcode"]) == (404, "M_NOT_FOUND"), path

    # Rules are per user.
    bob = await c.register("bob")
    r = await c.call("GET", "/pushrules/global/override/.m.rule.master", token=bob.access_token)
    assert r.json()["enabled"] is False


@pytest_twisted.ensureDeferred
async def test_bad_input(hs: RunningServer) -> None:
    c, alice = await _setup(hs)
    ok = {"pattern": "x", "actions": ["notify"]}
    assert await _put(c, alice, "content", "existing", ok) == (200, {})
    cases: list[tuple[str, str, Any, str, int, str]] = [
        # kind, rule_id, body, query, status, errcode
        ("content", ".mine", ok, "", 400, "M_INVALID_PARAM"),
        ("override", ".m.rule.master", {"actions": []}, "", 400, "M_INVALID_PARAM"),
        ("content", "a\\b", ok, "", 400, "M_INVALID_PARAM"),
        ("content", "a/b", ok, "", 400, "M_INVALID_PARAM"),
        ("nonsense", "x", ok, "", 400, "M_INVALID_PARAM"),
        ("room", "not-a-room", {"actions": []}, "", 400, "M_INVALID_PARAM"),
        ("sender", "not-a-user", {"actions": []}, "", 400, "M_INVALID_PARAM"),
        ("content", "x", {"pattern": "x"}, "", 400, "M_MISSING_PARAM"),
        ("content", "x", {"actions": ["notify"]}, "", 400, "M_MISSING_PARAM"),
        ("content", "x", {"pattern": 5, "actions": []}, "", 400, "M_BAD_JSON"),
        ("content", "x", {"pattern": "x", "actions": "notify"}, "", 400, "M_BAD_JSON"),
        ("content", "x", {"pattern": "x", "actions": [5]}, "", 400, "M_BAD_JSON"),
        ("content", "x", {"pattern": "x", "actions": ["explode"]}, "", 400, "M_INVALID_PARAM"),
        ("content", "x", {"pattern": "x", "actions": [{"value": 1}]}, "", 400,
         "M_INVALID_PARAM"),
        ("content", "x", {"pattern": "x", "actions": [{"set_tweak": "highlight",
                                                       "value": "yes"}]}, "", 400,
         "M_INVALID_PARAM"),
        ("override", "x", {"actions": [], "conditions": {}}, "", 400, "M_BAD_JSON"),
        ("override", "x", {"actions": [], "conditions": [5]}, "", 400, "M_BAD_JSON"),
        ("override", "x", {"actions": [], "conditions": [{"key": "type"}]}, "", 400,
         "M_BAD_JSON"),
        ("override", "x", {"actions": [], "conditions": [{"kind": "event_match",
                                                          "key": "type"}]}, "", 400,
         "M_INVALID_PARAM"),
        ("override", "x", {"actions": [], "conditions": [{"kind": "room_member_count",
                                                          "is": "lots"}]}, "", 400,
         "M_INVALID_PARAM"),
        ("override", "x", {"actions": [], "conditions": [{"kind": "event_property_is",
                                                          "key": "content.x",
                                                          "value": [1]}]}, "", 400,
         "M_INVALID_PARAM"),
        ("content", "x", ok, "?before=missing", 400, "M_UNKNOWN"),
        ("content", "x", ok, "?after=missing", 400, "M_UNKNOWN"),
        ("content", "x", ok, "?before=.m.rule.contains_user_name", 400, "M_INVALID_PARAM"),
    ]
    for kind, rule_id, body, query, status, errcode in cases:
        got = await _put(c, alice, kind, rule_id, body, query)
        assert (got[0], got[1].get("errcode")) == (status, errcode), (kind, rule_id, body, query)
    # Nothing was stored by the failures.
    assert await _ids(c, alice, "content") == ["existing", ".m.rule.contains_user_name"]
    # Unknown condition kinds are accepted (they never match).
    future = {"actions": ["notify"], "conditions": [{"kind": "org.example.future"}]}
    assert await _put(c, alice, "override", "future", future) == (200, {})

    for method, path, body, status, errcode in [
        ("GET", "/pushrules/device/", None, 400, "M_INVALID_PARAM"),
        ("GET", "/pushrules/global/nonsense/", None, 400, "M_INVALID_PARAM"),
        ("GET", "/pushrules/global/nonsense/x", None, 400, "M_INVALID_PARAM"),
        ("GET", "/pushrules/global/override/missing", None, 404, "M_NOT_FOUND"),
        ("PUT", "/pushrules/global/content/existing/enabled", {}, 400, "M_MISSING_PARAM"),
        ("PUT", "/pushrules/global/content/existing/enabled", {"enabled": "yes"}, 400,
         "M_BAD_JSON"),
        ("PUT", "/pushrules/global/content/existing/actions", {}, 400, "M_MISSING_PARAM"),
        ("PUT", "/pushrules/global/content/existing/actions", {"actions": ["boom"]}, 400,
         "M_INVALID_PARAM"),
        ("PUT", "/pushrules/global/content/existing", [1], 400, "M_BAD_JSON"),
    ]:
        r = await c.call(method, path, body, token=alice.access_token)
        assert (r.status, r.json()["errcode"]) == (status, errcode), (method, path, body)
    r = await c.call("PUT", "/pushrules/global/content/existing", b"{nope",
                     token=alice.access_token)
    assert (r.status, r.json()["errcode"]) == (400, "M_NOT_JSON")


@pytest_twisted.ensureDeferred
async def test_rules_follow_a_room_upgrade(hs: RunningServer) -> None:
    c, alice = await _setup(hs)
    bob = await c.register("bob")
    r = await c.call("POST", "/createRoom", {"preset": "public_chat"}, token=bob.access_token)
    old = r.json()["room_id"]
    # A muted room, and Element's "mentions and keywords only" override for another room.
    assert await _put(c, alice, "room", old, {"actions": []}) == (200, {})
    only_mentions = {"conditions": [{"kind": "event_match", "key": "room_id", "pattern": old}],
                     "actions": []}
    assert await _put(c, alice, "override", old, only_mentions) == (200, {})
    r = await c.call("POST", "/createRoom", {
        "preset": "public_chat",
        "creation_content": {"predecessor": {"room_id": old, "event_id": "$tombstone"}},
    }, token=bob.access_token)
    assert r.status == 200, r.body
    new = r.json()["room_id"]
    r = await c.call("POST", f"/join/{q(new)}", {}, token=alice.access_token)
    assert r.status == 200
    assert hs.hs.services is not None
    await hs.hs.services.push.evaluator.settled([new])
    r = await c.call("GET", f"/pushrules/global/room/{q(new)}", token=alice.access_token)
    assert (r.status, r.json()["actions"]) == (200, [])
    r = await c.call("GET", f"/pushrules/global/override/{q(new)}", token=alice.access_token)
    assert r.status == 200
    assert r.json()["conditions"] == [{"kind": "event_match", "key": "room_id",
                                       "pattern": new}]
    # The old room's rules stay.
    r = await c.call("GET", f"/pushrules/global/room/{q(old)}", token=alice.access_token)
    assert r.status == 200


@pytest_twisted.ensureDeferred
async def test_initial_sync_carries_default_rules(hs: RunningServer) -> None:
    """Element reads m.push_rules from the first /sync: a user who never changed a rule gets
    the default ruleset there (and from GET account_data), filters still apply."""
    from tests.support.sync import sync

    c, alice = await _setup(hs)
    r = await c.call("GET", "/pushrules/", token=alice.access_token)
    defaults = r.json()

    def push_rules(body: dict[str, Any]) -> list[Any]:
        return [e["content"] for e in body["account_data"]["events"]
                if e["type"] == "m.push_rules"]

    first = await sync(c, alice)
    assert push_rules(first) == [defaults]
    r = await c.call("GET", f"/user/{q(alice.user_id)}/account_data/m.push_rules",
                     token=alice.access_token)
    assert (r.status, r.json()) == (200, defaults)
    # Incremental syncs do not repeat it; a filter excluding it is obeyed.
    later = await sync(c, alice, first["next_batch"])
    assert push_rules(later) == []
    hidden = await sync(c, alice, filter={"account_data": {"not_types": ["m.push_rules"]}})
    assert push_rules(hidden) == []
    # After a change the stored copy is sent once, not the default one as well.
    assert await _put(c, alice, "content", "cake", {"pattern": "cake", "actions": []}) == (
        200, {})
    changed = push_rules(await sync(c, alice))
    assert len(changed) == 1
    assert changed[0]["global"]["content"][0]["rule_id"] == "cake"
