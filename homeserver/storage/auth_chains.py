"""The auth chain cover index: auth chains and auth differences without walking the graph.

Every indexed state event sits at ``(chain_id, seq)``. A chain holds events of one
(type, state_key), each an auth descendant of the one before, so an event reaches every event
below it on its own chain. Links ``(origin_chain, origin_seq) -> (target_chain, target_seq)``
say that events at ``origin_seq`` or later on the origin chain reach every event at
``target_seq`` or earlier on the target chain. Links are kept transitively closed, so "does A
reach B" and "the auth chain of A, as (chain, max seq) pairs" need one lookup, no recursion
(the design of Synapse's ``event_auth_chains`` / ``event_auth_chain_links``).

``index_events_txn`` indexes new state events (auth events first). ``StorageAuthChains`` is the
``AuthChainProvider`` that ``federation.state_res`` asks, bound to one transaction; for events
that are not indexed (outliers whose auth events are missing) it falls back to walking the
events' ``auth_events``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import TypeVar

from federation.events import Event, StateKey
from federation.state_res import EventCache, InMemoryAuthChains
from homeserver.storage.engine import Txn
from homeserver.storage.sql import chunks, marks

# Rows per query when a list of IDs or ranges goes into SQL (SQLite's variable limit).

Position = tuple[int, int]  # (chain_id, seq)
T = TypeVar("T")


@dataclass(frozen=True)
class ChainEvent:
    """What indexing needs of a state event: its nid, its (type, state_key) and its auth
    events as (nid, (type, state_key)) -- in v12 including the implicit create event."""

    event_nid: int
    key: StateKey
    auth: Sequence[tuple[int, StateKey]]


def positions_txn(txn: Txn, event_nids: Iterable[int]) -> dict[int, Position]:
    nids = list(set(event_nids))
    out: dict[int, Position] = {}
    for chunk in chunks(nids):
        rows = txn.execute(
            "SELECT event_nid, chain_id, seq FROM event_auth_chains"
            f" WHERE event_nid IN ({marks(len(chunk))})",
            chunk,
        ).fetchall()
        for nid, chain, seq in rows:
            out[int(nid)] = (int(chain), int(seq))
    return out


def links_from_txn(txn: Txn, chains: Iterable[int]) -> dict[int, list[tuple[int, int, int]]]:
    """origin chain -> [(origin_seq, target_chain, target_seq)]."""
    ids = list(set(chains))
    out: dict[int, list[tuple[int, int, int]]] = {c: [] for c in ids}
    for chunk in chunks(ids):
        rows = txn.execute(
            "SELECT origin_chain, origin_seq, target_chain, target_seq"
            " FROM event_auth_chain_links"
            f" WHERE origin_chain IN ({marks(len(chunk))})",
            chunk,
        ).fetchall()
        for oc, os_, tc, ts in rows:
            out[int(oc)].append((int(os_), int(tc), int(ts)))
    return out


def _chain_tips_txn(txn: Txn, chains: Iterable[int]) -> dict[int, int]:
    ids = list(set(chains))
    out: dict[int, int] = {}
    for chunk in chunks(ids):
        rows = txn.execute(
            "SELECT chain_id, MAX(seq) FROM event_auth_chains"
            f" WHERE chain_id IN ({marks(len(chunk))}) GROUP BY chain_id",
            chunk,
        ).fetchall()
        out.update({int(c): int(s) for c, s in rows})
    return out


def index_events_txn(txn: Txn, events: Sequence[ChainEvent]) -> list[int]:
    """Index state events, given in an order where auth events come first.

    Returns the nids of events left unindexed because one of their auth events is not
    indexed (the provider walks the graph for those).
    """
    if not events:
        return []
    # Everything this call learns or writes, so later events of the batch see earlier ones.
    cited = {nid for ev in events for nid, _ in ev.auth}
    pos = positions_txn(txn, cited)
    tips = _chain_tips_txn(txn, {c for c, _ in pos.values()})
    links = links_from_txn(txn, {c for c, _ in pos.values()})
    new_positions: list[tuple[int, int, int]] = []
    new_links: list[tuple[int, int, int, int]] = []
    skipped: list[int] = []

    for ev in events:
        if any(nid not in pos for nid, _ in ev.auth):
            skipped.append(ev.event_nid)
            continue
        # Append to the chain of an auth event of the same (type, state_key) if it is that
        # chain's tip; otherwise start a new chain, named after this event.
        chain, seq = ev.event_nid, 1
        for nid, key in ev.auth:
            if key == ev.key:
                c, s = pos[nid]
                if tips.get(c) == s:
                    chain, seq = c, s + 1
                    break
        # What the event reaches, per chain: its auth events and all they reach.
        reach: dict[int, int] = {}
        for nid, _ in ev.auth:
            c, s = pos[nid]
            if reach.get(c, 0) < s:
                reach[c] = s
            for os_, tc, ts in links.get(c, ()):
                if os_ <= s and reach.get(tc, 0) < ts:
                    reach[tc] = ts
        reach.pop(chain, None)
        # What lower events on our own chain already link to is implied for this one.
        covered: dict[int, int] = {}
        for os_, tc, ts in links.get(chain, ()):
            if os_ < seq and covered.get(tc, 0) < ts:
                covered[tc] = ts
        mine = links.setdefault(chain, [])
        for tc, ts in reach.items():
            if ts > covered.get(tc, 0):
                mine.append((seq, tc, ts))
                new_links.append((chain, seq, tc, ts))
        pos[ev.event_nid] = (chain, seq)
        tips[chain] = seq
        new_positions.append((ev.event_nid, chain, seq))

    if new_positions:
        txn.executemany(
            "INSERT INTO event_auth_chains (event_nid, chain_id, seq) VALUES (?, ?, ?)",
            new_positions,
        )
    if new_links:
        txn.executemany(
            "INSERT INTO event_auth_chain_links"
            " (origin_chain, origin_seq, target_chain, target_seq) VALUES (?, ?, ?, ?)",
            new_links,
        )
    return skipped


def _ids_in_ranges_txn(txn: Txn, ranges: dict[int, tuple[int, int]]) -> set[str]:
    """Event IDs at lo < seq <= hi on each chain."""
    items = [(c, lo, hi) for c, (lo, hi) in ranges.items() if hi > lo]
    out: set[str] = set()
    for chunk in chunks(items, 300):
        row = "(CAST(? AS BIGINT), CAST(? AS BIGINT), CAST(? AS BIGINT))"
        values = ",".join([row] * len(chunk))
        params = [v for item in chunk for v in item]
        rows = txn.execute(
            f"WITH r (c, lo, hi) AS (VALUES {values})"
            " SELECT n.event_id FROM r"
            " JOIN event_auth_chains a ON a.chain_id = r.c AND a.seq > r.lo AND a.seq <= r.hi"
            " JOIN event_nids n ON n.event_nid = a.event_nid",
            params,
        ).fetchall()
        out.update(r[0] for r in rows)
    return out


def _nids_of_txn(txn: Txn, event_ids: Iterable[str]) -> dict[str, int]:
    ids = list(set(event_ids))
    out: dict[str, int] = {}
    for chunk in chunks(ids):
        rows = txn.execute(
            "SELECT event_id, event_nid FROM event_nids"
            f" WHERE event_id IN ({marks(len(chunk))})",
            chunk,
        ).fetchall()
        out.update({r[0]: int(r[1]) for r in rows})
    return out


class StorageAuthChains:
    """``federation.state_res.AuthChainProvider`` over the chain cover index, in one
    transaction. ``lookup`` loads an event by ID (used only for unindexed events)."""

    def __init__(self, txn: Txn, lookup: Callable[[str], Event | None]) -> None:
        self._txn = txn
        self._lookup = lookup
        self._fallback: InMemoryAuthChains | None = None
        self._pos: dict[str, Position | None] = {}
        self._links: dict[int, list[tuple[int, int, int]]] = {}
        # How often the index answered versus the graph walk (for tests and metrics).
        self.index_answers = 0
        self.walk_answers = 0

    # -- helpers --------------------------------------------------------------------------
    def _walker(self) -> InMemoryAuthChains:
        if self._fallback is None:
            self._fallback = InMemoryAuthChains(EventCache(self._lookup))
        self.walk_answers += 1
        return self._fallback

    def _positions(self, event_ids: Iterable[str]) -> dict[str, Position] | None:
        """Positions of all the events, or None if any is not indexed."""
        event_ids = set(event_ids)
        wanted = [e for e in event_ids if e not in self._pos]
        if wanted:
            nids = _nids_of_txn(self._txn, wanted)
            by_nid = positions_txn(self._txn, nids.values())
            for e in wanted:
                nid = nids.get(e)
                self._pos[e] = by_nid.get(nid) if nid is not None else None
        out: dict[str, Position] = {}
        for e in event_ids:
            p = self._pos[e]
            if p is None:
                return None
            out[e] = p
        return out

    def _load_links(self, chains: Iterable[int]) -> None:
        missing = [c for c in set(chains) if c not in self._links]
        if missing:
            self._links.update(links_from_txn(self._txn, missing))

    def _reach(self, positions: Iterable[Position], include_self: bool) -> dict[int, int]:
        """chain -> highest seq reached from the positions (their auth chains; with
        ``include_self`` the events themselves too)."""
        positions = list(positions)
        self._load_links(c for c, _ in positions)
        reach: dict[int, int] = {}
        for c, s in positions:
            own = s if include_self else s - 1
            if own > 0 and reach.get(c, 0) < own:
                reach[c] = own
            for os_, tc, ts in self._links.get(c, ()):
                if os_ <= s and reach.get(tc, 0) < ts:
                    reach[tc] = ts
        return reach

    # -- AuthChainProvider ----------------------------------------------------------------
    def auth_chain(self, event_id: str) -> frozenset[str]:
        pos = self._positions([event_id])
        if pos is None:
            return self._walker().auth_chain(event_id)
        self.index_answers += 1
        reach = self._reach(pos.values(), include_self=False)
        return frozenset(_ids_in_ranges_txn(self._txn, {c: (0, s) for c, s in reach.items()}))

    def auth_chain_difference(self, state_sets: Sequence[AbstractSet[str]]) -> set[str]:
        if len(state_sets) < 2:
            return set()
        pos = self._positions(e for s in state_sets for e in s)
        if pos is None:
            return self._walker().auth_chain_difference(state_sets)
        self.index_answers += 1
        reaches = [self._reach((pos[e] for e in s), include_self=True) for s in state_sets]
        ranges: dict[int, tuple[int, int]] = {}
        for c in set().union(*reaches):
            seqs = [r.get(c, 0) for r in reaches]
            ranges[c] = (min(seqs), max(seqs))
        return _ids_in_ranges_txn(self._txn, ranges)

    def conflicted_subgraph(self, conflicted_event_ids: AbstractSet[str]) -> set[str]:
        conflicted = set(conflicted_event_ids)
        pos = self._positions(conflicted)
        if pos is None:
            return self._walker().conflicted_subgraph(conflicted)
        self.index_answers += 1
        # Ancestors of the conflicted events, as the highest seq reached on each chain.
        ancestors = self._reach(pos.values(), include_self=False)
        # lowest[c]: the lowest seq on chain c from which a conflicted event is reachable
        # (or which is one); everything at or above it on c reaches a conflicted event.
        lowest_conflicted: dict[int, int] = {}
        for c, s in pos.values():
            if s < lowest_conflicted.get(c, s + 1):
                lowest_conflicted[c] = s
        lowest = dict(lowest_conflicted)
        self._load_links(ancestors)
        for c in ancestors:
            for os_, tc, ts in self._links.get(c, ()):
                target = lowest_conflicted.get(tc)
                if target is not None and target <= ts and os_ < lowest.get(c, os_ + 1):
                    lowest[c] = os_
        ranges = {
            c: (lowest[c] - 1, hi) for c, hi in ancestors.items() if c in lowest and lowest[c] <= hi
        }
        return conflicted | _ids_in_ranges_txn(self._txn, ranges)
