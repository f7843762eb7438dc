"""Namespaces of an application service, and what can be said about two regexes overlapping.

A namespace regex is matched from the start of the ID (``re.match``), as Synapse and the
bridges written against it expect: ``@irc_.*`` covers ``@irc_bob:example.org``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_META = frozenset(".^$*+?{}[]()|")


@dataclass(frozen=True)
class Namespace:
    regex: str
    exclusive: bool
    pattern: re.Pattern[str] = field(compare=False, repr=False)

    def matches(self, value: str) -> bool:
        return self.pattern.match(value) is not None


def _tokens(regex: str) -> tuple[list[str | None], bool] | None:
    """The regex as literal characters (None: anything not a fixed character) and whether it
    is anchored at the end; None when it has a top-level alternative (nothing fixed)."""
    out: list[str | None] = []
    body = regex[1:] if regex.startswith("^") else regex
    anchored = body.endswith("$") and not body.endswith("\\$")
    if anchored:
        body = body[:-1]
    i = 0
    while i < len(body):
        c = body[i]
        if c == "\\" and i + 1 < len(body):
            n = body[i + 1]
            out.append(None if n.isalnum() else n)
            i += 2
            continue
        if c == "|":
            return None
        if c in "*?" or c == "{":
            # The token before is optional or repeated: no longer a fixed character.
            if out:
                out[-1] = None
            out.append(None)
            if c == "{":
                end = body.find("}", i)
                i = len(body) if end < 0 else end + 1
            else:
                i += 1
            continue
        if c == "+":
            out.append(None)  # at least one of the previous: that one stays fixed
            i += 1
            continue
        if c == "[":
            end = body.find("]", i + 2)
            out.append(None)
            i = len(body) if end < 0 else end + 1
            continue
        out.append(None if c in _META else c)
        i += 1
    return out, anchored


def literal_prefix(regex: str) -> tuple[str, bool]:
    """The fixed characters every match starts with, and whether the regex is exactly that
    literal (nothing variable, anchored at the end)."""
    parsed = _tokens(regex)
    if parsed is None:
        return "", False
    tokens, anchored = parsed
    prefix = []
    for t in tokens:
        if t is None:
            break
        prefix.append(t)
    return "".join(prefix), anchored and len(prefix) == len(tokens)


def literal_suffix(regex: str) -> str | None:
    """The fixed characters every match ends with (None: unknown, e.g. not anchored)."""
    parsed = _tokens(regex)
    if parsed is None or not parsed[1]:
        return None
    suffix: list[str] = []
    for t in reversed(parsed[0]):
        if t is None:
            break
        suffix.append(t)
    return "".join(reversed(suffix))


def may_overlap(a: Namespace, b: Namespace) -> str | None:
    """Why ``a`` and ``b`` can match one ID, or None when their fixed start or end tell them
    apart. Regexes cannot be intersected in general; this errs towards reporting overlap."""
    if a.regex == b.regex:
        return f"both are {a.regex!r}"
    for x, y in ((a, b), (b, a)):
        literal, complete = literal_prefix(x.regex)
        if complete:
            return f"{y.regex!r} matches {literal!r}" if y.matches(literal) else None
    pa, _ = literal_prefix(a.regex)
    pb, _ = literal_prefix(b.regex)
    if not (pa.startswith(pb) or pb.startswith(pa)):
        return None
    sa, sb = literal_suffix(a.regex), literal_suffix(b.regex)
    if sa is not None and sb is not None and not (sa.endswith(sb) or sb.endswith(sa)):
        return None
    return f"{a.regex!r} and {b.regex!r} can match the same IDs"
