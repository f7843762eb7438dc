"""Shared pieces of the state resolution algorithms: event access, the split into
unconflicted and conflicted state, auth types and the sender power level used for sorting.

Everything here is pure and synchronous. ``EventCache`` is a per-resolution view over the
caller's event lookup that memoises what the algorithms ask for repeatedly (the event, its auth
event IDs, its power-levels parent) so no per-comparison work repeats.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Container, Iterable, Mapping, Sequence
from typing import TypeAlias

from federation.events import Event, StateKey
from federation.room_versions import EventFormat, RoomVersion

StateMap: TypeAlias = Mapping[StateKey, str]
EventLookup: TypeAlias = Mapping[str, Event] | Callable[[str], Event | None]
# Decides whether ``event`` is allowed given the auth events keyed by (type, state_key).
AuthCheck: TypeAlias = Callable[[Event, Mapping[StateKey, Event]], bool]

CREATE_KEY: StateKey = ("m.room.create", "")
POWER_KEY: StateKey = ("m.room.power_levels", "")
JOIN_RULES_KEY: StateKey = ("m.room.join_rules", "")

# Synapse's CREATOR_POWER_LEVEL: a v12 creator outranks every possible integer level.
CREATOR_POWER_LEVEL = 2**53


_is_str = str.__instancecheck__


def implicit_create_event_id(event: Event) -> str | None:
    """The create event's ID implied by a v12 event's room ID (``!x`` -> ``$x``)."""
    if not event.room_version.room_id_is_create_event_hash or event.is_create():
        return None
    rid = event.get("room_id")
    if not isinstance(rid, str) or not rid.startswith("!"):
        return None
    return "$" + rid[1:]


def auth_ids_of(event: Event) -> list[str]:
    """The event's auth event IDs as the auth graph sees them.

    From room v12 the create event is not listed in ``auth_events`` but is still an auth
    event of every other event (its ID is the room ID with a ``$`` sigil); Synapse adds it
    as an implicit edge, and so do we, so that auth chains, power levels and auth checks all
    see it. (Hot path: written for speed rather than by calling ``implicit_create_event_id``.)
    """
    rv = event.room_version
    get = event.get
    if rv.event_format is EventFormat.V1:
        ids = event.auth_event_ids
    else:
        # v3+: a plain list of IDs; read it directly (auth_event_ids copies and filters).
        raw = get("auth_events")
        ids = raw if type(raw) is list and all(map(_is_str, raw)) else event.auth_event_ids
    if rv.room_id_is_create_event_hash:
        rid = get("room_id")
        if type(rid) is str and rid[:1] == "!" and not event.is_create():
            create_id = "$" + rid[1:]
            if create_id not in ids:
                ids = [*ids, create_id]
    return ids


class EventCache:
    """Memoising view over the caller's event lookup, for one resolution (or longer)."""

    __slots__ = ("_auth_ids", "_events", "_keys", "_lookup", "_pl_parent", "_rejected")

    def __init__(self, lookup: EventLookup, rejected: Container[str] | None = None) -> None:
        if isinstance(lookup, Mapping):
            self._lookup: Callable[[str], Event | None] = lookup.get
        else:
            self._lookup = lookup
        self._events: dict[str, Event | None] = {}
        self._auth_ids: dict[str, list[str]] = {}
        self._pl_parent: dict[str, str | None] = {}
        self._keys: dict[str, StateKey | None] = {}
        self._rejected: Container[str] = rejected if rejected is not None else ()

    def get(self, event_id: str) -> Event | None:
        try:
            return self._events[event_id]
        except KeyError:
            ev = self._lookup(event_id)
            self._events[event_id] = ev
            return ev

    def state_key_of(self, event_id: str) -> StateKey | None:
        """(type, state_key) of a known state event; None for unknown or non-state events."""
        try:
            return self._keys[event_id]
        except KeyError:
            ev = self.get(event_id)
            sk = ev.state_key if ev is not None else None
            key = (ev.type, sk) if ev is not None and sk is not None else None
            self._keys[event_id] = key
            return key

    def is_rejected(self, event_id: str) -> bool:
        return event_id in self._rejected

    def auth_ids(self, event_id: str) -> list[str]:
        """Auth event IDs of a known event (empty if the event is unknown)."""
        ids = self._auth_ids.get(event_id)
        if ids is None:
            ev = self.get(event_id)
            ids = auth_ids_of(ev) if ev is not None else []
            self._auth_ids[event_id] = ids
        return ids

    def auth_event_of_type(self, event_id: str, key: StateKey) -> Event | None:
        """The first auth event of ``event_id`` with the given (type, state_key)."""
        for aid in self.auth_ids(event_id):
            if self.state_key_of(aid) == key:
                return self.get(aid)
        return None

    def power_levels_parent(self, event_id: str) -> str | None:
        """The ID of the ``m.room.power_levels`` event among the event's auth events."""
        try:
            return self._pl_parent[event_id]
        except KeyError:
            aev = self.auth_event_of_type(event_id, POWER_KEY)
            pid = aev.event_id if aev is not None else None
            self._pl_parent[event_id] = pid
            return pid


def separate(
    state_sets: Sequence[StateMap],
) -> tuple[dict[StateKey, str], dict[StateKey, set[str]]]:
    """Split into the unconflicted state map and the conflicted state (key -> event IDs).

    A key is unconflicted only if every state set has it with the same event ID; a key that
    some state set lacks is conflicted (the spec's definition, and Synapse's v2 behaviour).
    """
    unconflicted, conflicted, _ = separate_with_values(state_sets)
    return unconflicted, conflicted


def separate_with_values(
    state_sets: Sequence[StateMap],
) -> tuple[dict[StateKey, str], dict[StateKey, set[str]], list[set[str]]]:
    """``separate``, also returning each state set's event IDs as a set.

    An event ID names one (type, state_key), so a key is unconflicted exactly when its event
    ID is in every state set: the split reduces to set operations on event IDs (run in C)
    and one quick pass per state set, and the ID sets are reused for the auth difference.
    """
    if not state_sets:
        return {}, {}, []
    value_sets = [v if isinstance(v, set) else set(v) for v in (s.values() for s in state_sets)]
    if len(state_sets) == 1:
        return dict(state_sets[0]), {}, value_sets
    common = value_sets[0].intersection(*value_sets[1:])
    conflicted: dict[StateKey, set[str]] = {}
    for s, values in zip(state_sets, value_sets, strict=True):
        odd = values - common
        if not odd:
            continue
        for k, v in [(k, v) for k, v in s.items() if v in odd]:
            ids = conflicted.get(k)
            if ids is None:
                conflicted[k] = {v}
            else:
                ids.add(v)
    unconflicted = dict(state_sets[0])
    for k in conflicted:
        if k in unconflicted:
            common_id = unconflicted.pop(k)
            if common_id in common:
                # Only for malformed input naming one event under two keys.
                conflicted[k].add(common_id)
    return unconflicted, conflicted, value_sets


def auth_types_for_event(room_version: RoomVersion, event: Event) -> set[StateKey]:
    """The (type, state_key) pairs whose current state may be needed to authorise ``event``.

    Mirrors the spec's "auth events selection" (and Synapse's ``auth_types_for_event``).
    """
    if event.is_create():
        return set()
    types: set[StateKey] = {POWER_KEY, ("m.room.member", event.sender), CREATE_KEY}
    if event.type == "m.room.member":
        content = event.content
        membership = content.get("membership")
        target = event.state_key
        if membership in ("join", "invite", "knock"):
            types.add(JOIN_RULES_KEY)
        if isinstance(target, str):
            types.add(("m.room.member", target))
        if membership == "invite":
            tpi = content.get("third_party_invite")
            if isinstance(tpi, Mapping):
                signed = tpi.get("signed")
                token = signed.get("token") if isinstance(signed, Mapping) else None
                if isinstance(token, str):
                    types.add(("m.room.third_party_invite", token))
        if room_version.restricted_join_rule and membership == "join":
            via = content.get("join_authorised_via_users_server")
            if isinstance(via, str):
                types.add(("m.room.member", via))
    return types


def creators_of(create: Event) -> set[str]:
    """Room creators: the create event's sender, plus ``additional_creators`` in v12."""
    creators = {create.sender}
    if create.room_version.creators_infinite_power:
        extra = create.content.get("additional_creators")
        if isinstance(extra, list):
            creators.update(u for u in extra if isinstance(u, str))
    return creators


def sender_power_level(events: EventCache, event_id: str) -> int:
    """The sender's power level according to the event's own auth events (for sorting).

    Follows Synapse's ``_get_power_level_for_sender``: v12 creators get
    ``CREATOR_POWER_LEVEL``; with no power levels event the (v1-v10 ``creator``, v11+ sender)
    creator has 100 and everyone else 0; otherwise ``users[sender]`` or ``users_default``.
    """
    event = events.get(event_id)
    if event is None:
        return 0
    pl: Event | None = None
    create: Event | None = None
    for aid in events.auth_ids(event_id):
        aev = events.get(aid)
        if aev is None or aev.state_key != "":
            continue
        if aev.type == "m.room.power_levels":
            pl = aev
        elif aev.type == "m.room.create":
            create = aev
    if create is not None and event.room_version.creators_infinite_power:
        if event.sender in creators_of(create):
            return CREATOR_POWER_LEVEL
    if pl is None:
        if create is not None:
            creator = (
                create.sender
                if event.room_version.implicit_room_creator
                else create.content.get("creator")
            )
            if creator == event.sender:
                return 100
        return 0
    users = pl.content.get("users")
    level = users.get(event.sender) if isinstance(users, Mapping) else None
    if level is None:
        level = pl.content.get("users_default", 0)
    try:
        return int(level)
    except (TypeError, ValueError):
        return 0


def default_auth_check() -> AuthCheck:
    """``federation.auth_rules.check_auth`` as a yes/no decision."""
    from federation.auth_rules import AuthError, check_auth

    def allowed(event: Event, auth_events: Mapping[StateKey, Event]) -> bool:
        try:
            check_auth(event, auth_events)
        except AuthError:
            return False
        return True

    return allowed


def flatten(values: Iterable[Collection[str]]) -> set[str]:
    out: set[str] = set()
    for v in values:
        out.update(v)
    return out
