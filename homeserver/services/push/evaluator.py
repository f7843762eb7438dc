"""Push rule evaluation: pure functions, no I/O.

A user's rules are compiled once (``compile_ruleset``) into a flat, ordered tuple of
``CompiledRule``: disabled rules dropped, globs turned into matchers, ``room``/``sender``/
``content`` rules turned into their implied conditions. An event is described once by an
``EventContext`` (its JSON, the room's joined member count, the sender's power level and the
room's notification levels); ``evaluate`` then walks one user's rules against it.

Conditions do not depend on who is evaluating them except through their own parameters
(``contains_display_name`` through the display name), so every condition's outcome is
memoised per event: for a room of N members with the default rules each distinct condition
runs once, and evaluating a member costs a few dictionary lookups.

Glob matching (appendix "Glob-style matching": ``*`` and ``?``) is case-insensitive and runs
without backtracking: a glob is split at its ``*``s into fixed-length segments, which are
placed leftmost-first (correct for ``*``-only globs), so a hostile pattern cannot make
matching super-linear in the number of wildcards.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Final

Json = Any

# Not a JSON value: what a path that leads nowhere resolves to.
MISSING: Final = object()

_WORD = "[A-Za-z0-9_]"
_FLAGS = re.IGNORECASE | re.DOTALL
_MEMBER_COUNT = re.compile(r"^(==|<=|>=|<|>)?([0-9]+)$")
MAX_SAFE_INT = 2**53 - 1

HISTORICAL_ACTIONS = frozenset({"dont_notify", "coalesce"})


# -- paths ----------------------------------------------------------------------------------


@lru_cache(maxsize=1024)
def split_path(key: str) -> tuple[str, ...]:
    """A dot-separated property path (appendix "Dot-separated property paths") as its parts:
    ``\\.`` is a literal dot, ``\\\\`` a literal backslash, any other backslash is kept."""
    parts: list[str] = []
    cur: list[str] = []
    i = 0
    while i < len(key):
        c = key[i]
        if c == "\\" and i + 1 < len(key) and key[i + 1] in ".\\":
            cur.append(key[i + 1])
            i += 2
            continue
        if c == ".":
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    return tuple(parts)


def lookup(event: Mapping[str, Json], path: Sequence[str]) -> Json:
    """The value at ``path`` in the event, or MISSING."""
    value: Json = event
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return MISSING
        value = value[part]
    return value


# -- globs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Segment:
    regex: re.Pattern[str]
    length: int


def _segment(text: str, prefix: str = "", suffix: str = "", *, glob: bool = True) -> _Segment:
    body = "".join("." if glob and c == "?" else re.escape(c) for c in text)
    return _Segment(re.compile(prefix + body + suffix, _FLAGS), len(text))


class GlobMatcher:
    """Matches a glob against a whole value, or (``words=True``, the ``content.body`` rule)
    against any substring that starts and ends at a word boundary: the start or end of the
    value or a character outside ``[A-Za-z0-9_]``."""

    def __init__(self, pattern: str, *, words: bool, glob: bool = True) -> None:
        self.pattern = pattern
        self.words = words
        pieces = re.sub(r"\*+", "*", pattern).split("*") if glob and "*" in pattern else [
            pattern
        ]
        self.literal = len(pieces) == 1
        # Plain text (no wildcard): compared with str.lower() and str.find, no regex.
        self._needle: str | None = None
        self._segments: list[_Segment] = []
        if self.literal and pieces[0] and not (glob and "?" in pieces[0]):
            self._needle = pieces[0].lower()
            return
        if words:
            before, after = f"(?<!{_WORD})", f"(?!{_WORD})"
            if self.literal:
                self._segments = [_segment(pieces[0], before, after, glob=glob)]
            else:
                self._segments = [
                    _segment(pieces[0], prefix=before),
                    *(_segment(p) for p in pieces[1:-1]),
                    _segment(pieces[-1], suffix=after),
                ]
        else:
            self._segments = [_segment(p, glob=glob) for p in pieces]

    def matches(self, value: str) -> bool:
        needle = self._needle
        if needle is not None:
            text = _lower(value)
            if not self.words:
                return text == needle
            return _find_word(text, needle)
        segs = self._segments
        if self.literal:
            if self.words:
                return segs[0].regex.search(value) is not None
            return segs[0].regex.fullmatch(value) is not None
        first, last = segs[0], segs[-1]
        if self.words:
            m = first.regex.search(value)
            if m is None:
                return False
            pos = m.end()
            for seg in segs[1:-1]:
                m = seg.regex.search(value, pos)
                if m is None:
                    return False
                pos = m.end()
            return last.regex.search(value, pos) is not None
        if first.regex.match(value) is None:
            return False
        pos = first.length
        end = len(value) - last.length
        if end < pos or last.regex.fullmatch(value, end) is None:
            return False
        for seg in segs[1:-1]:
            m = seg.regex.search(value, pos, end)
            if m is None:
                return False
            pos = m.end()
        return True


_last_lowered: list[str] = ["", ""]


def _lower(value: str) -> str:
    """``value.lower()``, remembered for the last value: every member's rules look at the
    same body."""
    if value is not _last_lowered[0]:
        _last_lowered[0] = value
        _last_lowered[1] = value.lower()
    return _last_lowered[1]


_WORD_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")


def _find_word(text: str, needle: str) -> bool:
    """Whether ``needle`` occurs in ``text`` starting and ending at word boundaries."""
    n, end = len(needle), len(text)
    start = 0
    while True:
        i = text.find(needle, start)
        if i < 0:
            return False
        j = i + n
        if (i == 0 or text[i - 1] not in _WORD_CHARS) and (
            j == end or text[j] not in _WORD_CHARS
        ):
            return True
        start = i + 1


@lru_cache(maxsize=4096)
def glob_matcher(pattern: str, words: bool) -> GlobMatcher:
    return GlobMatcher(pattern, words=words)


# -- the event -------------------------------------------------------------------------------


@dataclass
class EventContext:
    """What rules are evaluated against for one event; shared by every member of the room."""

    event: Mapping[str, Json]
    member_count: int
    sender_power_level: float
    # m.room.power_levels content.notifications (key -> required level).
    notification_levels: Mapping[str, int] = field(default_factory=dict)
    memo: dict[Any, bool] = field(default_factory=dict)

    @property
    def has_mentions(self) -> bool:
        content = self.event.get("content")
        return isinstance(content, Mapping) and "m.mentions" in content


def _is_scalar(value: Json) -> bool:
    if value is None or isinstance(value, (str, bool)):
        return True
    return isinstance(value, int) and -MAX_SAFE_INT <= value <= MAX_SAFE_INT


def _same(a: Json, b: Json) -> bool:
    """Exact JSON equality of two scalars: true is not 1, "1" is not 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if a is None or b is None:
        return a is None and b is None
    return type(a) is type(b) and a == b


# -- conditions ------------------------------------------------------------------------------


class Condition:
    """A compiled condition; ``key`` identifies its outcome for memoisation per event."""

    key: Any = None

    def test(self, ctx: EventContext, display_name: str | None) -> bool:
        raise NotImplementedError


class _Never(Condition):
    key = ("never",)

    def test(self, ctx: EventContext, display_name: str | None) -> bool:
        return False


NEVER = _Never()


class EventMatch(Condition):
    def __init__(self, key: str, pattern: str) -> None:
        self.key = ("event_match", key, pattern)
        self.path = split_path(key)
        self.matcher = glob_matcher(pattern, key == "content.body")

    def test(self, ctx: EventContext, display_name: str | None) -> bool:
        value = lookup(ctx.event, self.path)
        return isinstance(value, str) and self.matcher.matches(value)


class PropertyIs(Condition):
    def __init__(self, key: str, value: Json) -> None:
        self.key = ("event_property_is", key, type(value).__name__, value)
        self.path = split_path(key)
        self.value = value

    def test(self, ctx: EventContext, display_name: str | None) -> bool:
        found = lookup(ctx.event, self.path)
        return found is not MISSING and _is_scalar(found) and _same(found, self.value)


class PropertyContains(Condition):
    def __init__(self, key: str, value: Json) -> None:
        self.key = ("event_property_contains", key, type(value).__name__, value)
        self.path = split_path(key)
        self.value = value

    def test(self, ctx: EventContext, display_name: str | None) -> bool:
        found = lookup(ctx.event, self.path)
        if not isinstance(found, list):
            return False
        return any(_is_scalar(v) and _same(v, self.value) for v in found)


class ContainsDisplayName(Condition):
    """Per user: memoised by display name, not by the condition alone (its ``key`` is None,
    which tells ``evaluate`` so)."""

    key = None

    def test(self, ctx: EventContext, display_name: str | None) -> bool:
        if not display_name:
            return False
        memo_key = ("contains_display_name", display_name)
        found = ctx.memo.get(memo_key)
        if found is None:
            body = lookup(ctx.event, ("content", "body"))
            found = isinstance(body, str) and _find_word(_lower(body), display_name.lower())
            ctx.memo[memo_key] = found
        return found


def parse_member_count(spec: str) -> tuple[str, int] | None:
    m = _MEMBER_COUNT.match(spec)
    if m is None:
        return None
    return m.group(1) or "==", int(m.group(2))


class RoomMemberCount(Condition):
    def __init__(self, op: str, number: int) -> None:
        self.key = ("room_member_count", op, number)
        self.op = op
        self.number = number

    def test(self, ctx: EventContext, display_name: str | None) -> bool:
        n, want = ctx.member_count, self.number
        if self.op == "==":
            return n == want
        if self.op == "<":
            return n < want
        if self.op == ">":
            return n > want
        if self.op == "<=":
            return n <= want
        return n >= want


class SenderNotificationPermission(Condition):
    DEFAULT_LEVEL = 50

    def __init__(self, key: str) -> None:
        self.key = ("sender_notification_permission", key)
        self.name = key

    def test(self, ctx: EventContext, display_name: str | None) -> bool:
        required = ctx.notification_levels.get(self.name, self.DEFAULT_LEVEL)
        return ctx.sender_power_level >= required


def compile_condition(raw: Json) -> Condition:
    """A condition from its JSON; anything malformed or unknown never matches."""
    if not isinstance(raw, Mapping):
        return NEVER
    kind = raw.get("kind")
    key = raw.get("key")
    if kind == "event_match":
        pattern = raw.get("pattern")
        if isinstance(key, str) and isinstance(pattern, str):
            return EventMatch(key, pattern)
    elif kind in ("event_property_is", "event_property_contains"):
        if isinstance(key, str) and "value" in raw and _is_scalar(raw["value"]):
            cls = PropertyIs if kind == "event_property_is" else PropertyContains
            return cls(key, raw["value"])
    elif kind == "contains_display_name":
        return ContainsDisplayName()
    elif kind == "room_member_count":
        spec = raw.get("is")
        parsed = parse_member_count(spec) if isinstance(spec, str) else None
        if parsed is not None:
            return RoomMemberCount(*parsed)
    elif kind == "sender_notification_permission":
        if isinstance(key, str):
            return SenderNotificationPermission(key)
    return NEVER


# -- rules -------------------------------------------------------------------------------------


def clean_actions(actions: Iterable[Json]) -> list[Json]:
    """The actions without the historical ``dont_notify`` and ``coalesce`` (spec: ignore)."""
    return [a for a in actions if not (isinstance(a, str) and a in HISTORICAL_ACTIONS)]


def tweaks_of(actions: Iterable[Json]) -> dict[str, Json]:
    tweaks: dict[str, Json] = {}
    for a in actions:
        if isinstance(a, Mapping) and isinstance(a.get("set_tweak"), str):
            name = a["set_tweak"]
            # A highlight tweak without a value means true.
            tweaks[name] = a.get("value", True) if name == "highlight" else a.get("value")
    return tweaks


@dataclass(frozen=True)
class CompiledRule:
    rule_id: str
    kind: str
    conditions: tuple[Condition, ...]
    actions: tuple[Json, ...]
    notify: bool
    highlight: bool
    tweaks: Mapping[str, Json]
    # A legacy body-based mention rule: skipped for events that carry m.mentions.
    legacy_mention: bool = False


def compile_rule(rule: Mapping[str, Json], kind: str, legacy_ids: frozenset[str]) -> CompiledRule:
    rule_id = str(rule.get("rule_id", ""))
    conditions: list[Condition]
    if kind in ("override", "underride"):
        conditions = [compile_condition(c) for c in rule.get("conditions") or []]
    elif kind == "content":
        pattern = rule.get("pattern")
        conditions = [EventMatch("content.body", pattern) if isinstance(pattern, str) else NEVER]
    elif kind == "room":
        conditions = [EventMatch("room_id", rule_id)]
    elif kind == "sender":
        conditions = [EventMatch("sender", rule_id)]
    else:
        conditions = [NEVER]
    raw_actions = rule.get("actions")
    actions = clean_actions(raw_actions if isinstance(raw_actions, list) else [])
    tweaks = tweaks_of(actions)
    return CompiledRule(
        rule_id=rule_id,
        kind=kind,
        conditions=tuple(conditions),
        actions=tuple(actions),
        notify="notify" in actions,
        highlight=tweaks.get("highlight") is True,
        tweaks=tweaks,
        legacy_mention=bool(rule.get("default")) and rule_id in legacy_ids,
    )


@dataclass(frozen=True)
class RuleLookup:
    """A block of ``room`` or ``sender`` rules: their condition is that the room ID or sender
    equals the rule ID, so the first match is a dictionary lookup, not a walk over what may be
    hundreds of muted rooms."""

    field: str
    # Lower-cased rule ID -> the first (most important) rule with it.
    table: Mapping[str, CompiledRule]

    def find(self, event: Mapping[str, Json]) -> CompiledRule | None:
        value = event.get(self.field)
        return self.table.get(value.lower()) if isinstance(value, str) else None


CompiledRuleset = tuple[CompiledRule | RuleLookup, ...]
_LOOKUP_FIELDS = {"room": "room_id", "sender": "sender"}


def compile_ruleset(
    ruleset: Mapping[str, Sequence[Mapping[str, Json]]],
    legacy_ids: frozenset[str] = frozenset(),
) -> CompiledRuleset:
    """The enabled rules of a ruleset (kind -> rules, as served by GET /pushrules/global/),
    in evaluation order: override, content, room, sender, underride."""
    return assemble({
        kind: [
            compile_rule(rule, kind, legacy_ids)
            for rule in ruleset.get(kind, ())
            if rule.get("enabled", True) is not False
        ]
        for kind in ("override", "content", "room", "sender", "underride")
    })


def assemble(by_kind: Mapping[str, Sequence[CompiledRule]]) -> CompiledRuleset:
    """Compiled enabled rules per kind, in order, as one ruleset (room and sender rules as
    lookups)."""
    out: list[CompiledRule | RuleLookup] = []
    for kind in ("override", "content", "room", "sender", "underride"):
        rules = by_kind.get(kind, ())
        field_name = _LOOKUP_FIELDS.get(kind)
        if field_name is not None and rules and not any(
            "*" in r.rule_id or "?" in r.rule_id for r in rules
        ):
            table: dict[str, CompiledRule] = {}
            for r in rules:
                table.setdefault(r.rule_id.lower(), r)
            out.append(RuleLookup(field_name, table))
        else:
            out.extend(rules)
    return tuple(out)


def evaluate(
    rules: CompiledRuleset, ctx: EventContext, display_name: str | None = None
) -> CompiledRule | None:
    """The first rule that matches the event, if any (its actions are what happens)."""
    memo = ctx.memo
    has_mentions: bool | None = None
    for rule in rules:
        if isinstance(rule, RuleLookup):
            found_rule = rule.find(ctx.event)
            if found_rule is not None:
                return found_rule
            continue
        if rule.legacy_mention:
            if has_mentions is None:
                has_mentions = ctx.has_mentions
            if has_mentions:
                continue
        for cond in rule.conditions:
            key = cond.key
            if key is None:
                ok = cond.test(ctx, display_name)
            else:
                found = memo.get(key)
                if found is None:
                    found = cond.test(ctx, display_name)
                    memo[key] = found
                ok = found
            if not ok:
                break
        else:
            return rule
    return None
