"""Small SQL helpers shared by the stores."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")

# Values per `IN (...)` list: far below SQLite's and PostgreSQL's parameter limits, and large
# enough that a big room costs few round trips.
IN_LIST_SIZE = 500


def chunks(items: Sequence[T], size: int = IN_LIST_SIZE) -> Iterator[list[T]]:
    """``items`` in slices short enough for one ``IN (...)`` list each."""
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


def marks(n: int) -> str:
    """``?,?,…`` for an ``IN (...)`` list of ``n`` values."""
    return ",".join("?" * n)
