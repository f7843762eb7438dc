"""Connections and transactions, always off the reactor thread.

Stores call ``await db.run(desc, fn, *args)``: ``fn(txn, *args)`` runs in a worker thread inside
one transaction, committed when it returns and rolled back when it raises. SQL is written once
with ``?`` placeholders; the PostgreSQL engine rewrites them.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from prometheus_client import Gauge, Histogram
from twisted.internet import defer, threads
from twisted.internet.interfaces import IReactorThreads
from twisted.python.threadpool import ThreadPool

from homeserver.config import DatabaseConfig

logger = logging.getLogger(__name__)
R = TypeVar("R")

DB_TXN_SECONDS = Histogram(
    "homeserver_db_transaction_duration_seconds", "Database transaction time", ["name"]
)
# The pool: its size (SQLite: the one writer thread and connection; PostgreSQL: pool_max
# threads, each holding a connection while it runs), how many run a transaction now, and how
# many transactions wait for a free one.
DB_POOL_SIZE = Gauge("homeserver_db_pool_size", "Database connections available", ["engine"])
DB_POOL_IN_USE = Gauge(
    "homeserver_db_pool_in_use", "Database connections running a transaction", ["engine"]
)
DB_POOL_WAITING = Gauge(
    "homeserver_db_pool_waiting", "Transactions waiting for a connection", ["engine"]
)

# Transactions slower than this are logged, so slow queries show up before users notice.
SLOW_TXN_SECONDS = 1.0


class DatabaseUnavailable(Exception):
    """The database could not be reached; requests fail fast with a 5xx instead of hanging."""


@dataclass(frozen=True)
class StreamNote:
    """A new position on a stream and whom it concerns, handed to ``Database.on_commit``
    listeners once the transaction that wrote it has committed (they wake /sync requests)."""

    stream: str
    position: int
    users: tuple[str, ...] = ()
    rooms: tuple[str, ...] = ()


class Txn:
    """A DB-API cursor with the engine's placeholder style hidden."""

    def __init__(self, cursor: Any, engine: str) -> None:
        self._cursor = cursor
        self.engine = engine
        self.notes: list[StreamNote] = []

    def note(
        self, stream: str, position: int, *, users: Iterable[str] = (), rooms: Iterable[str] = ()
    ) -> None:
        """Tell ``on_commit`` listeners about this position once the transaction commits
        (nothing is told if it rolls back)."""
        self.notes.append(StreamNote(stream, position, tuple(users), tuple(rooms)))

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.engine == "postgres" else sql

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Txn:
        self._cursor.execute(self._sql(sql), tuple(params))
        return self

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self._cursor.executemany(self._sql(sql), [tuple(r) for r in rows])

    def fetchone(self) -> tuple[Any, ...] | None:
        row = self._cursor.fetchone()
        return tuple(row) if row is not None else None

    def fetchall(self) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in self._cursor.fetchall()]

    @property
    def rowcount(self) -> int:
        return int(self._cursor.rowcount)


class Database(ABC):
    """The storage interface every store is written against."""

    engine: str

    def __init__(self, reactor: IReactorThreads, threads_: int) -> None:
        self._reactor = reactor
        self._pool = ThreadPool(minthreads=1, maxthreads=threads_, name=f"db-{self.engine}")
        self._threads = threads_
        self._started = False
        self._closed = False
        # Metric children resolved once: ``labels()`` costs more than the update itself, and
        # every transaction makes four updates.
        self._waiting = DB_POOL_WAITING.labels(self.engine)
        self._in_use = DB_POOL_IN_USE.labels(self.engine)
        self._txn_seconds: dict[str, Any] = {}
        # Called on the reactor thread with the ``StreamNote``s of each committed transaction.
        self.on_commit: list[Callable[[list[StreamNote]], None]] = []

    def start(self) -> None:
        self._pool.start()
        self._started = True
        DB_POOL_SIZE.labels(self.engine).inc(self._threads)

    async def run(self, desc: str, fn: Callable[..., R], *args: Any) -> R:
        """Run ``fn(txn, *args)`` in one transaction on a worker thread."""
        if self._closed:
            raise DatabaseUnavailable("the database is closed")
        notes: list[StreamNote] = []
        self._waiting.inc()

        def noting(txn: Txn, *a: Any) -> R:
            result = fn(txn, *a)
            # The attempt that commits is the last to get here (retries start afresh).
            notes[:] = txn.notes
            return result

        d: defer.Deferred[R] = threads.deferToThreadPool(
            self._reactor,
            self._pool,
            self._run_in_thread,
            desc,
            noting,
            *args,
        )
        result = await d
        if notes:
            for listener in self.on_commit:
                try:
                    listener(notes)
                except Exception:
                    logger.exception("on_commit listener failed")
        return result

    def _run_in_thread(self, desc: str, fn: Callable[..., R], *args: Any) -> R:
        start = time.monotonic()
        self._waiting.dec()
        in_use = self._in_use
        in_use.inc()
        try:
            return self._transaction(fn, *args)
        finally:
            in_use.dec()
            elapsed = time.monotonic() - start
            timer = self._txn_seconds.get(desc)
            if timer is None:
                timer = self._txn_seconds[desc] = DB_TXN_SECONDS.labels(desc)
            timer.observe(elapsed)
            if elapsed > SLOW_TXN_SECONDS:
                logger.warning("slow transaction %s took %.2fs", desc, elapsed)

    @abstractmethod
    def _transaction(self, fn: Callable[..., R], *args: Any) -> R: ...

    @property
    def closed(self) -> bool:
        """Closed for good (shutdown), as opposed to unreachable for a while."""
        return self._closed

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Let running transactions finish, then close connections in a worker thread.
        await threads.deferToThreadPool(
            self._reactor, self._pool, self._close_connections
        )
        self._pool.stop()
        if self._started:
            self._started = False
            DB_POOL_SIZE.labels(self.engine).dec(self._threads)

    @abstractmethod
    def _close_connections(self) -> None: ...


def open_database(config: DatabaseConfig, reactor: IReactorThreads | None = None) -> Database:
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    assert reactor is not None
    if config.engine == "sqlite":
        from homeserver.storage.sqlite import SqliteDatabase

        db: Database = SqliteDatabase(config.target, reactor)
    else:
        from homeserver.storage.postgres import PostgresDatabase

        db = PostgresDatabase(config, reactor)
    db.start()
    return db
