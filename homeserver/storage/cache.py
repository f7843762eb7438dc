"""A bounded least-recently-used map for the stores' in-memory caches. Named caches report
their hits, misses and size to Prometheus (summed over the instances sharing a name)."""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

from prometheus_client.core import REGISTRY, CounterMetricFamily, GaugeMetricFamily

K = TypeVar("K")
V = TypeVar("V")
_MISSING = object()


# Operators size the caches through the config (``caches``): every cache scaled by one factor,
# or a named one set outright. Applied to caches made after ``configure``.
_factor = 1.0
_sizes: dict[str, int] = {}


def configure(global_factor: float, sizes: dict[str, int]) -> None:
    global _factor, _sizes
    _factor = global_factor
    _sizes = dict(sizes)


def configured_size(default: int, name: str | None) -> int:
    if name is not None and name in _sizes:
        return _sizes[name]
    return max(1, int(default * _factor))


class LruCache(Generic[K, V]):
    def __init__(self, max_size: int, name: str | None = None) -> None:
        self.max_size = configured_size(max_size, name)
        self._data: OrderedDict[K, V] = OrderedDict()
        # [hits, misses], apart from the cache so they outlive it (see _retire).
        self._counts = [0, 0]
        self.name = name
        if name is not None:
            _NAMED.add(self)
            weakref.finalize(self, _retire, name, self._counts)

    @property
    def hits(self) -> int:
        return self._counts[0]

    @property
    def misses(self) -> int:
        return self._counts[1]

    def get(self, key: K, default: V | None = None) -> V | None:
        value = self._data.get(key, _MISSING)
        if value is _MISSING:
            self._counts[1] += 1
            return default
        self._counts[0] += 1
        self._data.move_to_end(key)
        return value  # type: ignore[return-value]

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def set(self, key: K, value: V) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.max_size:
            self._data.popitem(last=False)

    def pop(self, key: K) -> None:
        self._data.pop(key, None)

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


# Named caches, forgotten when they are collected; the counts of collected ones are kept per
# name, so the exported counters never go down.
_NAMED: weakref.WeakSet[LruCache[Any, Any]] = weakref.WeakSet()
_RETIRED: dict[str, tuple[int, int]] = {}
_LOCK = threading.RLock()  # re-entrant: a collection may run a finalizer on this thread


def _retire(name: str, counts: list[int]) -> None:
    with _LOCK:
        h, m = _RETIRED.get(name, (0, 0))
        _RETIRED[name] = (h + counts[0], m + counts[1])


class _CacheCollector:
    def collect(self) -> Iterator[Any]:
        hits = CounterMetricFamily(
            "homeserver_cache_hits", "Cache lookups that hit", labels=["cache"]
        )
        misses = CounterMetricFamily(
            "homeserver_cache_misses", "Cache lookups that missed", labels=["cache"]
        )
        size = GaugeMetricFamily("homeserver_cache_size", "Entries in the cache", labels=["cache"])
        # Live caches first (held from here on), then the retired counts: a cache is in one
        # or the other, never both or neither.
        live = list(_NAMED)
        with _LOCK:
            totals = {name: (h, m, 0) for name, (h, m) in _RETIRED.items()}
            for cache in live:
                h, m, n = totals.get(cache.name or "", (0, 0, 0))
                totals[cache.name or ""] = (h + cache.hits, m + cache.misses, n + len(cache))
        for name, (h, m, n) in sorted(totals.items()):
            hits.add_metric([name], h)
            misses.add_metric([name], m)
            size.add_metric([name], n)
        yield from (hits, misses, size)


REGISTRY.register(_CacheCollector())
