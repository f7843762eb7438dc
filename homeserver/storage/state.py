"""Room state: interned (type, state_key) pairs, state groups as layered deltas, and the
current state of each room.

A state group is either a snapshot (``prev_group`` NULL) or the changes on top of
``prev_group``; chains are cut by a fresh snapshot every ``SNAPSHOT_INTERVAL`` hops, so reading
a group is one recursive query over at most that many small deltas, and a state event in a
10,000-member room stores one row, not 10,000. Each event maps to the group of the state
after it (``events.state_group``).

``current_state`` mirrors the newest state of each room for fast reads and membership queries
(members of a room, rooms of a user).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from federation.events import StateKey
from homeserver.storage.cache import LruCache
from homeserver.storage.engine import Database, Txn
from homeserver.storage.sql import chunks, marks

SNAPSHOT_INTERVAL = 100
MEMBER = "m.room.member"


@dataclass(frozen=True)
class StateFilter:
    """Which state to read: everything, or some types (all their state keys or some)."""

    types: Mapping[str, frozenset[str] | None] | None = None

    @staticmethod
    def all() -> StateFilter:
        return StateFilter(None)

    @staticmethod
    def from_keys(keys: Iterable[StateKey]) -> StateFilter:
        types: dict[str, set[str]] = {}
        for t, sk in keys:
            types.setdefault(t, set()).add(sk)
        return StateFilter({t: frozenset(sks) for t, sks in types.items()})

    @staticmethod
    def from_types(types: Iterable[str]) -> StateFilter:
        return StateFilter(dict.fromkeys(types))

    def is_all(self) -> bool:
        return self.types is None

    def keys(self) -> list[StateKey] | None:
        """The exact keys asked for, or None if some type asks for every state key."""
        if self.types is None:
            return None
        out: list[StateKey] = []
        for t, sks in self.types.items():
            if sks is None:
                return None
            out.extend((t, sk) for sk in sks)
        return out

    def matches(self, key: StateKey) -> bool:
        if self.types is None:
            return True
        if key[0] not in self.types:
            return False
        sks = self.types[key[0]]
        return sks is None or key[1] in sks

    def apply(self, state: Mapping[StateKey, str]) -> dict[StateKey, str]:
        if self.types is None:
            return dict(state)
        keys = self.keys()
        if keys is not None:
            return {k: state[k] for k in keys if k in state}
        return {k: v for k, v in state.items() if self.matches(k)}

    def sql(self, type_col: str, key_col: str) -> tuple[str, list[str]]:
        """A WHERE fragment (and parameters) selecting the filtered keys."""
        if self.types is None:
            return "1 = 1", []
        parts: list[str] = []
        params: list[str] = []
        for t, sks in self.types.items():
            if sks is None:
                parts.append(f"{type_col} = ?")
                params.append(t)
            elif sks:
                parts.append(f"({type_col} = ? AND {key_col} IN ({','.join('?' * len(sks))}))")
                params.append(t)
                params.extend(sorted(sks))
        return ("(" + " OR ".join(parts) + ")" if parts else "1 = 0"), params


# -- interning (type, state_key) ---------------------------------------------------------------


class KeyNids:
    """The process's view of interned state keys; entries never change once made."""

    def __init__(self, max_size: int = 200_000) -> None:
        self.by_key: LruCache[StateKey, int] = LruCache(max_size, "state_key_nids")

    def intern_txn(self, txn: Txn, keys: Iterable[StateKey]) -> dict[StateKey, int]:
        out: dict[StateKey, int] = {}
        missing: list[StateKey] = []
        for key in set(keys):
            nid = self.by_key.get(key)
            if nid is None:
                missing.append(key)
            else:
                out[key] = nid
        if missing:
            for chunk in chunks(missing):
                rows = txn.execute(
                    "SELECT key_nid, type, state_key FROM state_keys WHERE "
                    + " OR ".join(["(type = ? AND state_key = ?)"] * len(chunk)),
                    [v for key in chunk for v in key],
                ).fetchall()
                for nid, t, sk in rows:
                    out[(t, sk)] = int(nid)
            for key in missing:
                if key in out:
                    continue
                row = txn.execute(
                    "INSERT INTO state_keys (type, state_key) VALUES (?, ?)"
                    " ON CONFLICT (type, state_key) DO NOTHING RETURNING key_nid",
                    key,
                ).fetchone()
                if row is None:
                    row = txn.execute(
                        "SELECT key_nid FROM state_keys WHERE type = ? AND state_key = ?", key
                    ).fetchone()
                assert row is not None
                out[key] = int(row[0])
            for key in missing:
                self.by_key.set(key, out[key])
        return out


# -- state groups ------------------------------------------------------------------------------

_CHAIN = (
    "WITH RECURSIVE chain (sg, hop) AS ("
    " SELECT CAST(? AS BIGINT), 0"
    " UNION ALL"
    " SELECT g.prev_group, c.hop + 1 FROM chain c"
    " JOIN state_groups g ON g.state_group = c.sg WHERE g.prev_group IS NOT NULL)"
)


def load_group_nids_txn(txn: Txn, group: int) -> dict[int, int]:
    """The full state of a group as key_nid -> event_nid."""
    rows = txn.execute(
        _CHAIN + " SELECT e.key_nid, e.event_nid, c.hop FROM chain c"
        " JOIN state_group_entries e ON e.state_group = c.sg",
        (group,),
    ).fetchall()
    best: dict[int, tuple[int, int | None]] = {}
    for key_nid, event_nid, hop in rows:
        seen = best.get(key_nid)
        if seen is None or hop < seen[0]:
            best[key_nid] = (hop, event_nid)
    return {k: int(v) for k, (_, v) in best.items() if v is not None}


def load_group_txn(txn: Txn, group: int, state_filter: StateFilter) -> dict[StateKey, str]:
    """The state of a group as (type, state_key) -> event ID, filtered in SQL."""
    where, params = state_filter.sql("k.type", "k.state_key")
    rows = txn.execute(
        _CHAIN + " SELECT k.type, k.state_key, n.event_id, c.hop FROM chain c"
        " JOIN state_group_entries e ON e.state_group = c.sg"
        " JOIN state_keys k ON k.key_nid = e.key_nid"
        " LEFT JOIN event_nids n ON n.event_nid = e.event_nid"
        f" WHERE {where}",
        [group, *params],
    ).fetchall()
    best: dict[StateKey, tuple[int, str | None]] = {}
    for t, sk, event_id, hop in rows:
        key = (t, sk)
        seen = best.get(key)
        if seen is None or hop < seen[0]:
            best[key] = (hop, event_id)
    return {k: v for k, (_, v) in best.items() if v is not None}


def create_group_txn(
    txn: Txn,
    room_id: str,
    prev_group: int | None,
    prev_chain_len: int,
    delta: Mapping[int, int | None],
) -> tuple[int, int]:
    """Store the state ``prev_group`` + ``delta`` (key_nid -> event_nid, None removes) as a new
    group; returns (group, chain length). A snapshot when the chain would grow too long."""
    if prev_group is None or prev_chain_len + 1 >= SNAPSHOT_INTERVAL:
        full = load_group_nids_txn(txn, prev_group) if prev_group is not None else {}
        for k, v in delta.items():
            if v is None:
                full.pop(k, None)
            else:
                full[k] = v
        group = _insert_group(txn, room_id, None, 0)
        entries: Iterable[tuple[int, int | None]] = full.items()
        chain_len = 0
    else:
        group = _insert_group(txn, room_id, prev_group, prev_chain_len + 1)
        entries = delta.items()
        chain_len = prev_chain_len + 1
    txn.executemany(
        "INSERT INTO state_group_entries (state_group, key_nid, event_nid) VALUES (?, ?, ?)",
        [(group, k, v) for k, v in entries],
    )
    return group, chain_len


def _insert_group(txn: Txn, room_id: str, prev_group: int | None, chain_len: int) -> int:
    row = txn.execute(
        "INSERT INTO state_groups (room_id, prev_group, chain_len) VALUES (?, ?, ?)"
        " RETURNING state_group",
        (room_id, prev_group, chain_len),
    ).fetchone()
    assert row is not None
    return int(row[0])


def group_chain_len_txn(txn: Txn, group: int) -> int:
    row = txn.execute(
        "SELECT chain_len FROM state_groups WHERE state_group = ?", (group,)
    ).fetchone()
    return int(row[0]) if row else 0


# -- current state -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CurrentStateChange:
    type: str
    state_key: str
    event_id: str | None  # None: the key left the state
    membership: str | None


def update_current_state_txn(
    txn: Txn, room_id: str, changes: Sequence[CurrentStateChange]
) -> None:
    upserts = [c for c in changes if c.event_id is not None]
    deletes = [c for c in changes if c.event_id is None]
    if upserts:
        txn.executemany(
            "INSERT INTO current_state (room_id, type, state_key, event_id, membership)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (room_id, type, state_key)"
            " DO UPDATE SET event_id = excluded.event_id, membership = excluded.membership",
            [(room_id, c.type, c.state_key, c.event_id, c.membership) for c in upserts],
        )
    if deletes:
        txn.executemany(
            "DELETE FROM current_state WHERE room_id = ? AND type = ? AND state_key = ?",
            [(room_id, c.type, c.state_key) for c in deletes],
        )


def current_state_txn(txn: Txn, room_id: str, state_filter: StateFilter) -> dict[StateKey, str]:
    where, params = state_filter.sql("type", "state_key")
    rows = txn.execute(
        f"SELECT type, state_key, event_id FROM current_state WHERE room_id = ? AND {where}",
        [room_id, *params],
    ).fetchall()
    return {(r[0], r[1]): r[2] for r in rows}


def joined_rooms_txn(txn: Txn, user_ids: Sequence[str]) -> list[str]:
    """The rooms any of these users is joined to (for waking /sync requests)."""
    out: set[str] = set()
    for chunk in chunks(user_ids):
        rows = txn.execute(
            "SELECT DISTINCT room_id FROM current_state WHERE type = ? AND membership = ?"
            f" AND state_key IN ({marks(len(chunk))})",
            (MEMBER, "join", *chunk),
        ).fetchall()
        out.update(r[0] for r in rows)
    return sorted(out)


@dataclass(frozen=True)
class Membership:
    room_id: str
    user_id: str
    membership: str
    event_id: str


class StateStore:
    """Reads of room state: groups (cached; groups never change) and the current state."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.key_nids = KeyNids()
        # Full state of a group; keyed lookups (group, key) for the small reads (visibility).
        self._groups: LruCache[int, dict[StateKey, str]] = LruCache(128, "state_groups")
        self._keyed: LruCache[tuple[int, StateKey], str | None] = LruCache(
            100_000, "state_group_keys"
        )

    async def state_at_group(
        self, group: int, state_filter: StateFilter | None = None
    ) -> dict[StateKey, str]:
        state_filter = state_filter or StateFilter.all()
        full = self._groups.get(group)
        if full is not None:
            return state_filter.apply(full)
        keys = state_filter.keys()
        if keys is not None:
            found: dict[StateKey, str] = {}
            missing: list[StateKey] = []
            for k in keys:
                if (group, k) in self._keyed:
                    v = self._keyed.get((group, k))
                    if v is not None:
                        found[k] = v
                else:
                    missing.append(k)
            if missing:
                loaded = await self.db.run(
                    "state_at_group", load_group_txn, group, StateFilter.from_keys(missing)
                )
                for k in missing:
                    self._keyed.set((group, k), loaded.get(k))
                found.update(loaded)
            return found
        if state_filter.is_all():
            state = await self.db.run("state_at_group", load_group_txn, group, state_filter)
            self._groups.set(group, state)
            return dict(state)
        return await self.db.run("state_at_group", load_group_txn, group, state_filter)

    async def states_at_groups(
        self, groups: Iterable[int], state_filter: StateFilter
    ) -> dict[int, dict[StateKey, str]]:
        return {g: await self.state_at_group(g, state_filter) for g in set(groups)}

    async def current_state(
        self, room_id: str, state_filter: StateFilter | None = None
    ) -> dict[StateKey, str]:
        return await self.db.run(
            "current_state", current_state_txn, room_id, state_filter or StateFilter.all()
        )

    async def rooms_for_user(
        self, user_id: str, memberships: Iterable[str] | None = None
    ) -> list[Membership]:
        wanted = set(memberships) if memberships is not None else None

        def txn_fn(txn: Txn) -> list[Membership]:
            rows = txn.execute(
                "SELECT room_id, membership, event_id FROM current_state"
                " WHERE state_key = ? AND type = ?",
                (user_id, MEMBER),
            ).fetchall()
            return [
                Membership(r[0], user_id, r[1], r[2])
                for r in rows
                if wanted is None or r[1] in wanted
            ]

        return await self.db.run("rooms_for_user", txn_fn)

    async def members(
        self, room_id: str, memberships: Iterable[str] | None = None
    ) -> list[Membership]:
        wanted = set(memberships) if memberships is not None else None

        def txn_fn(txn: Txn) -> list[Membership]:
            rows = txn.execute(
                "SELECT state_key, membership, event_id FROM current_state"
                " WHERE room_id = ? AND type = ?",
                (room_id, MEMBER),
            ).fetchall()
            return [
                Membership(room_id, r[0], r[1], r[2])
                for r in rows
                if wanted is None or r[1] in wanted
            ]

        return await self.db.run("room_members", txn_fn)

    async def users_sharing_rooms(self, user_id: str) -> set[str]:
        """Everyone joined to a room the user is joined to (the user included)."""

        def txn_fn(txn: Txn) -> set[str]:
            rows = txn.execute(
                "SELECT DISTINCT b.state_key FROM current_state a JOIN current_state b"
                " ON b.room_id = a.room_id AND b.type = a.type AND b.membership = 'join'"
                " WHERE a.state_key = ? AND a.type = ? AND a.membership = 'join'",
                (user_id, MEMBER),
            ).fetchall()
            return {r[0] for r in rows}

        return await self.db.run("users_sharing_rooms", txn_fn)

    async def membership(self, room_id: str, user_id: str) -> Membership | None:
        def txn_fn(txn: Txn) -> Membership | None:
            row = txn.execute(
                "SELECT membership, event_id FROM current_state"
                " WHERE room_id = ? AND type = ? AND state_key = ?",
                (room_id, MEMBER, user_id),
            ).fetchone()
            return Membership(room_id, user_id, row[0], row[1]) if row else None

        return await self.db.run("membership", txn_fn)

    async def row_counts(self) -> dict[str, int]:
        """Rows in the state tables (for tests and operators watching growth)."""

        def txn_fn(txn: Txn) -> dict[str, int]:
            out = {}
            for table in ("state_groups", "state_group_entries", "state_keys", "current_state"):
                row = txn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
                out[table] = int(row[0]) if row else 0
            return out

        return await self.db.run("state_row_counts", txn_fn)
