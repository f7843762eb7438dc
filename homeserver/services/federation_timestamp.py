"""``GET /_matrix/federation/v1/timestamp_to_event/{roomId}``: the event of a room closest to
a time, for a server that may see it (a server asks this when its own copy of the room has no
event near the time a client asked about)."""

from __future__ import annotations

from homeserver.http.errors import Codes, MatrixError, not_found
from homeserver.services.federation_in import FederationRooms
from homeserver.storage.events import EventStore
from homeserver.storage.room_reports import RoomReportStore

BATCH = 20
MAX_BATCHES = 10


async def closest_event_for_server(
    fed: FederationRooms, events: EventStore, reports: RoomReportStore,
    origin: str, room_id: str, ts: int, direction: str,
) -> tuple[str, int]:
    """(event_id, origin_server_ts) of the first event from ``ts`` in ``direction`` that
    ``origin`` may see; 404 when there is none (or the room is unknown here)."""
    if direction not in ("f", "b"):
        raise MatrixError(400, Codes.INVALID_PARAM, "dir must be 'f' or 'b'")
    if await events.get_room(room_id) is None:
        raise not_found(f"Unknown room {room_id}")
    await fed.check_acl(room_id, origin)
    after: tuple[int, int] | None = None
    for _ in range(MAX_BATCHES):
        rows = await reports.events_near(room_id, ts, direction == "f", after, BATCH)
        if not rows:
            break
        after = (rows[-1][1], rows[-1][2])
        loaded = await events.get_events(r[0] for r in rows)
        for event_id, origin_ts, _ in rows:
            stored = loaded.get(event_id)
            if stored is not None and await fed.may_see(origin, stored):
                return event_id, origin_ts
        if len(rows) < BATCH:
            break
    raise not_found(f"Unable to find an event {'after' if direction == 'f' else 'before'}"
                    f" {ts} in room {room_id}")
