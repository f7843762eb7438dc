"""The room service on both engines: creation, sending, membership, redaction, reads,
pagination, visibility and the profile/deactivation hooks."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted

from federation.events import Event
from homeserver.config import DatabaseConfig
from homeserver.http.errors import MatrixError
from homeserver.services.registry import Services
from homeserver.storage.events import StoredEvent
from tests.support.rooms import count, services, user

ALICE, BOB, CAROL, DAVE = user("alice"), user("bob"), user("carol"), user("dave")
MEMBER = "m.room.member"


async def _raises(coro: Any, status: int, errcode: str, reason: str | None = None) -> MatrixError:
    with pytest.raises(MatrixError) as e:
        await coro
    assert (e.value.status, e.value.errcode) == (status, errcode), e.value.message
    if reason is not None:
        assert reason in e.value.message, e.value.message
    return e.value


async def _state(s: Services, room_id: str) -> dict[tuple[str, str], Event]:
    ids = await s.pipeline.current_state_ids(room_id)
    found = await s.events.get_events(ids.values())
    return {k: found[v].event for k, v in ids.items()}


async def _message(s: Services, room_id: str, sender: str, body: str) -> str:
    return await s.rooms.send_event(room_id, sender, "m.room.message",
                                    {"msgtype": "m.text", "body": body})


def _bodies(events: list[dict[str, Any]]) -> list[str]:
    return [e["content"]["body"] for e in events if e["type"] == "m.room.message"]


# -- creating rooms ----------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1", "6", "10", "11", "12"])
@pytest_twisted.ensureDeferred
async def test_create_room_in_each_version_with_each_preset(
    db_config: DatabaseConfig, tmp_path, version: str
) -> None:
    async with services(db_config, str(tmp_path)) as s:
        await s.profiles.set_field(ALICE, "displayname", "Alice")
        for preset in ("private_chat", "trusted_private_chat", "public_chat"):
            created = await s.rooms.create_room(
                ALICE, preset=preset, room_version=version, name="Room", topic="Topic",
                invite=[BOB], room_alias_name=f"r{version}{preset}", is_direct=True,
            )
            room_id = created.room_id
            state = await _state(s, room_id)
            create = state[("m.room.create", "")]
            assert create.content["room_version"] == version
            assert create.sender == ALICE
            if version == "12":
                assert room_id == "!" + create.event_id[1:]
            else:
                assert room_id.endswith(":test.local")
                assert create.content.get("creator") == (ALICE if int(version) < 11 else None)
            join_rule = state[("m.room.join_rules", "")].content["join_rule"]
            assert join_rule == ("public" if preset == "public_chat" else "invite")
            assert state[("m.room.history_visibility", "")].content["history_visibility"] == (
                "shared"
            )
            assert (("m.room.guest_access", "") in state) == (preset != "public_chat")
            assert state[("m.room.name", "")].content["name"] == "Room"
            assert state[("m.room.topic", "")].content["topic"] == "Topic"
            assert state[("m.room.canonical_alias", "")].content["alias"] == created.room_alias
            assert state[(MEMBER, ALICE)].content == {"membership": "join",
                                                      "displayname": "Alice"}
            invite = state[(MEMBER, BOB)]
            assert invite.content["membership"] == "invite" and invite.content["is_direct"]
            users = state[("m.room.power_levels", "")].content["users"]
            if version == "12":
                # Creators have unlimited power: never listed; trusted invitees co-create.
                assert ALICE not in users
                co = create.content.get("additional_creators", [])
                assert co == ([BOB] if preset == "trusted_private_chat" else [])
                assert BOB not in users
            else:
                assert users[ALICE] == 100
                assert users.get(BOB) == (100 if preset == "trusted_private_chat" else None)
            # Everything went into one transaction and the room works: Bob joins, talks.
            await s.rooms.join(room_id, BOB)
            await _message(s, room_id, BOB, "hello")
            alias = await s.events.get_alias(created.room_alias or "")
            assert alias is not None and alias.room_id == room_id
        assert await s.events.public_rooms() == sorted(
            [r for r in await s.rooms.joined_rooms(ALICE)
             if (await s.events.get_room(r)).is_public]  # type: ignore[union-attr]
        )


@pytest_twisted.ensureDeferred
async def test_create_room_options(db_config: DatabaseConfig, tmp_path) -> None:
    async with services(db_config, str(tmp_path)) as s:
        created = await s.rooms.create_room(
            ALICE, visibility="public",
            initial_state=[
                {"type": "m.room.history_visibility",
                 "content": {"history_visibility": "world_readable"}},
                {"type": "m.room.encryption", "state_key": "",
                 "content": {"algorithm": "m.megolm.v1.aes-sha2"}},
            ],
            power_level_content_override={"events_default": 50},
            creation_content={"m.federate": False, "type": "m.space"},
        )
        state = await _state(s, created.room_id)
        assert state[("m.room.join_rules", "")].content["join_rule"] == "public"
        assert state[("m.room.history_visibility", "")].content["history_visibility"] == (
            "world_readable"
        )
        assert ("m.room.encryption", "") in state
        assert state[("m.room.create", "")].content["type"] == "m.space"
        assert state[("m.room.create", "")].content["m.federate"] is False
        room = await s.events.get_room(created.room_id)
        assert room is not None and room.is_public
        # events_default 50: a new member may not talk.
        await s.rooms.join(created.room_id, BOB)
        await _raises(_message(s, created.room_id, BOB, "hi"), 403, "M_FORBIDDEN", "power level")
        await _message(s, created.room_id, ALICE, "but alice may")


@pytest_twisted.ensureDeferred
async def test_create_room_errors_leave_nothing_behind(db_config: DatabaseConfig, tmp_path) -> None:
    async with services(db_config, str(tmp_path)) as s:
        await s.rooms.create_room(ALICE, room_alias_name="taken")
        rooms, events = await count(s, "rooms"), await count(s, "events")
        await _raises(s.rooms.create_room(ALICE, room_version="99"), 400,
                      "M_UNSUPPORTED_ROOM_VERSION")
        await _raises(s.rooms.create_room(ALICE, preset="party"), 400, "M_INVALID_PARAM")
        await _raises(s.rooms.create_room(ALICE, invite=["bob"]), 400, "M_INVALID_PARAM")
        await _raises(s.rooms.create_room(ALICE, room_alias_name="taken"), 400, "M_ROOM_IN_USE")
        await _raises(s.rooms.create_room(ALICE, room_alias_name="a:b"), 400, "M_INVALID_PARAM")
        await _raises(
            s.rooms.create_room(ALICE, room_version="12",
                                power_level_content_override={"users": {ALICE: 100}}),
            400, "M_BAD_JSON", "creators",
        )
        await _raises(
            s.rooms.create_room(ALICE, initial_state=[{"type": "m.room.create", "content": {}}]),
            400, "M_INVALID_PARAM",
        )
        # An override that locks the creator out of the preset's state: refused as a whole.
        await _raises(
            s.rooms.create_room(ALICE, room_version="10",
                                power_level_content_override={"state_default": 200}),
            403, "M_FORBIDDEN",
        )
        assert (await count(s, "rooms"), await count(s, "events")) == (rooms, events)


# -- sending ----------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_state_needs_power(db_config: DatabaseConfig, tmp_path) -> None:
    async with services(db_config, str(tmp_path)) as s:
        room_id = (await s.rooms.create_room(ALICE, preset="public_chat")).room_id
        await s.rooms.join(room_id, BOB)
        await _raises(s.rooms.send_event(room_id, BOB, "m.room.name", {"name": "bob's"}, ""),
                      403, "M_FORBIDDEN", "power level")
        await _raises(s.rooms.send_event(room_id, BOB, "org.example", {}, BOB),
                      403, "M_FORBIDDEN", "below 50")
        pl = await s.rooms.get_state_event(room_id, ALICE, "m.room.power_levels")
        content = dict(pl.event.content)
        content["events"] = {**content["events"], "org.example": 0}
        await s.rooms.send_event(room_id, ALICE, "m.room.power_levels", content, "")
        # Keys that are user IDs belong to that user.
        await _raises(s.rooms.send_event(room_id, BOB, "org.example", {}, CAROL),
                      403, "M_FORBIDDEN", "another user")
        await s.rooms.send_event(room_id, BOB, "org.example", {"mine": True}, BOB)
        named = await s.rooms.send_event(room_id, ALICE, "m.room.name", {"name": "alice's"}, "")
        ev = await s.rooms.get_state_event(room_id, BOB, "m.room.name", "")
        assert ev.event.content == {"name": "alice's"}
        # Setting the same state again is a no-op returning the current event.
        events = await count(s, "events")
        assert await s.rooms.send_event(room_id, ALICE, "m.room.name",
                                        {"name": "alice's"}, "") == named
        assert await count(s, "events") == events
        await _raises(s.rooms.get_state_event(room_id, BOB, "m.room.avatar", ""), 404,
                      "M_NOT_FOUND")
        # Membership through the state endpoint goes through the membership rules.
        await _raises(s.rooms.send_event(room_id, BOB, MEMBER, {"membership": "join"}, CAROL),
                      403, "M_FORBIDDEN")
        await s.rooms.send_event(room_id, BOB, MEMBER,
                                 {"membership": "join", "displayname": "B"}, BOB)
        assert (await s.rooms.joined_members(room_id, ALICE))[BOB]["display_name"] == "B"


@pytest_twisted.ensureDeferred
async def test_canonical_alias_must_point_here(db_config: DatabaseConfig, tmp_path) -> None:
    async with services(db_config, str(tmp_path)) as s:
        room_id = (await s.rooms.create_room(ALICE, room_alias_name="here")).room_id
        other = (await s.rooms.create_room(ALICE, room_alias_name="there")).room_id
        assert other != room_id
        await _raises(s.rooms.send_event(room_id, ALICE, "m.room.canonical_alias",
                                         {"alias": "#there:test.local"}, ""), 400, "M_BAD_ALIAS")
        await _raises(s.rooms.send_event(room_id, ALICE, "m.room.canonical_alias",
                                         {"alias": "#nowhere:test.local"}, ""), 400,
                      "M_BAD_ALIAS")
        await _raises(s.rooms.send_event(room_id, ALICE, "m.room.canonical_alias",
                                         {"alias": "not an alias"}, ""), 400, "M_INVALID_PARAM")
        await s.rooms.send_event(room_id, ALICE, "m.room.canonical_alias",
                                 {"alias": "#here:test.local",
                                  "alt_aliases": ["#elsewhere:remote.example"]}, "")


# -- membership -------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_membership_transitions(db_config: DatabaseConfig, tmp_path) -> None:
    async with services(db_config, str(tmp_path)) as s:
        public = (await s.rooms.create_room(ALICE, preset="public_chat")).room_id
        private = (await s.rooms.create_room(ALICE)).room_id

        joined = await s.rooms.join(public, BOB)
        assert await s.rooms.join(public, BOB) == joined  # unchanged: no new event
        await _raises(s.rooms.join(private, CAROL), 403, "M_FORBIDDEN", "not invited")
        await _raises(s.rooms.invite(private, BOB, CAROL), 403, "M_FORBIDDEN", "not joined")
        invite = await s.rooms.invite(private, ALICE, CAROL)
        assert await s.rooms.invite(private, ALICE, CAROL) == invite
        await s.rooms.join(private, CAROL)
        await _raises(s.rooms.invite(private, ALICE, CAROL), 403, "M_FORBIDDEN", "already join")

        await _raises(s.rooms.kick(public, BOB, ALICE), 403, "M_FORBIDDEN")
        await _raises(s.rooms.kick(public, ALICE, CAROL), 403, "M_FORBIDDEN", "not in the room")
        await s.rooms.kick(public, ALICE, BOB, reason="spam")
        kicked = await s.pipeline.current_state_event(public, (MEMBER, BOB))
        assert kicked is not None
        assert kicked.event.content == {"membership": "leave", "reason": "spam"}
        assert kicked.event.sender == ALICE
        await s.rooms.join(public, BOB)  # a kick is not a ban

        await s.rooms.ban(public, ALICE, BOB)
        await _raises(s.rooms.join(public, BOB), 403, "M_FORBIDDEN", "banned")
        await _raises(s.rooms.leave(public, BOB), 403, "M_FORBIDDEN")
        await _raises(s.rooms.unban(public, ALICE, CAROL), 403, "M_FORBIDDEN", "not banned")
        await _raises(s.rooms.invite(public, ALICE, BOB), 403, "M_FORBIDDEN", "ban")
        await s.rooms.unban(public, ALICE, BOB)
        await s.rooms.join(public, BOB)

        left = await s.rooms.leave(public, BOB)
        assert await s.rooms.leave(public, BOB) == left
        await _raises(s.rooms.leave(public, DAVE), 403, "M_FORBIDDEN", "not in this room")
        await _raises(s.rooms.forget(public, ALICE), 400, "M_UNKNOWN")
        await s.rooms.forget(public, BOB)
        assert public not in await s.rooms.rooms_for_user(BOB)
        assert private in await s.rooms.rooms_for_user(CAROL)
        await _raises(s.rooms.join("!unknown:test.local", BOB), 404, "M_NOT_FOUND")


@pytest_twisted.ensureDeferred
async def test_knocking(db_config: DatabaseConfig, tmp_path) -> None:
    async with services(db_config, str(tmp_path)) as s:
        knockable = (await s.rooms.create_room(ALICE, room_version="10")).room_id
        await s.rooms.send_event(knockable, ALICE, "m.room.join_rules", {"join_rule": "knock"}, "")
        await s.rooms.knock(knockable, BOB, reason="let me in")
        assert (await s.rooms.rooms_for_user(BOB))[knockable] == "knock"
        await _raises(s.rooms.join(knockable, BOB), 403, "M_FORBIDDEN")
        await s.rooms.invite(knockable, ALICE, BOB)
        await s.rooms.join(knockable, BOB)
        invite_only = (await s.rooms.create_room(ALICE, room_version="10")).room_id
        await _raises(s.rooms.knock(invite_only, CAROL), 403, "M_FORBIDDEN", "knock")
        old = (await s.rooms.create_room(ALICE, room_version="6")).room_id
        await _raises(s.rooms.knock(old, CAROL), 403, "M_FORBIDDEN")
        # Rescinding a knock is a leave.
        await s.rooms.knock(knockable, CAROL)
        await s.rooms.leave(knockable, CAROL)
        assert (await s.rooms.rooms_for_user(CAROL))[knockable] == "leave"


@pytest.mark.parametrize("version", ["8", "10", "12"])
@pytest_twisted.ensureDeferred
async def test_restricted_join(db_config: DatabaseConfig, tmp_path, version: str) -> None:
    async with services(db_config, str(tmp_path)) as s:
        space = (await s.rooms.create_room(ALICE, preset="public_chat")).room_id
        room = (await s.rooms.create_room(ALICE, room_version=version)).room_id
        await s.rooms.send_event(room, ALICE, "m.room.join_rules", {
            "join_rule": "restricted",
            "allow": [{"type": "m.room_membership", "room_id": space}],
        }, "")
        await _raises(s.rooms.join(room, BOB), 403, "M_FORBIDDEN", "allows joining")
        await s.rooms.join(space, BOB)
        await s.rooms.join(room, BOB)
        member = await s.pipeline.current_state_event(room, (MEMBER, BOB))
        assert member is not None
        assert member.event.content["join_authorised_via_users_server"] == ALICE


# -- redaction ---------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1", "10", "11"])
@pytest_twisted.ensureDeferred
async def test_redaction_is_what_every_reader_sees(
    db_config: DatabaseConfig, tmp_path, version: str
) -> None:
    async with services(db_config, str(tmp_path)) as s:
        room_id = (await s.rooms.create_room(ALICE, preset="public_chat", room_version=version,
                                             topic="secret topic")).room_id
        await s.rooms.join(room_id, BOB)
        secret = await _message(s, room_id, BOB, "my password is hunter2")
        await _message(s, room_id, BOB, "after")
        await _raises(s.rooms.redact(room_id, CAROL, secret), 403, "M_FORBIDDEN")
        alices = await _message(s, room_id, ALICE, "alice's")
        await _raises(s.rooms.redact(room_id, BOB, alices), 403, "M_FORBIDDEN", "permission")
        await _raises(s.rooms.redact(room_id, ALICE, "$nope"), 404, "M_NOT_FOUND")

        redaction = await s.rooms.redact(room_id, ALICE, secret, reason="leak",
                                         txn_id="r1", device_id="D")
        assert await s.rooms.redact(room_id, ALICE, secret, txn_id="r1", device_id="D") == (
            redaction
        )
        # Every read path: single event, history, context; and a new process (no caches).
        served = await s.rooms.get_event(room_id, BOB, secret)
        assert served["content"] == {}
        because = served["unsigned"]["redacted_because"]
        assert because["event_id"] == redaction
        assert because["content"]["reason"] == "leak"
        assert because["redacts"] == secret
        page = await s.rooms.paginate(room_id, BOB, limit=20)
        hit = [e for e in page.chunk if e["event_id"] == secret]
        assert hit and hit[0]["content"] == {}
        assert "hunter2" not in repr(page.chunk)
        ctx = await s.rooms.context(room_id, BOB, secret)
        assert ctx.event["content"] == {}
        # The redacter's own event names its target (top level and, from v11, content).
        red = await s.rooms.get_event(room_id, ALICE, redaction)
        assert red["redacts"] == secret
        if version == "11":
            assert red["content"]["redacts"] == secret
        # Operators can still read the original.
        original = await s.events.original_json(secret)
        assert original is not None and original["content"]["body"] == "my password is hunter2"
        # One's own events may be redacted without power.
        own = await _message(s, room_id, BOB, "oops")
        await s.rooms.redact(room_id, BOB, own)
        assert (await s.rooms.get_event(room_id, ALICE, own))["content"] == {}
        # Redacting a state event changes what the room state says.
        topic = await s.pipeline.current_state_event(room_id, ("m.room.topic", ""))
        assert topic is not None
        await s.rooms.redact(room_id, ALICE, topic.event_id)
        ev = await s.rooms.get_state_event(room_id, BOB, "m.room.topic")
        assert ev.event.content == {}
        state = await s.rooms.get_state(room_id, BOB)
        assert "secret topic" not in repr(state)
    async with services(db_config, str(tmp_path)) as s2:
        fresh = await s2.rooms.get_event(room_id, BOB, secret)
        assert fresh["content"] == {} and "redacted_because" in fresh["unsigned"]


# -- reading: pagination, context, members, visibility ------------------------------------------


@pytest_twisted.ensureDeferred
async def test_pagination_both_ways(db_config: DatabaseConfig, tmp_path) -> None:
    async with services(db_config, str(tmp_path)) as s:
        room_id = (await s.rooms.create_room(ALICE)).room_id
        sent = [await _message(s, room_id, ALICE, f"m{i}") for i in range(25)]

        # Backwards from the end, 10 at a time, until there is no end token.
        seen: list[str] = []
        token: str | None = None
        pages = 0
        while True:
            page = await s.rooms.paginate(room_id, ALICE, from_token=token, limit=10)
            pages += 1
            assert len(page.chunk) <= 10
            seen.extend(e["event_id"] for e in page.chunk)
            if page.end is None:
                break
            token = page.end
        assert pages <= 5
        assert seen[:25] == list(reversed(sent))
        # Every event of the room exactly once.
        total = await count(s, "events", "room_id = ?", (room_id,))
        assert len(seen) == len(set(seen)) == total
        first_page = await s.rooms.paginate(room_id, ALICE, limit=10)
        assert first_page.start.startswith("s")

        # Forwards from the start, the mirror image.
        forward: list[str] = []
        token = None
        while True:
            page = await s.rooms.paginate(room_id, ALICE, from_token=token, direction="f",
                                          limit=7)
            forward.extend(e["event_id"] for e in page.chunk)
            if page.end is None:
                break
            token = page.end
        assert forward == list(reversed(seen))

        # A page's end token continues exactly where it stopped, in either direction.
        back = await s.rooms.paginate(room_id, ALICE, limit=5)
        assert back.end is not None and back.end.startswith("t")
        ahead = await s.rooms.paginate(room_id, ALICE, from_token=back.end, direction="f",
                                       limit=5)
        # Going forwards from there gives the same events again, oldest first.
        assert [e["event_id"] for e in ahead.chunk] == [
            e["event_id"] for e in reversed(back.chunk)
        ]
        older = await s.rooms.paginate(room_id, ALICE, from_token=back.end, limit=3)
        assert [e["event_id"] for e in older.chunk] == list(reversed(sent))[5:8]
        # `to` stops the page.
        bounded = await s.rooms.paginate(room_id, ALICE, from_token=back.end,
                                         to_token=older.end, limit=50)
        assert [e["event_id"] for e in bounded.chunk] == list(reversed(sent))[5:8]
        assert bounded.end is None
        # A sync-style token works too.
        stored = await s.events.get_event(sent[10])
        assert stored is not None
        from_stream = await s.rooms.paginate(room_id, ALICE,
                                             from_token=f"s{stored.stream_ordering}", limit=2)
        assert [e["event_id"] for e in from_stream.chunk] == [sent[10], sent[9]]
        assert (await s.rooms.paginate(room_id, ALICE, limit=0)).chunk == []
        await _raises(s.rooms.paginate(room_id, ALICE, from_token="x12"), 400, "M_INVALID_PARAM")
        await _raises(s.rooms.paginate(room_id, ALICE, direction="up"), 400, "M_INVALID_PARAM")
        await _raises(s.rooms.paginate(room_id, BOB), 403, "M_FORBIDDEN")
        await _raises(s.rooms.paginate("!no:test.local", ALICE), 404, "M_NOT_FOUND")
        # Filters and lazy-loaded members.
        only = await s.rooms.paginate(room_id, ALICE, limit=40,
                                      event_filter=lambda e: e.type == MEMBER,
                                      lazy_load_members=True)
        assert [e["type"] for e in only.chunk] == [MEMBER]
        assert [e["state_key"] for e in only.state] == [ALICE]


@pytest_twisted.ensureDeferred
async def test_page_cost_does_not_depend_on_room_length(
    db_config: DatabaseConfig, tmp_path
) -> None:
    """Each kind of page is an index range scan that stops at the limit: no sort of the
    room's events, whatever its length."""
    from homeserver.storage import Txn
    from homeserver.storage.events import Position, paginate_txn

    async with services(db_config, str(tmp_path)) as s:
        room_id = (await s.rooms.create_room(ALICE)).room_id
        for i in range(300):
            await _message(s, room_id, ALICE, f"m{i}")

        class Recorder:
            def __init__(self, txn: Txn) -> None:
                self.engine = txn.engine
                self.txn = txn
                self.plans: list[str] = []

            def execute(self, sql: str, params: Any = ()) -> Txn:
                if not sql.startswith("SELECT"):
                    return self.txn.execute(sql, params)
                prefix = "EXPLAIN QUERY PLAN " if self.engine == "sqlite" else "EXPLAIN "
                rows = self.txn.execute(prefix + sql, params).fetchall()
                self.plans.append(" ".join(str(r) for r in rows))
                return self.txn.execute(sql, params)

        def plans(txn: Txn) -> list[str]:
            # (No ANALYZE: the plan must be right before PostgreSQL has statistics too.)
            rec = Recorder(txn)
            for start, backwards in ((Position(150, 10_000), True), (Position(None, 10_000), True),
                                     (Position(150, 10_000), False), (None, True)):
                paginate_txn(rec, room_id, start, None, backwards, 10)  # type: ignore[arg-type]
            return rec.plans

        for text in await s.db.run("plans", plans):
            assert "events_topological" in text, text
            assert "TEMP B-TREE" not in text and "Sort" not in text, text


@pytest_twisted.ensureDeferred
async def test_history_visibility(db_config: DatabaseConfig, tmp_path) -> None:
    async with services(db_config, str(tmp_path)) as s:

        async def room(visibility: str) -> str:
            return (await s.rooms.create_room(ALICE, preset="public_chat", initial_state=[
                {"type": "m.room.history_visibility",
                 "content": {"history_visibility": visibility}}])).room_id

        async def bodies(room_id: str, who: str) -> list[str]:
            return _bodies((await s.rooms.paginate(room_id, who, limit=50)).chunk)

        # joined: only what was sent while joined.
        joined = await room("joined")
        await _message(s, joined, ALICE, "before")
        await s.rooms.join(joined, BOB)
        await _message(s, joined, ALICE, "during")
        await s.rooms.leave(joined, BOB)
        await _message(s, joined, ALICE, "after")
        assert await bodies(joined, BOB) == ["during"]
        assert await bodies(joined, ALICE) == ["after", "during", "before"]

        # invited: from the invite on.
        invited = await room("invited")
        await _message(s, invited, ALICE, "before")
        await s.rooms.invite(invited, ALICE, BOB)
        await _message(s, invited, ALICE, "invited")
        await s.rooms.join(invited, BOB)
        await _message(s, invited, ALICE, "joined")
        assert await bodies(invited, BOB) == ["joined", "invited"]

        # shared: everything while a member, only the joined part once gone.
        shared = await room("shared")
        await _message(s, shared, ALICE, "before")
        await s.rooms.join(shared, BOB)
        await _message(s, shared, ALICE, "during")
        assert await bodies(shared, BOB) == ["during", "before"]
        await s.rooms.leave(shared, BOB)
        await _message(s, shared, ALICE, "after")
        assert await bodies(shared, BOB) == ["during"]

        # world_readable: anyone, never joined, may read events, state and history.
        public = await room("world_readable")
        secret_before = await _message(s, public, ALICE, "open")
        assert await bodies(public, CAROL) == ["open"]
        assert (await s.rooms.get_event(public, CAROL, secret_before))["content"]["body"] == "open"
        assert any(e["type"] == "m.room.create" for e in await s.rooms.get_state(public, CAROL))

        # An event one may not see is 404, as if it did not exist.
        hidden = await _message(s, joined, ALICE, "hidden")
        await _raises(s.rooms.get_event(joined, BOB, hidden), 404, "M_NOT_FOUND")
        await _raises(s.rooms.get_event(joined, CAROL, hidden), 404, "M_NOT_FOUND")
        await _raises(s.rooms.context(joined, BOB, hidden), 404, "M_NOT_FOUND")


@pytest_twisted.ensureDeferred
async def test_state_access_after_leaving(db_config: DatabaseConfig, tmp_path) -> None:
    async with services(db_config, str(tmp_path)) as s:
        room_id = (await s.rooms.create_room(ALICE, preset="public_chat", topic="old")).room_id
        await s.rooms.join(room_id, BOB)
        await s.rooms.leave(room_id, BOB)
        await s.rooms.send_event(room_id, ALICE, "m.room.topic", {"topic": "new"}, "")
        await s.rooms.join(room_id, CAROL)
        # Bob sees the state as it was when he left.
        ev = await s.rooms.get_state_event(room_id, BOB, "m.room.topic")
        assert ev.event.content["topic"] == "old"
        members = {e["state_key"] for e in await s.rooms.members(room_id, BOB)}
        assert members == {ALICE, BOB}
        assert (await s.rooms.get_state_event(room_id, ALICE, "m.room.topic")).event.content[
            "topic"] == "new"
        await _raises(s.rooms.get_state(room_id, DAVE), 403, "M_FORBIDDEN")
        await _raises(s.rooms.members(room_id, DAVE), 403, "M_FORBIDDEN")
        await _raises(s.rooms.joined_members(room_id, BOB), 403, "M_FORBIDDEN")
        await _raises(s.rooms.get_state("!no:test.local", ALICE), 404, "M_NOT_FOUND")


@pytest_twisted.ensureDeferred
async def test_members(db_config: DatabaseConfig, tmp_path) -> None:
    async with services(db_config, str(tmp_path)) as s:
        await s.profiles.set_field(BOB, "displayname", "Bobby")
        room_id = (await s.rooms.create_room(ALICE, preset="public_chat")).room_id
        before_bob = (await s.rooms.paginate(room_id, ALICE, limit=1)).start
        await s.rooms.join(room_id, BOB)
        await s.rooms.invite(room_id, ALICE, CAROL)
        await s.rooms.join(room_id, DAVE)
        await s.rooms.ban(room_id, ALICE, DAVE)

        async def who(**kw: Any) -> set[str]:
            return {e["state_key"] for e in await s.rooms.members(room_id, ALICE, **kw)}

        assert await who() == {ALICE, BOB, CAROL, DAVE}
        assert await who(membership="join") == {ALICE, BOB}
        assert await who(not_membership="join") == {CAROL, DAVE}
        assert await who(membership="ban") == {DAVE}
        assert await who(at=before_bob) == {ALICE}
        joined = await s.rooms.joined_members(room_id, BOB)
        assert joined == {ALICE: {"display_name": None, "avatar_url": None},
                          BOB: {"display_name": "Bobby", "avatar_url": None}}


@pytest_twisted.ensureDeferred
async def test_context(db_config: DatabaseConfig, tmp_path) -> None:
    async with services(db_config, str(tmp_path)) as s:
        room_id = (await s.rooms.create_room(ALICE, name="ctx")).room_id
        sent = [await _message(s, room_id, ALICE, f"m{i}") for i in range(10)]
        ctx = await s.rooms.context(room_id, ALICE, sent[5], limit=4)
        assert ctx.event["event_id"] == sent[5]
        assert [e["event_id"] for e in ctx.events_before] == [sent[4], sent[3]]
        assert [e["event_id"] for e in ctx.events_after] == [sent[6], sent[7]]
        assert any(e["type"] == "m.room.name" for e in ctx.state)
        # The tokens continue the timeline on either side.
        earlier = await s.rooms.paginate(room_id, ALICE, from_token=ctx.start, limit=2)
        assert [e["event_id"] for e in earlier.chunk] == [sent[2], sent[1]]
        later = await s.rooms.paginate(room_id, ALICE, from_token=ctx.end, direction="f",
                                       limit=2)
        assert [e["event_id"] for e in later.chunk] == [sent[8], sent[9]]
        lazy = await s.rooms.context(room_id, ALICE, sent[5], limit=2, lazy_load_members=True)
        assert [e["state_key"] for e in lazy.state] == [ALICE]
        await _raises(s.rooms.context(room_id, ALICE, "$missing"), 404, "M_NOT_FOUND")


# -- hooks -------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_profile_changes_update_member_events(db_config: DatabaseConfig, tmp_path) -> None:
    async with services(db_config, str(tmp_path)) as s:
        r1 = (await s.rooms.create_room(ALICE, preset="public_chat")).room_id
        r2 = (await s.rooms.create_room(ALICE, preset="public_chat")).room_id
        left = (await s.rooms.create_room(CAROL, preset="public_chat")).room_id
        for r in (r1, r2, left):
            await s.rooms.join(r, BOB)
        await s.rooms.leave(left, BOB)
        await s.profiles.set_field(BOB, "displayname", "Robert")
        for r in (r1, r2):
            assert (await s.rooms.joined_members(r, ALICE))[BOB]["display_name"] == "Robert"
        member = await s.pipeline.current_state_event(left, (MEMBER, BOB))
        assert member is not None and member.event.content["membership"] == "leave"
        await s.profiles.set_field(BOB, "avatar_url", "mxc://test.local/abc")
        await s.profiles.delete_field(BOB, "displayname")
        ev = await s.pipeline.current_state_event(r1, (MEMBER, BOB))
        assert ev is not None
        assert ev.event.content == {"membership": "join", "avatar_url": "mxc://test.local/abc"}
        # Unrelated fields send nothing.
        events = await count(s, "events")
        await s.profiles.set_field(BOB, "m.tz", "Europe/Paris")
        assert await count(s, "events") == events


@pytest_twisted.ensureDeferred
async def test_deactivation_leaves_every_room(db_config: DatabaseConfig, tmp_path) -> None:
    async with services(db_config, str(tmp_path)) as s:
        r1 = (await s.rooms.create_room(ALICE, preset="public_chat")).room_id
        r2 = (await s.rooms.create_room(ALICE, invite=[BOB])).room_id
        await s.rooms.join(r1, BOB)
        await s.accounts.deactivate(BOB)
        memberships = await s.rooms.rooms_for_user(BOB)
        assert memberships == {r1: "leave", r2: "leave"}
        assert await s.rooms.joined_rooms(BOB) == []
        stored: StoredEvent | None = await s.pipeline.current_state_event(r2, (MEMBER, BOB))
        assert stored is not None and stored.event.sender == BOB


@pytest_twisted.ensureDeferred
async def test_every_room_version_works(db_config: DatabaseConfig, tmp_path) -> None:
    from federation.room_versions import KNOWN_ROOM_VERSIONS

    async with services(db_config, str(tmp_path)) as s:
        for version in KNOWN_ROOM_VERSIONS:
            room_id = (await s.rooms.create_room(ALICE, preset="public_chat",
                                                 room_version=version)).room_id
            await s.rooms.join(room_id, BOB)
            secret = await _message(s, room_id, BOB, "secret")
            await s.rooms.redact(room_id, ALICE, secret)
            await s.rooms.send_event(room_id, ALICE, "m.room.topic", {"topic": version}, "")
            await s.rooms.kick(room_id, ALICE, BOB)
            page = await s.rooms.paginate(room_id, ALICE, limit=3)
            assert [e["type"] for e in page.chunk] == [
                MEMBER, "m.room.topic", "m.room.redaction"
            ], version
            assert (await s.rooms.get_event(room_id, ALICE, secret))["content"] == {}
            create = await s.rooms.get_state_event(room_id, ALICE, "m.room.create")
            assert create.event.content["room_version"] == version
