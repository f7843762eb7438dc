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
        )
        self._opened = False

    def _transaction(self, fn: Callable[..., R], *args: Any) -> R:
        if not self._opened:
            self._conns.open(wait=False)
            self._opened = True
        for attempt in range(1, _MAX_ATTEMPTS + 1):
            try:
                with self._conns.connection() as conn:
                    # The pool's context manager commits on success and rolls back on error.
                    with conn.cursor() as cur:
                        return fn(Txn(cur, self.engine), *args)
            except _RETRYABLE:
                if attempt == _MAX_ATTEMPTS:
                    raise
                logger.info("retrying transaction after a serialization failure (%d)", attempt)
            except PoolTimeout as e:
                raise DatabaseUnavailable(
                    f"no PostgreSQL connection within {self._timeout}s"
                ) from e
            except psycopg.OperationalError as e:
                raise DatabaseUnavailable(f"PostgreSQL is unreachable: {e}") from e
        raise AssertionError("unreachable")

    def _close_connections(self) -> None:
        if self._opened:
            self._conns.close()
