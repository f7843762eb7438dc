"""Push rule evaluation without a server: the spec's default rules, one case (or more) per rule,
the conditions and globs, user rules and their order."""

from __future__ import annotations

from typing import Any

import pytest

from homeserver.services.push.default_rules import LEGACY_MENTION_RULES, default_rule_ids
from homeserver.services.push.evaluator import (
    EventContext,
    compile_condition,
    compile_ruleset,
    evaluate,
    glob_matcher,
    split_path,
)
from homeserver.services.push.rules import compose_ruleset
from homeserver.storage.push import DefaultSetting, StoredRule, UserRules

ALICE = "@alice:test.local"
BOB = "@bob:test.local"
ROOM = "!room:test.local"


def _ctx(event: dict[str, Any], members: int = 5, sender_level: float = 0,
         notifications: dict[str, int] | None = None) -> EventContext:
    full = {"room_id": ROOM, "sender": BOB, "event_id": "$e", **event}
    return EventContext(full, members, sender_level, notifications or {})


def _msg(body: str = "hello", msgtype: str = "m.text", **content: Any) -> dict[str, Any]:
    return {"type": "m.room.message", "content": {"msgtype": msgtype, "body": body, **content}}


def _rules(stored: UserRules | None = None, legacy: bool = True) -> Any:
    ruleset = compose_ruleset(ALICE, stored or UserRules([], {}), legacy=legacy)
    return compile_ruleset(ruleset, LEGACY_MENTION_RULES if legacy else frozenset())


def _match(event: dict[str, Any], *, display_name: str | None = "Wonder Girl",
           rules: Any = None, **ctx: Any) -> tuple[str | None, bool, bool, dict[str, Any]]:
    rule = evaluate(rules or _rules(), _ctx(event, **ctx), display_name)
    if rule is None:
        return None, False, False, {}
    return rule.rule_id, rule.notify, rule.highlight, dict(rule.tweaks)


# -- the default rules, one by one ----------------------------------------------------------------


def test_master_is_off_by_default_and_silences_everything_when_on() -> None:
    assert _match(_msg())[0] == ".m.rule.message"
    rules = _rules(UserRules([], {".m.rule.master": DefaultSetting(True, None)}))
    assert _match(_msg(), rules=rules)[:3] == (".m.rule.master", False, False)
    mention = _msg(**{"m.mentions": {"user_ids": [ALICE]}})
    assert _match(mention, rules=rules)[:2] == (".m.rule.master", False)


def test_suppress_notices() -> None:
    assert _match(_msg("beep", "m.notice"))[:2] == (".m.rule.suppress_notices", False)
    # Even a notice that mentions the user stays silent: the override comes first.
    notice = _msg("alice: beep", "m.notice", **{"m.mentions": {"user_ids": [ALICE]}})
    assert _match(notice)[:2] == (".m.rule.suppress_notices", False)


def test_invite_for_me() -> None:
    invite = {"type": "m.room.member", "state_key": ALICE, "content": {"membership": "invite"}}
    assert _match(invite) == (".m.rule.invite_for_me", True, False, {"sound": "default"})


def test_member_event() -> None:
    other = {"type": "m.room.member", "state_key": "@carol:test.local",
             "content": {"membership": "invite"}}
    assert _match(other)[:2] == (".m.rule.member_event", False)
    join = {"type": "m.room.member", "state_key": BOB, "content": {"membership": "join"}}
    assert _match(join)[:2] == (".m.rule.member_event", False)


def test_is_user_mention() -> None:
    ev = _msg("hey", **{"m.mentions": {"user_ids": ["@x:y", ALICE]}})
    assert _match(ev) == (".m.rule.is_user_mention", True, True, {"sound": "default",
                                                                   "highlight": True})
    other = _msg("hey", **{"m.mentions": {"user_ids": ["@x:y"]}})
    assert _match(other)[0] == ".m.rule.message"


def test_contains_display_name_legacy() -> None:
    ev = _msg("Hello Wonder Girl, how are you?")
    assert _match(ev)[:3] == (".m.rule.contains_display_name", True, True)
    # Case-insensitive, at word boundaries only.
    assert _match(_msg("wonder girl!"))[0] == ".m.rule.contains_display_name"
    assert _match(_msg("Wonder Girlish"))[0] == ".m.rule.message"
    # No display name: nothing to match.
    assert _match(ev, display_name=None)[0] == ".m.rule.message"
    # Events with m.mentions are judged by it alone (intentional mentions).
    assert _match(_msg("Hello Wonder Girl", **{"m.mentions": {}}))[0] == ".m.rule.message"
    # The display name is literal text, not a glob.
    assert _match(_msg("Wonder Gxrl"), display_name="Wonder G?rl")[0] == ".m.rule.message"
    assert _match(_msg("Wonder G?rl"), display_name="Wonder G?rl")[0] == (
        ".m.rule.contains_display_name"
    )


def test_is_room_mention_needs_the_power_level() -> None:
    ev = _msg("all", **{"m.mentions": {"room": True}})
    assert _match(ev, sender_level=50)[:3] == (".m.rule.is_room_mention", True, True)
    assert _match(ev, sender_level=49)[0] == ".m.rule.message"
    # The power levels' notifications.room sets the bar.
    assert _match(ev, sender_level=10, notifications={"room": 10})[0] == ".m.rule.is_room_mention"
    # "true" is not true.
    assert _match(_msg("x", **{"m.mentions": {"room": "true"}}), sender_level=100)[0] == (
        ".m.rule.message"
    )


def test_roomnotif_legacy() -> None:
    assert _match(_msg("@room lunch!"), sender_level=50)[:3] == (".m.rule.roomnotif", True, True)
    assert _match(_msg("@room lunch!"), sender_level=0)[0] == ".m.rule.message"
    assert _match(_msg("@room", **{"m.mentions": {}}), sender_level=100)[0] == ".m.rule.message"


def test_tombstone() -> None:
    ev = {"type": "m.room.tombstone", "state_key": "", "content": {"body": "moved"}}
    assert _match(ev)[:3] == (".m.rule.tombstone", True, True)
    # Only the state event: the same type as a message (no state_key) does not match.
    assert _match({"type": "m.room.tombstone", "content": {}})[0] is None


def test_reaction() -> None:
    ev = {"type": "m.reaction",
          "content": {"m.relates_to": {"rel_type": "m.annotation", "event_id": "$x", "key": "+"}}}
    assert _match(ev)[:2] == (".m.rule.reaction", False)


def test_server_acl() -> None:
    ev = {"type": "m.room.server_acl", "state_key": "", "content": {"allow": ["*"]}}
    assert _match(ev)[:2] == (".m.rule.room.server_acl", False)


def test_suppress_edits() -> None:
    ev = _msg("* fixed", **{"m.relates_to": {"rel_type": "m.replace", "event_id": "$x"},
                            "m.new_content": {"body": "fixed"}})
    assert _match(ev)[:2] == (".m.rule.suppress_edits", False)


def test_contains_user_name_legacy() -> None:
    assert _match(_msg("ping alice, lunch?"))[:3] == (".m.rule.contains_user_name", True, True)
    assert _match(_msg("ping alicea"))[0] == ".m.rule.message"
    assert _match(_msg("ping alice", **{"m.mentions": {}}))[0] == ".m.rule.message"


def test_call() -> None:
    ev = {"type": "m.call.invite", "content": {"call_id": "1", "version": 1}}
    assert _match(ev) == (".m.rule.call", True, False, {"sound": "ring"})


def test_encrypted_room_one_to_one() -> None:
    ev = {"type": "m.room.encrypted", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}
    assert _match(ev, members=2) == (".m.rule.encrypted_room_one_to_one", True, False,
                                     {"sound": "default"})


def test_room_one_to_one() -> None:
    assert _match(_msg(), members=2) == (".m.rule.room_one_to_one", True, False,
                                         {"sound": "default"})


def test_message() -> None:
    assert _match(_msg(), members=3) == (".m.rule.message", True, False, {})


def test_encrypted() -> None:
    ev = {"type": "m.room.encrypted", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}
    assert _match(ev, members=3) == (".m.rule.encrypted", True, False, {})


def test_other_events_match_nothing() -> None:
    assert _match({"type": "m.room.topic", "state_key": "", "content": {"topic": "x"}})[0] is None
    assert _match({"type": "com.example.custom", "content": {}})[0] is None


def test_default_rule_set_order_and_legacy_switch() -> None:
    ruleset = compose_ruleset(ALICE, UserRules([], {}), legacy=True)
    assert [r["rule_id"] for r in ruleset["override"]] == [
        ".m.rule.master", ".m.rule.suppress_notices", ".m.rule.invite_for_me",
        ".m.rule.member_event", ".m.rule.is_user_mention", ".m.rule.contains_display_name",
        ".m.rule.is_room_mention", ".m.rule.roomnotif", ".m.rule.tombstone",
        ".m.rule.reaction", ".m.rule.room.server_acl", ".m.rule.suppress_edits",
    ]
    assert [r["rule_id"] for r in ruleset["underride"]] == [
        ".m.rule.call", ".m.rule.encrypted_room_one_to_one", ".m.rule.room_one_to_one",
        ".m.rule.message", ".m.rule.encrypted",
    ]
    assert ruleset["content"][0]["pattern"] == "alice"
    assert ruleset["override"][2]["conditions"][2]["pattern"] == ALICE
    assert all(r["default"] for kind in ruleset.values() for r in kind)
    strict = compose_ruleset(ALICE, UserRules([], {}), legacy=False)
    ids = {r["rule_id"] for kind in strict.values() for r in kind}
    assert not ids & LEGACY_MENTION_RULES
    assert set(default_rule_ids(legacy=False)) == ids
    # Without the legacy rules a display name in the body is just a message.
    rules = _rules(legacy=False)
    assert _match(_msg("Wonder Girl, hi"), rules=rules)[0] == ".m.rule.message"


# -- conditions --------------------------------------------------------------------------------


def test_event_match_glob_examples_from_the_spec() -> None:
    cond = compile_condition({"kind": "event_match", "key": "content.topic",
                              "pattern": "lunc?*"})
    for topic, expected in [("Lunch plans", True), ("LUNCH", True), (" lunch", False),
                            ("lunc", False), (None, False)]:
        ctx = _ctx({"type": "m.room.topic", "state_key": "", "content": {"topic": topic}})
        assert cond.test(ctx, None) is expected, topic
    # Absent or not a string: no match, even for "*".
    star = compile_condition({"kind": "event_match", "key": "content.topic", "pattern": "*"})
    assert not star.test(_ctx({"content": {}}), None)
    assert not star.test(_ctx({"content": {"topic": 5}}), None)


def test_event_match_body_word_boundaries() -> None:
    cond = compile_condition({"kind": "event_match", "key": "content.body",
                              "pattern": "ex*ple"})
    for body, expected in [("An example event.", True), ("exple", True),
                           ("An exciting triple-whammy", True), ("An examples", False),
                           ("sexample", False)]:
        assert cond.test(_ctx(_msg(body)), None) is expected, body
    # Word characters are [A-Za-z0-9_] only: "é" is a boundary.
    cake = glob_matcher("cake", True)
    assert cake.matches("cakeé") and not cake.matches("cake_") and cake.matches("(CAKE)")


def test_glob_matching_cannot_blow_up() -> None:
    # Leftmost placement of fixed-length pieces: no backtracking over the stars.
    body = "a" * 60_000
    assert not glob_matcher("*a*a*a*a*a*a*a*a*a*a*a*a*b", True).matches(body)
    assert not glob_matcher("*a*a*a*a*a*a*a*a*a*a*a*a*b", False).matches(body)
    assert glob_matcher("a*a*a", False).matches("aaa")
    assert not glob_matcher("a*a*a", False).matches("aa")
    assert glob_matcher("?", False).matches("\n")


def test_dotted_paths_with_escapes() -> None:
    assert split_path("content.m\\.relates_to.rel_type") == ("content", "m.relates_to",
                                                            "rel_type")
    assert split_path("content.m\\\\foo") == ("content", "m\\foo")
    assert split_path("content.a\\xb") == ("content", "a\\xb")
    create = {"type": "m.room.create", "state_key": "", "content": {"m.federate": True}}
    cond = compile_condition({"kind": "event_property_is", "key": "content.m\\.federate",
                              "value": True})
    assert cond.test(_ctx(create), None)
    backslash = compile_condition({"kind": "event_match", "key": "content.m\\\\foo",
                                   "pattern": "x"})
    assert backslash.test(_ctx({"content": {"m\\foo": "X"}}), None)


def test_event_property_is_is_exact() -> None:
    def test(value: Any, found: Any) -> bool:
        cond = compile_condition({"kind": "event_property_is", "key": "content.v",
                                  "value": value})
        return cond.test(_ctx({"content": {"v": found}}), None)

    assert test(True, True) and not test(True, "true") and not test(True, 1)
    assert test(1, 1) and not test(1, True) and not test(1, "1")
    assert test(None, None) and not test(None, False)
    assert test("A", "A") and not test("A", "a")
    assert not test(None, {"nested": 1}) and not test(1, [1])
    # Absent is not null.
    cond = compile_condition({"kind": "event_property_is", "key": "content.x", "value": None})
    assert not cond.test(_ctx({"content": {}}), None)


def test_event_property_contains() -> None:
    cond = compile_condition({"kind": "event_property_contains", "key": "content.alt_aliases",
                              "value": "#myroom:example.com"})
    ev = {"content": {"alt_aliases": ["#somewhere:example.org", "#myroom:example.com"]}}
    assert cond.test(_ctx(ev), None)
    assert not cond.test(_ctx({"content": {"alt_aliases": [":example.com"]}}), None)
    assert not cond.test(_ctx({"content": {"alt_aliases": "#myroom:example.com"}}), None)
    one = compile_condition({"kind": "event_property_contains", "key": "content.n",
                             "value": 1})
    assert not one.test(_ctx({"content": {"n": [True, "1", [1]]}}), None)
    assert one.test(_ctx({"content": {"n": [True, 1]}}), None)


@pytest.mark.parametrize(("spec", "count", "expected"), [
    ("2", 2, True), ("2", 3, False), ("==2", 2, True), ("<2", 1, True), ("<2", 2, False),
    (">2", 3, True), (">2", 2, False), ("<=2", 2, True), ("<=2", 3, False), (">=2", 2, True),
    (">=2", 1, False), ("=2", 2, False), ("two", 2, False), ("", 0, False),
])
def test_room_member_count(spec: str, count: int, expected: bool) -> None:
    cond = compile_condition({"kind": "room_member_count", "is": spec})
    assert cond.test(_ctx(_msg(), members=count), None) is expected


def test_sender_notification_permission() -> None:
    cond = compile_condition({"kind": "sender_notification_permission", "key": "room"})
    assert cond.test(_ctx(_msg(), sender_level=50), None)
    assert not cond.test(_ctx(_msg(), sender_level=49), None)
    assert cond.test(_ctx(_msg(), sender_level=float("inf"), notifications={"room": 100}), None)
    custom = compile_condition({"kind": "sender_notification_permission", "key": "custom"})
    assert custom.test(_ctx(_msg(), sender_level=5, notifications={"custom": 5}), None)


def test_unknown_or_malformed_conditions_never_match() -> None:
    for raw in [{"kind": "future_condition"}, {"kind": "event_match", "key": "type"},
                {"kind": "room_member_count"}, "not an object",
                {"kind": "event_property_is", "key": "content.x", "value": {"a": 1}}]:
        assert not compile_condition(raw).test(_ctx(_msg()), None)
    # A rule with one makes the whole rule disabled in effect.
    stored = UserRules([StoredRule("override", "weird", 1, [{"kind": "unheard_of"}], None,
                                   ["notify", {"set_tweak": "highlight"}], True)], {})
    assert _match(_msg(), rules=_rules(stored))[0] == ".m.rule.message"


# -- user rules ------------------------------------------------------------------------------------


def _user_rules(*rules: StoredRule, defaults: dict[str, DefaultSetting] | None = None) -> Any:
    return _rules(UserRules(list(rules), defaults or {}))


def test_user_rules_by_kind_and_priority() -> None:
    cake = StoredRule("content", "cake", 2, None, "cake*", ["notify", {"set_tweak": "sound",
                                                                        "value": "cake.wav"}],
                      True)
    lie = StoredRule("content", "lie", 3, None, "cake*lie", [], True)
    muted = StoredRule("room", ROOM, 1, None, None, [], True)
    spammer = StoredRule("sender", BOB, 1, None, None, ["dont_notify"], True)
    beer = StoredRule("override", "beer", 1, [
        {"kind": "event_match", "key": "content.body", "pattern": "beer"},
        {"kind": "room_member_count", "is": "<=10"}], None,
        ["notify", {"set_tweak": "sound", "value": "beeroclock.wav"}], True)
    rules = _user_rules(cake, lie, beer)
    # The more important content rule (higher priority) wins.
    assert _match(_msg("cakes are a lie"), rules=rules)[:2] == ("lie", False)
    assert _match(_msg("cakes!"), rules=rules)[3] == {"sound": "cake.wav"}
    # Override rules come before content rules, but after the master rule.
    assert _match(_msg("cake and beer"), rules=rules, members=5)[0] == "beer"
    assert _match(_msg("cake and beer"), rules=rules, members=11)[0] == "cake"
    # Room and sender rules (looked up by ID); "dont_notify" is only historical.
    rules = _user_rules(muted, spammer)
    assert _match(_msg(), rules=rules)[:2] == (ROOM, False)
    rules = _user_rules(spammer)
    assert _match(_msg(), rules=rules)[:2] == (BOB, False)
    assert _match({**_msg(), "sender": "@carol:x"}, rules=rules)[0] == ".m.rule.message"
    # Room rules come before sender rules; both after content rules.
    assert _match(_msg("cake"), rules=_user_rules(muted, cake))[0] == "cake"
    assert _match(_msg(), rules=_user_rules(muted, spammer))[0] == ROOM


def test_disabled_rules_and_changed_default_actions() -> None:
    muted = StoredRule("room", ROOM, 1, None, None, [], False)
    assert _match(_msg(), rules=_user_rules(muted))[0] == ".m.rule.message"
    loud = {".m.rule.message": DefaultSetting(None, ["notify", {"set_tweak": "highlight"}])}
    assert _match(_msg(), rules=_user_rules(defaults=loud))[:3] == (".m.rule.message", True,
                                                                    True)
    off = {".m.rule.message": DefaultSetting(False, None)}
    assert _match(_msg(), rules=_user_rules(defaults=off))[0] is None


def test_conditions_run_once_per_event_for_any_number_of_members() -> None:
    rules = _rules()
    ctx = _ctx(_msg("hello everyone"), members=10_000)
    for i in range(2_000):
        rule = evaluate(rules, ctx, f"User {i}")
        assert rule is not None and rule.rule_id == ".m.rule.message"
    # One memo entry per distinct condition, plus one per display name tested.
    shared = [k for k in ctx.memo if k[0] != "contains_display_name"]
    assert len(shared) < 30


def test_the_per_user_compiler_agrees_with_the_served_ruleset() -> None:
    """The evaluator's compiled rules (shared defaults, personal rules redone per user) act
    exactly like the ruleset GET /pushrules serves, for any user settings."""
    from homeserver.services.push.rules import RuleCompiler

    stored_cases = [
        UserRules([], {}),
        UserRules([StoredRule("room", ROOM, 1, None, None, [], True),
                   StoredRule("content", "tea", 1, None, "tea", ["notify"], True)],
                  {".m.rule.contains_user_name": DefaultSetting(False, None),
                   ".m.rule.invite_for_me": DefaultSetting(None, ["notify"]),
                   ".m.rule.message": DefaultSetting(None, [])}),
        UserRules([], {".m.rule.is_user_mention": DefaultSetting(None, ["notify"]),
                       ".m.rule.master": DefaultSetting(True, None)}),
    ]
    events = [
        _msg("alice: tea?"), _msg("hi", **{"m.mentions": {"user_ids": [ALICE]}}),
        {"type": "m.room.member", "state_key": ALICE, "content": {"membership": "invite"}},
        {**_msg("elsewhere"), "room_id": "!other:x"}, _msg("Wonder Girl"), _msg("plain"),
    ]
    for legacy in (True, False):
        compiler = RuleCompiler(legacy)
        ids = LEGACY_MENTION_RULES if legacy else frozenset()
        for stored in stored_cases:
            served = compile_ruleset(compose_ruleset(ALICE, stored, legacy=legacy), ids)
            fast = compiler.compile(ALICE, stored)
            for ev in events:
                a = evaluate(served, _ctx(ev), "Wonder Girl")
                b = evaluate(fast, _ctx(ev), "Wonder Girl")
                assert (a and (a.rule_id, a.actions)) == (b and (b.rule_id, b.actions)), ev
