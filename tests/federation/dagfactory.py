"""Build room DAGs for state resolution tests, without hashes or signatures.

Events get explicit IDs (``$<node>``), so nothing here depends on ``federation.hashes``.
In room v12 the room ID is ``!CREATE`` so the create event's ID is ``$CREATE``.

Two ways to build:

- ``Room.add(...)`` with explicit ``auth`` and ``prev`` node names;
- ``run_graph(...)``, the harness of Synapse's ``tests/state/test_v2.py``: given events and
  chains of prev edges, it walks the DAG in topological order, resolves the state before
  each event with ``resolve_state``, selects its auth events from that state and records
  the state after it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from federation.auth_rules import auth_types_for_event
from federation.events import Event, StateKey
from federation.room_versions import EventFormat, RoomVersion
from federation.state_res import resolve_state
from federation.state_res.v2 import lexicographical_topological_sort

ALICE = "@alice:example.com"
BOB = "@bob:example.com"
CHARLIE = "@charlie:example.com"
EVELYN = "@evelyn:example.com"
ZARA = "@zara:example.com"

JOIN = {"membership": "join"}
LEAVE = {"membership": "leave"}
BAN = {"membership": "ban"}

CREATE = ("m.room.create", "")
POWER = ("m.room.power_levels", "")
JOIN_RULES = ("m.room.join_rules", "")
TOPIC = ("m.room.topic", "")


def member(user: str) -> StateKey:
    return ("m.room.member", user)


def eid(node: str) -> str:
    return "$" + node


def room_id_for(rv: RoomVersion) -> str:
    return "!CREATE" if rv.room_id_is_create_event_hash else "!room:example.com"


def make_event(
    rv: RoomVersion,
    node: str,
    sender: str,
    type_: str,
    state_key: str | None,
    content: Mapping[str, Any],
    auth: Sequence[str],
    prev: Sequence[str],
    ts: int,
    depth: int,
) -> Event:
    """One event, ``auth``/``prev`` given as event IDs."""
    v1_edges = rv.event_format is EventFormat.V1
    pdu: dict[str, Any] = {
        "type": type_,
        "sender": sender,
        "content": dict(content),
        "origin_server_ts": ts,
        "depth": depth,
        "auth_events": [[a, {}] for a in auth] if v1_edges else list(auth),
        "prev_events": [[p, {}] for p in prev] if v1_edges else list(prev),
    }
    if state_key is not None:
        pdu["state_key"] = state_key
    is_create = type_ == "m.room.create" and state_key == ""
    if not (is_create and rv.room_id_is_create_event_hash):
        pdu["room_id"] = room_id_for(rv)
    if v1_edges:
        pdu["event_id"] = eid(node)
    return Event(pdu, rv, event_id=eid(node))


def create_content(rv: RoomVersion, creator: str = ALICE, **extra: Any) -> dict[str, Any]:
    content: dict[str, Any] = {"room_version": rv.identifier, **extra}
    if not rv.implicit_room_creator:
        content["creator"] = creator
    return content


@dataclass
class Room:
    """A room DAG built event by event with explicit auth and prev events (node names)."""

    rv: RoomVersion
    events: dict[str, Event] = field(default_factory=dict)
    ts: int = 0

    def add(
        self,
        node: str,
        sender: str,
        type_: str,
        state_key: str | None,
        content: Mapping[str, Any],
        auth: Iterable[str] = (),
        prev: Iterable[str] = (),
        ts: int | None = None,
    ) -> Event:
        auth_ids = [eid(a) for a in auth]
        prev_ids = [eid(p) for p in prev]
        if self.rv.room_id_is_create_event_hash:
            auth_ids = [a for a in auth_ids if a != eid("CREATE")]
        depth = 1 + max((self.events[p].depth for p in prev_ids if p in self.events), default=0)
        if ts is None:
            self.ts += 1
            ts = self.ts
        ev = make_event(
            self.rv, node, sender, type_, state_key, content, auth_ids, prev_ids, ts, depth
        )
        self.events[ev.event_id] = ev
        return ev

    def state(self, *nodes: str) -> dict[StateKey, str]:
        out: dict[StateKey, str] = {}
        for n in nodes:
            ev = self.events[eid(n)]
            out[ev.state_tuple] = ev.event_id
        return out

    def resolve(self, state_sets: Sequence[Mapping[StateKey, str]], **kw: Any) -> dict:
        return resolve_state(self.rv, state_sets, self.events, **kw)


@dataclass(frozen=True)
class Spec:
    """An event of a ``run_graph`` scenario, before its auth/prev events are known."""

    node: str
    sender: str
    type: str
    state_key: str | None
    content: Mapping[str, Any]


def initial_specs(rv: RoomVersion) -> list[Spec]:
    """Synapse's INITIAL_EVENTS: Alice creates a public room; Bob, Charlie and Zara join."""
    pl_users = {} if rv.creators_infinite_power else {ALICE: 100}
    return [
        Spec("CREATE", ALICE, "m.room.create", "", create_content(rv)),
        Spec("IMA", ALICE, "m.room.member", ALICE, JOIN),
        Spec("IPOWER", ALICE, "m.room.power_levels", "", {"users": pl_users}),
        Spec("IJR", ALICE, "m.room.join_rules", "", {"join_rule": "public"}),
        Spec("IMB", BOB, "m.room.member", BOB, JOIN),
        Spec("IMC", CHARLIE, "m.room.member", CHARLIE, JOIN),
        Spec("IMZ", ZARA, "m.room.member", ZARA, JOIN),
        Spec("START", ZARA, "m.room.message", None, {}),
        Spec("END", ZARA, "m.room.message", None, {}),
    ]


INITIAL_EDGES = ["START", "IMZ", "IMC", "IMB", "IJR", "IPOWER", "IMA", "CREATE"]


@dataclass
class GraphResult:
    events: dict[str, Event]
    state_at: dict[str, dict[StateKey, str]]  # node -> state after the node

    def changed_at_end(self, also: Iterable[StateKey] = ()) -> dict[StateKey, str]:
        """State at END that differs from START (plus the keys in ``also``)."""
        start, end = self.state_at["START"], self.state_at["END"]
        keys = set(also)
        return {k: v for k, v in end.items() if k in keys or start.get(k) != v}


def run_graph(
    rv: RoomVersion,
    specs: Sequence[Spec],
    edges: Sequence[Sequence[str]],
    *,
    with_initial: bool = True,
) -> GraphResult:
    """Synapse's ``do_check`` harness: compute the state at every node of the DAG.

    ``edges`` are chains of prev links: ``["END", "B", "A"]`` means END -> B -> A.
    """
    all_specs = [*initial_specs(rv), *specs] if with_initial else list(specs)
    by_node = {s.node: s for s in all_specs}
    graph: dict[str, set[str]] = {s.node: set() for s in all_specs}
    chains = [INITIAL_EDGES, *edges] if with_initial else list(edges)
    for chain in chains:
        for a, b in itertools.pairwise(chain):
            graph[a].add(b)

    events: dict[str, Event] = {}
    state_at: dict[str, dict[StateKey, str]] = {}
    ts = 0
    order = lexicographical_topological_sort(graph, key=lambda n: (0, 0, n))
    for node in order:
        spec = by_node[node]
        prevs = sorted(graph[node])
        if not prevs:
            before: dict[StateKey, str] = {}
        elif len(prevs) == 1:
            before = dict(state_at[prevs[0]])
        else:
            before = resolve_state(rv, [state_at[p] for p in prevs], events)
        keys = auth_types_for_event(rv, spec.type, spec.state_key, spec.sender, spec.content)
        auth = sorted(before[k] for k in keys if k in before)
        depth = 1 + max((events[eid(p)].depth for p in prevs), default=0)
        ev = make_event(
            rv,
            node,
            spec.sender,
            spec.type,
            spec.state_key,
            spec.content,
            auth,
            [eid(p) for p in prevs],
            ts,
            depth,
        )
        ts += 1
        events[ev.event_id] = ev
        after = dict(before)
        if spec.state_key is not None:
            after[(spec.type, spec.state_key)] = ev.event_id
        state_at[node] = after
    return GraphResult(events, state_at)


def expected_state(result: GraphResult, nodes: Iterable[str]) -> dict[StateKey, str]:
    return {result.events[eid(n)].state_tuple: eid(n) for n in nodes}


def forked_room(
    rv: RoomVersion, seed: int, *, members: int = 8, branches: int = 3, steps: int = 6
) -> tuple[dict[str, Event], list[dict[StateKey, str]]]:
    """A room that forks into ``branches`` branches of random state changes.

    Alice creates a public room, a power levels event makes Bob a moderator, ``members``
    users join; then each branch applies ``steps`` random changes (power levels, bans,
    kicks, topic, join rules, joins, leaves), each citing auth events selected from that
    branch's state. Returns the events and the state at the tip of each branch. Some branch
    events may not pass auth (as with a malicious server); resolution must cope.
    """
    import random

    rng = random.Random(seed)
    room = Room(rv)
    users = [ALICE, BOB] + [f"@u{i}:example.com" for i in range(members)]
    state: dict[StateKey, str] = {}
    counter = 0

    def emit(
        st: dict[StateKey, str], prev: str, sender: str, type_: str, sk: str, content: Any
    ) -> str:
        nonlocal counter
        counter += 1
        node = f"E{counter}"
        keys = auth_types_for_event(rv, type_, sk, sender, content)
        auth = [st[k][1:] for k in sorted(keys) if k in st]
        room.add(node, sender, type_, sk, content, auth=auth, prev=[prev])
        st[(type_, sk)] = eid(node)
        return node

    room.add("CREATE", ALICE, "m.room.create", "", create_content(rv))
    state[CREATE] = eid("CREATE")
    tip = emit(state, "CREATE", ALICE, "m.room.member", ALICE, JOIN)
    admin_users = {} if rv.creators_infinite_power else {ALICE: 100}
    pl_users = {**admin_users, BOB: 50}
    tip = emit(state, tip, ALICE, "m.room.power_levels", "", {"users": pl_users})
    tip = emit(state, tip, ALICE, "m.room.join_rules", "", {"join_rule": "public"})
    for u in users[1:]:
        tip = emit(state, tip, u, "m.room.member", u, JOIN)

    tips: list[dict[StateKey, str]] = []
    for b in range(branches):
        st = dict(state)
        t = tip
        for s in range(steps):
            kind = rng.choice(["pl", "ban", "kick", "topic", "jr", "join", "leave"])
            actor = rng.choice([ALICE, BOB, *users[2:4]])
            target = rng.choice(users[2:])
            if kind == "pl":
                levels = {**admin_users, BOB: rng.choice([0, 50]), target: rng.choice([0, 50])}
                t = emit(st, t, actor, "m.room.power_levels", "", {"users": levels})
            elif kind == "ban":
                t = emit(st, t, actor, "m.room.member", target, BAN)
            elif kind == "kick":
                t = emit(st, t, actor, "m.room.member", target, LEAVE)
            elif kind == "topic":
                t = emit(st, t, actor, "m.room.topic", "", {"topic": f"b{b}s{s}"})
            elif kind == "jr":
                rule = rng.choice(["public", "invite"])
                t = emit(st, t, actor, "m.room.join_rules", "", {"join_rule": rule})
            elif kind == "join":
                u = f"@new{b}_{s}:example.com"
                t = emit(st, t, u, "m.room.member", u, JOIN)
            else:
                t = emit(st, t, target, "m.room.member", target, LEAVE)
        tips.append(st)
    return room.events, tips
