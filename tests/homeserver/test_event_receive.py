"""Events from other servers through the same pipeline: accepted, rejected, soft-failed, and
forks resolved with the stored auth chain index."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted

from federation.builder import build_event
from federation.events import Event, StateKey
from federation.keys import generate_signing_key
from federation.pdu_checks import Verdict
from federation.room_versions import get_room_version
from federation.state_res import resolve_state
from homeserver.config import DatabaseConfig
from homeserver.http.errors import MatrixError
from homeserver.services.events import MissingEvents
from homeserver.services.registry import Services
from tests.support.rooms import services, user

ALICE = user("alice")
REMOTE = "remote.example"
RUTH = f"@ruth:{REMOTE}"
REMOTE_KEY = generate_signing_key("r1")
TOPIC: StateKey = ("m.room.topic", "")


async def _state_events(s: Services, ids: dict[StateKey, str]) -> dict[StateKey, Event]:
    found = await s.events.get_events(ids.values())
    return {k: found[v].event for k, v in ids.items()}


async def remote_event(
    s: Services, room_id: str, event_type: str, content: dict[str, Any], *,
    state_key: str | None = None, prev: list[str] | None = None, sender: str = RUTH,
    ts: int = 1,
) -> Event:
    """An event as the remote server would build it, on the state after ``prev`` (default:
    the room's current extremities)."""
    room = await s.events.get_room(room_id)
    assert room is not None
    prev_ids = prev if prev is not None else room.extremities
    prevs = await s.events.get_events(prev_ids)
    groups = {prevs[p].state_group for p in prev_ids}
    assert len(groups) == 1, "build remote events on one state"
    state = await _state_events(s, await s.state_store.state_at_group(groups.pop()))
    return build_event(
        room_version=room.room_version, event_type=event_type, sender=sender, content=content,
        room_id=room_id, prev_events=[prevs[p].event for p in prev_ids], current_state=state,
        origin_server_ts=ts, signing_key=REMOTE_KEY, server_name=REMOTE, state_key=state_key,
    )


async def _extremities(s: Services, room_id: str) -> list[str]:
    room = await s.events.get_room(room_id)
    assert room is not None
    return room.extremities


@pytest.mark.parametrize("version", ["1", "10", "12"])
@pytest_twisted.ensureDeferred
async def test_remote_events_accepted_and_rejected(
    db_config: DatabaseConfig, tmp_path, version: str
) -> None:
    async with services(db_config, str(tmp_path)) as s:
        room_id = (await s.rooms.create_room(ALICE, preset="public_chat",
                                             room_version=version)).room_id
        # Not joined yet: her message fails the auth rules and is stored as rejected.
        early = await remote_event(s, room_id, "m.room.message", {"body": "let me talk"})
        result = await s.pipeline.receive(early)
        assert result.verdict is Verdict.REJECTED and "not joined" in (result.reason or "")
        assert early.event_id not in await _extremities(s, room_id)
        stored = await s.events.get_event(early.event_id)
        assert stored is not None and stored.rejected

        join = await remote_event(s, room_id, "m.room.member", {"membership": "join"},
                                  state_key=RUTH)
        result = await s.pipeline.receive(join)
        assert result.verdict is Verdict.ACCEPTED
        assert await _extremities(s, room_id) == [join.event_id]
        assert ("m.room.member", RUTH) in await s.state_store.current_state(room_id)
        assert RUTH in await s.rooms.joined_members(room_id, ALICE)

        hello = await remote_event(s, room_id, "m.room.message", {"body": "hello"})
        assert (await s.pipeline.receive(hello)).verdict is Verdict.ACCEPTED
        again = await s.pipeline.receive(hello)
        assert again.existing and again.verdict is Verdict.ACCEPTED
        # The next local event follows the remote one; readers see remote events, not
        # rejected ones.
        reply = await s.rooms.send_event(room_id, ALICE, "m.room.message", {"body": "hi ruth"})
        stored = await s.events.get_event(reply)
        assert stored is not None and stored.event.prev_event_ids == [hello.event_id]
        page = await s.rooms.paginate(room_id, ALICE, limit=10)
        bodies = [e["content"].get("body") for e in page.chunk if e["type"] == "m.room.message"]
        assert bodies == ["hi ruth", "hello"]


@pytest_twisted.ensureDeferred
async def test_missing_prev_events_are_named(db_config: DatabaseConfig, tmp_path) -> None:
    async with services(db_config, str(tmp_path)) as s:
        room_id = (await s.rooms.create_room(ALICE, preset="public_chat",
                                             room_version="10")).room_id
        join = await remote_event(s, room_id, "m.room.member", {"membership": "join"},
                                  state_key=RUTH)
        later = build_event(
            room_version=get_room_version("10"), event_type="m.room.message", sender=RUTH,
            content={"body": "x"}, room_id=room_id, prev_events=[join],
            current_state=await _state_events(s, await s.state_store.current_state(room_id)),
            origin_server_ts=2, signing_key=REMOTE_KEY, server_name=REMOTE,
        )
        with pytest.raises(MissingEvents) as e:
            await s.pipeline.receive(later)
        assert e.value.event_ids == [join.event_id]


@pytest_twisted.ensureDeferred
async def test_soft_failed_event(db_config: DatabaseConfig, tmp_path) -> None:
    async with services(db_config, str(tmp_path)) as s:
        room_id = (await s.rooms.create_room(ALICE, preset="public_chat",
                                             room_version="10")).room_id
        join = await remote_event(s, room_id, "m.room.member", {"membership": "join"},
                                  state_key=RUTH)
        await s.pipeline.receive(join)
        await s.rooms.ban(room_id, ALICE, RUTH)
        # Ruth's server had not seen the ban: valid where it claims to be, not now.
        late = await remote_event(s, room_id, "m.room.message", {"body": "sneaky"},
                                  prev=[join.event_id])
        before = await _extremities(s, room_id)
        result = await s.pipeline.receive(late)
        assert result.verdict is Verdict.SOFT_FAILED
        assert await _extremities(s, room_id) == before
        member = await s.pipeline.current_state_event(room_id, ("m.room.member", RUTH))
        assert member is not None and member.event.membership == "ban"
        # Stored, but never shown to clients.
        stored = await s.events.get_event(late.event_id)
        assert stored is not None and stored.soft_failed and stored.rejected is None
        page = await s.rooms.paginate(room_id, ALICE, limit=20)
        assert late.event_id not in [e["event_id"] for e in page.chunk]
        with pytest.raises(MatrixError):
            await s.rooms.get_event(room_id, ALICE, late.event_id)


@pytest.mark.parametrize("version", ["10", "12"])
@pytest_twisted.ensureDeferred
async def test_a_fork_is_resolved_and_merged(
    db_config: DatabaseConfig, tmp_path, version: str
) -> None:
    async with services(db_config, str(tmp_path)) as s:
        room_id = (await s.rooms.create_room(ALICE, preset="public_chat", room_version=version,
                                             topic="original")).room_id
        join = await remote_event(s, room_id, "m.room.member", {"membership": "join"},
                                  state_key=RUTH)
        await s.pipeline.receive(join)
        pl = await s.rooms.get_state_event(room_id, ALICE, "m.room.power_levels")
        content = dict(pl.event.content)
        content["users"] = {**content["users"], RUTH: 50}
        await s.rooms.send_event(room_id, ALICE, "m.room.power_levels", content, "")
        fork_point = await _extremities(s, room_id)
        # Alice renames the room here while Ruth, elsewhere, sets the topic on the same point.
        await s.rooms.send_event(room_id, ALICE, "m.room.name", {"name": "alice's"}, "")
        # (Sent "later" than everything here: in v12 the unconflicted power levels are not
        # in the partial state when the mainline is built, so timestamps order the topics.)
        theirs = await remote_event(s, room_id, "m.room.topic", {"topic": "ruth's"},
                                    state_key="", prev=fork_point, ts=2**42)
        result = await s.pipeline.receive(theirs)
        assert result.verdict is Verdict.ACCEPTED
        extremities = await _extremities(s, room_id)
        assert len(extremities) == 2 and theirs.event_id in extremities
        # The current state is the resolution of both branches: both changes survive.
        current = await s.state_store.current_state(room_id)
        assert (await s.events.get_event(current[("m.room.name", "")])) is not None
        branch_states = []
        for e in extremities:
            stored = await s.events.get_event(e)
            assert stored is not None
            branch_states.append(await s.state_store.state_at_group(stored.state_group))
        all_ids = {i for st in branch_states for i in st.values()}
        events = {k: v.event for k, v in (await s.events.get_events(all_ids)).items()}
        todo = list(all_ids)
        while todo:
            ev = events[todo.pop()]
            auth = list(ev.auth_event_ids)
            if version == "12" and not ev.is_create():
                auth.append("$" + room_id[1:])
            for a in auth:
                if a not in events:
                    found = await s.events.get_event(a)
                    assert found is not None
                    events[a] = found.event
                    todo.append(a)
        assert current == resolve_state(get_room_version(version), branch_states, events)
        assert current[TOPIC] == theirs.event_id
        # The next local event merges the fork.
        merge = await s.rooms.send_event(room_id, ALICE, "m.room.message", {"body": "merged"})
        stored = await s.events.get_event(merge)
        assert stored is not None and set(stored.event.prev_event_ids) == set(extremities)
        assert await _extremities(s, room_id) == [merge]
        after = await s.state.state_after(stored)
        assert after == current
        topic = await s.rooms.get_state_event(room_id, ALICE, "m.room.topic")
        assert topic.event.content["topic"] == "ruth's"
