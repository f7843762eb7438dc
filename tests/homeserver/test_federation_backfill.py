"""Backfill between two real servers over TLS on loopback: a server that joined a room late
fetches the history before its join from the resident server (``/backfill``) when its user
pages back with ``/messages``; the history changes neither the room's current state nor what
/sync sends, and a room's history visibility still holds for it."""

from __future__ import annotations

from typing import Any

import pytest_twisted

from tests.homeserver.test_federation_rooms import eventually, send_text, services
from tests.support.client import Client, User, q
from tests.support.server import RunningServer
from tests.support.sync import sync


async def page_back(c: Client, user: User, room_id: str, start: str | None,
                    limit: int) -> list[dict[str, Any]]:
    """Every event a client sees paging back from ``start``, oldest first."""
    events: list[dict[str, Any]] = []
    token = start
    for _ in range(50):
        path = f"/rooms/{q(room_id)}/messages?dir=b&limit={limit}"
        if token is not None:
            path += f"&from={q(token)}"
        r = await c.call("GET", path, None, user.access_token)
        assert r.status == 200, r.body
        events = list(reversed(r.json()["chunk"])) + events
        token = r.json().get("end")
        if token is None:
            return events
    raise AssertionError("pagination did not end")


def bodies(events: list[dict[str, Any]]) -> list[str]:
    return [e["content"]["body"] for e in events if e["type"] == "m.room.message"]


@pytest_twisted.ensureDeferred
async def test_late_joiner_backfills_history(
    pair: tuple[RunningServer, RunningServer],
) -> None:
    a, b = pair
    sa, sb = services(a), services(b)
    ca, cb = Client(a.client_url), Client(b.client_url)
    alice = await ca.register("alice")
    bob = await cb.register("bob")
    r = await ca.call("POST", "/createRoom", {"preset": "public_chat", "name": "Old name"},
                      alice.access_token)
    room_id = r.json()["room_id"]
    history = []
    for i in range(24):
        if i == 12:
            r = await ca.call("PUT", f"/rooms/{q(room_id)}/state/m.room.name",
                              {"name": "New name"}, alice.access_token)
            assert r.status == 200, r.body
        history.append(f"before bob {i}")
        await send_text(ca, alice, room_id, history[-1], f"h{i}")

    r = await cb.call("POST", f"/join/{q(room_id)}?via=a.test", {}, bob.access_token)
    assert r.status == 200, r.body

    async def joined_on_a() -> bool:
        return "b.test" in await sa.federation.joined_servers(room_id)

    await eventually(joined_on_a)
    await send_text(ca, alice, room_id, "after bob", "h-after")

    async def arrived() -> bool:
        return "after bob" in bodies(await page_back(cb, bob, room_id, None, 100))

    first = await sync(cb, bob)
    state_before = await sb.state_store.current_state(room_id)
    extremities_before = (await sb.events.get_room(room_id)).extremities  # type: ignore[union-attr]
    await eventually(arrived)
    # b.test had none of it; paging back from the sync's prev_batch fetches it, 10 at a time.
    prev_batch = first["rooms"]["join"][room_id]["timeline"]["prev_batch"]
    seen = await page_back(cb, bob, room_id, prev_batch, 10)
    assert bodies(seen) == history
    names = [e["content"]["name"] for e in seen if e["type"] == "m.room.name"]
    assert names == ["Old name", "New name"]
    assert seen[0]["type"] == "m.room.create"
    # The same events, in the same order, as on a.test.
    on_a = await page_back(ca, alice, room_id, None, 100)
    assert [e["event_id"] for e in on_a if e["event_id"] in {x["event_id"] for x in seen}] \
        == [e["event_id"] for e in seen]

    # History only: the current state and the head are as they were; /sync sends none of it.
    assert await sb.state_store.current_state(room_id) == state_before
    assert (await sb.events.get_room(room_id)).extremities == extremities_before  # type: ignore[union-attr]
    later = await sync(cb, bob, first["next_batch"])
    timeline = later["rooms"]["join"].get(room_id, {}).get("timeline", {}).get("events", [])
    assert not set(bodies(timeline)) & set(history)
    old = await sb.events.get_event(next(e["event_id"] for e in seen
                                         if e["type"] == "m.room.message"))
    assert old is not None and old.stream_ordering < 0
    # Paging again needs nothing more from a.test.
    assert bodies(await page_back(cb, bob, room_id, prev_batch, 10)) == history


@pytest_twisted.ensureDeferred
async def test_backfilled_history_keeps_its_visibility(
    pair: tuple[RunningServer, RunningServer],
) -> None:
    a, b = pair
    ca, cb = Client(a.client_url), Client(b.client_url)
    alice = await ca.register("alice")
    bob = await cb.register("bob")
    r = await ca.call("POST", "/createRoom", {
        "preset": "public_chat",
        "initial_state": [{"type": "m.room.history_visibility", "state_key": "",
                           "content": {"history_visibility": "joined"}}]},
        alice.access_token)
    room_id = r.json()["room_id"]
    private = [await send_text(ca, alice, room_id, f"private {i}", f"p{i}") for i in range(5)]
    r = await cb.call("POST", f"/join/{q(room_id)}?via=a.test", {}, bob.access_token)
    assert r.status == 200, r.body
    await send_text(cb, bob, room_id, "hello", "hi")
    seen = await page_back(cb, bob, room_id, None, 3)
    assert bodies(seen) == ["hello"]
    # b.test did fetch them (they are the room's history), but bob may not see them.
    for event_id in private:
        stored = await services(b).events.get_event(event_id)
        assert stored is not None and stored.stream_ordering < 0
