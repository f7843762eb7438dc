"""The embedded engine: one SQLite file in WAL mode, written by a single worker thread.

One connection on one thread serialises writes without SQLITE_BUSY retries; WAL lets other
processes (``homeserver register-user`` beside a running server) read and write meanwhile.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.interfaces import IReactorThreads

from homeserver.storage.engine import Database, Txn

R = TypeVar("R")


class SqliteDatabase(Database):
    engine = "sqlite"

    def __init__(self, path: str, reactor: IReactorThreads) -> None:
        super().__init__(reactor, threads_=1)
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            parent = os.path.dirname(self.path)
            if parent:
                os.makedirs(parent, exist_ok=True)
            # isolation_level=None: we issue BEGIN/COMMIT ourselves so DDL is transactional.
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=10000")
            # 16 MiB of page cache (the default is 2 MiB): a big room's notification rows and
            # indexes outgrow the default at once, and every miss is a read from the OS.
            conn.execute("PRAGMA cache_size=-16384")
            self._conn = conn
        return self._conn

    def _transaction(self, fn: Callable[..., R], *args: Any) -> R:
        with self._lock:
            conn = self._connection()
            cur = conn.cursor()
            # IMMEDIATE takes the write lock up front, so a second process waits on
            # busy_timeout instead of failing mid-transaction.
            cur.execute("BEGIN IMMEDIATE")
            try:
                result = fn(Txn(cur, self.engine), *args)
            except BaseException:
                conn.rollback()
                raise
            finally:
                cur.close()
            conn.commit()
            return result

    def _close_connections(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
