"""POST /search (room_events) over the events a user may see.

Candidates come from the full-text index (``storage.search``) of the rooms the user is or
was in (joined, left or banned; forgotten rooms left out), then pass through
``RoomService.filter_visible`` and the request's RoomEventFilter. Ordering by rank pages by
offset (``r<offset>``), by recency by stream position (``s<stream>``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from federation.events import Event, JsonDict
from homeserver.http.errors import Codes, MatrixError
from homeserver.services.events import MEMBER
from homeserver.services.rooms import RoomService
from homeserver.storage.events import StoredEvent
from homeserver.storage.search import SEARCH_KEYS, SearchHit, SearchStore, search_words
from homeserver.storage.state import StateFilter

MAX_LIMIT = 100
MAX_ROUNDS = 5
MAX_CONTEXT = 50


def _bad(message: str, code: str = Codes.BAD_JSON) -> MatrixError:
    return MatrixError(400, code, message)


def _str_list(spec: dict[str, Any], key: str) -> list[str] | None:
    value = spec.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad(f"filter.{key} must be a list of strings")
    return value


def _predicate(spec: dict[str, Any]) -> Callable[[Event], bool]:
    types, not_types = _str_list(spec, "types"), _str_list(spec, "not_types") or []
    senders, not_senders = _str_list(spec, "senders"), _str_list(spec, "not_senders") or []
    contains_url = spec.get("contains_url")
    if contains_url is not None and not isinstance(contains_url, bool):
        raise _bad("filter.contains_url must be a boolean")

    def matches(pattern: str, value: str) -> bool:
        return pattern == value or (pattern.endswith("*") and value.startswith(pattern[:-1]))

    def predicate(event: Event) -> bool:
        if any(matches(p, event.type) for p in not_types):
            return False
        if types is not None and not any(matches(p, event.type) for p in types):
            return False
        if event.sender in not_senders or (senders is not None and event.sender not in senders):
            return False
        if contains_url is not None and isinstance(event.content.get("url"), str) != contains_url:
            return False
        return True

    return predicate


@dataclass
class SearchRequest:
    term: str
    keys: list[str]
    order_by: str
    limit: int
    room_filter: list[str] | None
    not_rooms: list[str]
    predicate: Callable[[Event], bool]
    before_limit: int | None
    after_limit: int | None
    group_by: list[str] = field(default_factory=list)
    include_state: bool = False
    include_profile: bool = False


def parse_request(body: dict[str, Any]) -> SearchRequest:
    cats = body.get("search_categories")
    if not isinstance(cats, dict):
        raise MatrixError(400, Codes.MISSING_PARAM, "Missing parameter: search_categories")
    spec = cats.get("room_events")
    if spec is None:
        raise MatrixError(400, Codes.MISSING_PARAM,
                          "Missing parameter: search_categories.room_events")
    if not isinstance(spec, dict):
        raise _bad("room_events must be an object")
    term = spec.get("search_term")
    if term is None:
        raise MatrixError(400, Codes.MISSING_PARAM, "Missing parameter: search_term")
    if not isinstance(term, str) or len(term) > 1024:
        raise _bad("search_term must be a string of at most 1024 characters")
    keys = spec.get("keys", list(SEARCH_KEYS.values()))
    if not isinstance(keys, list) or not keys or any(k not in SEARCH_KEYS.values() for k in keys):
        raise _bad(f"keys must be a list of {', '.join(SEARCH_KEYS.values())}",
                   Codes.INVALID_PARAM)
    order_by = spec.get("order_by", "rank")
    if order_by not in ("rank", "recent"):
        raise _bad("order_by must be 'rank' or 'recent'", Codes.INVALID_PARAM)
    flt = spec.get("filter") or {}
    if not isinstance(flt, dict):
        raise _bad("filter must be an object")
    limit = flt.get("limit", 10)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise _bad("filter.limit must be a positive integer")
    before = after = None
    include_profile = False
    ctx = spec.get("event_context")
    if ctx is not None:
        if not isinstance(ctx, dict):
            raise _bad("event_context must be an object")
        before, after = ctx.get("before_limit", 5), ctx.get("after_limit", 5)
        for name, value in (("before_limit", before), ("after_limit", after)):
            if isinstance(value, bool) or not isinstance(value, int) or not (
                0 <= value <= MAX_CONTEXT
            ):
                raise _bad(f"event_context.{name} must be an integer from 0 to {MAX_CONTEXT}")
        include_profile = ctx.get("include_profile", False)
        if not isinstance(include_profile, bool):
            raise _bad("event_context.include_profile must be a boolean")
    include_state = spec.get("include_state", False)
    if not isinstance(include_state, bool):
        raise _bad("include_state must be a boolean")
    group_by: list[str] = []
    groupings = spec.get("groupings")
    if groupings is not None:
        if not isinstance(groupings, dict) or not isinstance(groupings.get("group_by", []), list):
            raise _bad("groupings.group_by must be a list")
        for g in groupings.get("group_by", []):
            key = g.get("key") if isinstance(g, dict) else None
            if key not in ("room_id", "sender"):
                raise _bad("group_by keys must be room_id or sender", Codes.INVALID_PARAM)
            group_by.append(key)
    return SearchRequest(
        term=term, keys=keys, order_by=order_by, limit=min(limit, MAX_LIMIT),
        room_filter=_str_list(flt, "rooms"), not_rooms=_str_list(flt, "not_rooms") or [],
        predicate=_predicate(flt), before_limit=before, after_limit=after, group_by=group_by,
        include_state=include_state, include_profile=include_profile,
    )


class SearchService:
    def __init__(self, *, rooms: RoomService, store: SearchStore) -> None:
        self.rooms = rooms
        self.store = store
        self.events = rooms.store

    async def search(
        self, user_id: str, req: SearchRequest, next_batch: str | None,
        device_id: str | None = None,
    ) -> JsonDict:
        by_rank = req.order_by == "rank"
        offset, before_stream = 0, None
        if next_batch:
            try:
                kind, value = next_batch[0], int(next_batch[1:])
            except (IndexError, ValueError):
                raise _bad("Invalid next_batch", Codes.INVALID_PARAM) from None
            if kind != ("r" if by_rank else "s") or value < 0:
                raise _bad("Invalid next_batch", Codes.INVALID_PARAM)
            offset, before_stream = (value, None) if by_rank else (0, value)
        memberships = await self.rooms.rooms_for_user(user_id, ("join", "leave", "ban"))
        room_ids = sorted(
            r for r, m in memberships.items()
            if m in ("join", "leave", "ban")
            and (req.room_filter is None or r in req.room_filter) and r not in req.not_rooms
        )
        words = search_words(req.term)
        results: list[tuple[SearchHit, StoredEvent]] = []
        more = False
        for _ in range(MAX_ROUNDS):
            hits = await self.store.search(
                words, room_ids, req.keys, by_rank=by_rank, offset=offset,
                before_stream=before_stream, limit=req.limit + 1,
            )
            more = len(hits) > req.limit
            hits = hits[: req.limit]
            if not hits:
                break
            offset += len(hits)
            before_stream = hits[-1].stream
            loaded = await self.events.get_events(h.event_id for h in hits)
            by_room: dict[str, list[StoredEvent]] = {}
            for h in hits:
                if h.event_id in loaded:
                    by_room.setdefault(h.room_id, []).append(loaded[h.event_id])
            visible: set[str] = set()
            for room_id, evs in by_room.items():
                visible |= {e.event_id for e in await self.rooms.filter_visible(
                    room_id, user_id, evs)}
            results += [
                (h, loaded[h.event_id]) for h in hits
                if h.event_id in visible and req.predicate(loaded[h.event_id].event)
            ]
            if results or not more:
                break
        serialized = await self.rooms.serialize([e for _, e in results], user_id, device_id)
        out_results = []
        for (hit, ev), event_json in zip(results, serialized, strict=True):
            item: JsonDict = {"rank": hit.rank, "result": event_json}
            if req.before_limit is not None and req.after_limit is not None:
                item["context"] = await self._context(ev, user_id, req.before_limit,
                                                      req.after_limit, device_id)
                if req.include_profile:
                    item["context"]["profile_info"] = await self._profiles(
                        ev, [event_json, *item["context"]["events_before"],
                             *item["context"]["events_after"]])
            out_results.append(item)
        body: JsonDict = {
            "results": out_results, "highlights": sorted(set(words)),
            "count": await self.store.count(words, room_ids, req.keys),
        }
        if req.include_state:
            body["state"] = {
                room_id: await self.rooms.get_state(room_id, user_id)
                for room_id in dict.fromkeys(ev.room_id for _, ev in results)
            }
        token = None
        if more:
            token = f"r{offset}" if by_rank else f"s{before_stream}"
            body["next_batch"] = token
        if req.group_by:
            groups: dict[str, dict[str, JsonDict]] = {}
            for key in req.group_by:
                bucket: dict[str, JsonDict] = {}
                for order, (_, ev) in enumerate(results):
                    group_key = ev.room_id if key == "room_id" else ev.event.sender
                    group = bucket.setdefault(group_key, {"results": [], "order": order})
                    group["results"].append(ev.event_id)
                    if token is not None:
                        group["next_batch"] = token
                groups[key] = bucket
            body["groups"] = groups
        return {"search_categories": {"room_events": body}}

    async def _context(
        self, ev: StoredEvent, user_id: str, before: int, after: int, device_id: str | None
    ) -> JsonDict:
        ctx = await self.rooms.context(
            ev.room_id, user_id, ev.event_id, limit=2 * max(before, after),
            lazy_load_members=True, device_id=device_id,
        )
        return {
            "events_before": ctx.events_before[:before],
            "events_after": ctx.events_after[:after],
            "start": ctx.start,
            "end": ctx.end,
        }

    async def _profiles(self, ev: StoredEvent, events: list[JsonDict]) -> JsonDict:
        """``profile_info``: display name and avatar of the senders of a result and its
        context, from their member events in the state after the result (as Synapse)."""
        senders = sorted({e["sender"] for e in events if isinstance(e.get("sender"), str)})
        state = await self.rooms.state_store.state_at_group(
            ev.state_group, StateFilter.from_keys([(MEMBER, u) for u in senders])
        )
        members = await self.events.get_events(state.values())
        out: JsonDict = {}
        for user in senders:
            member = members.get(state.get((MEMBER, user), ""))
            content = member.event.content if member is not None else {}
            out[user] = {k: content[k] for k in ("displayname", "avatar_url")
                         if isinstance(content.get(k), str)}
        return out
