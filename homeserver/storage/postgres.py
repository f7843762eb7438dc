"""The production engine: PostgreSQL through psycopg 3 and a psycopg-pool connection pool."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout
from twisted.internet.interfaces import IReactorThreads

from homeserver.config import DatabaseConfig
from homeserver.storage.engine import Database, DatabaseUnavailable, Txn

logger = logging.getLogger(__name__)
R = TypeVar("R")

# Serialization failures and deadlocks are safe to retry: the transaction left no trace.
_RETRYABLE = (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected)
_MAX_ATTEMPTS = 5
_RECONNECT_SECONDS = 2.0
_DOWN_WAIT = 1.0


class PostgresDatabase(Database):
    engine = "postgres"

    def __init__(self, config: DatabaseConfig, reactor: IReactorThreads) -> None:
        super().__init__(reactor, threads_=config.pool_max)
        self._timeout = config.connect_timeout
        self._conns = ConnectionPool(
            config.target,
            min_size=config.pool_min,
            max_size=config.pool_max,
            timeout=config.connect_timeout,
            kwargs={"autocommit": False, "connect_timeout": config.connect_timeout},
            open=False,
            name="homeserver",
            # Give up a reconnection attempt soon: the next request starts a fresh one, so
            # the pool finds the database again within a second or two of its return
            # instead of after the pool's exponential backoff (minutes after a long outage).
            reconnect_timeout=_RECONNECT_SECONDS,
        )
        self._opened = False
        # Set while the database is unreachable: requests then wait at most _DOWN_WAIT for a
        # connection, so an outage answers 503 quickly instead of after connect_timeout.
        self._down = False

    def _transaction(self, fn: Callable[..., R], *args: Any) -> R:
        if not self._opened:
            self._conns.open(wait=False)
            self._opened = True
        for attempt in range(1, _MAX_ATTEMPTS + 1):
            # True once fn has returned: a failure after that (in COMMIT) may or may not
            # have committed, so it is never retried.
            body_done = False
            used: psycopg.Connection[Any] | None = None
            wait = min(self._timeout, _DOWN_WAIT) if self._down else self._timeout
            try:
                with self._conns.connection(timeout=wait) as conn:
                    used = conn
                    # The pool's context manager commits on success and rolls back on error.
                    with conn.cursor() as cur:
                        result = fn(Txn(cur, self.engine), *args)
                        body_done = True
                self._down = False
                return result
            except _RETRYABLE:
                if attempt == _MAX_ATTEMPTS:
                    raise
                logger.info("retrying transaction after a serialization failure (%d)", attempt)
            except PoolTimeout as e:
                # Down only if the pool holds no connection at all: a pool that is merely
                # saturated (every connection busy) is load, and must keep the full wait.
                self._down = self._conns.get_stats().get("pool_size", 0) == 0
                raise DatabaseUnavailable(f"no PostgreSQL connection within {wait:g}s") from e
            except psycopg.OperationalError as e:
                broken = used is None or used.broken
                if broken:
                    # The connection died (the server restarted or went away): its idle
                    # siblings are most likely dead too, so test them now rather than fail
                    # more requests with them.
                    self._conns.check()
                if broken and not body_done and attempt == 1:
                    # Nothing was committed: the transaction died with its connection. Run
                    # it once more on a fresh one (if the database is back, nobody notices).
                    logger.info("retrying transaction after a lost connection: %s", e)
                    continue
                self._down = self._down or broken
                raise DatabaseUnavailable(f"PostgreSQL is unreachable: {e}") from e
        raise AssertionError("unreachable")

    def _close_connections(self) -> None:
        if self._opened:
            self._conns.close()
