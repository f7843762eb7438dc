"""Storage: one interface (``Database``), two engines (SQLite, PostgreSQL), versioned migrations,
and one store per domain on top."""

from homeserver.storage.engine import Database, DatabaseUnavailable, Txn, open_database

__all__ = ["Database", "DatabaseUnavailable", "Txn", "open_database"]
