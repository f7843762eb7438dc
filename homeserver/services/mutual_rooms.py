"""``GET /_matrix/client/v1/mutual_rooms``: the rooms two users are both joined to, in pages
ordered by room ID (the ``from`` token is the last room ID of the previous page, so a page
boundary survives rooms being joined or left in between)."""

from __future__ import annotations

from dataclasses import dataclass

from federation.identifiers import is_valid_room_id, is_valid_user_id
from homeserver.http.errors import Codes, MatrixError
from homeserver.storage.state import StateStore

PAGE_SIZE = 100


@dataclass(frozen=True)
class MutualRooms:
    joined: list[str]
    count: int
    next_batch: str | None


class MutualRoomsService:
    def __init__(self, state_store: StateStore) -> None:
        self.state_store = state_store

    async def mutual_rooms(
        self, requester: str, other: str, from_token: str | None, page_size: int = PAGE_SIZE
    ) -> MutualRooms:
        if not is_valid_user_id(other, historical=False):
            raise MatrixError(400, Codes.INVALID_PARAM, "The user ID provided was invalid")
        if other == requester:
            raise MatrixError(400, Codes.INVALID_PARAM,
                              "You cannot request a list of shared rooms with yourself")
        if from_token is not None and not is_valid_room_id(from_token):
            raise MatrixError(400, Codes.INVALID_PARAM, "Invalid 'from' token")
        mine = {m.room_id for m in await self.state_store.rooms_for_user(requester, ["join"])}
        # An unknown user simply shares no room: the spec wants an empty list, not an error.
        theirs = {m.room_id for m in await self.state_store.rooms_for_user(other, ["join"])}
        shared = sorted(mine & theirs)
        after = [r for r in shared if from_token is None or r > from_token]
        page = after[:page_size]
        more = len(after) > page_size
        return MutualRooms(page, len(shared), page[-1] if more else None)
