"""Token-bucket rate limits, answered with 429 M_LIMIT_EXCEEDED and retry_after_ms.

Buckets live in this process's memory; when rooms are spread over several processes the
client-facing limits stay with the process that serves the client.
"""

from __future__ import annotations

import math

from homeserver.clock import Clock
from homeserver.config.model import RateLimit
from homeserver.http.errors import Codes, MatrixError

# Buckets idle this long are full again and can be forgotten.
_MAX_BUCKETS = 100_000


class Ratelimiter:
    def __init__(self, limit: RateLimit, enabled: bool, clock: Clock) -> None:
        self.rate = limit.per_second
        self.burst = limit.burst
        self.enabled = enabled
        self.clock = clock
        # key -> (tokens left, time of last update)
        self._buckets: dict[str, tuple[float, float]] = {}

    def _level(self, key: str, now: float) -> float:
        tokens, at = self._buckets.get(key, (float(self.burst), now))
        return min(float(self.burst), tokens + (now - at) * self.rate)

    def check(self, key: str, cost: float = 1.0) -> None:
        """Take ``cost`` from the bucket, or raise 429 saying when to retry."""
        if not self.enabled:
            return
        now = self.clock.monotonic()
        tokens = self._level(key, now)
        if tokens < cost:
            wait_ms = math.ceil((cost - tokens) / self.rate * 1000)
            error = MatrixError(
                429, Codes.LIMIT_EXCEEDED, "Too many requests", retry_after_ms=wait_ms
            )
            error.headers["Retry-After"] = str(math.ceil(wait_ms / 1000))
            raise error
        if len(self._buckets) >= _MAX_BUCKETS:
            self._forget_full(now)
        self._buckets[key] = (tokens - cost, now)

    def would_allow(self, key: str) -> bool:
        return not self.enabled or self._level(key, self.clock.monotonic()) >= 1.0

    def _forget_full(self, now: float) -> None:
        for key in [k for k in self._buckets if self._level(k, now) >= self.burst]:
            del self._buckets[key]
