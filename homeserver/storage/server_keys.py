"""Other servers' signing keys and the documents that published them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from federation.keys import decode_verify_key, encode_verify_key
from federation.server_keys import ServerKeys
from federation.signing import ServerKey
from homeserver.storage.engine import Database, Txn


@dataclass(frozen=True)
class StoredKey:
    key: ServerKey
    fetched_ts: int
    document: dict[str, Any]


class ServerKeyStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def store(self, doc: ServerKeys, fetched_ts: int, from_server: str) -> None:
        document = json.dumps(doc.response, ensure_ascii=False)
        rows = [
            (doc.server_name, key_id, encode_verify_key(k.verify_key),
             k.valid_until_ts if k.valid_until_ts is not None else 2**62,
             fetched_ts, from_server, document)
            for key_id, k in doc.all_keys().items()
        ]

        def txn_fn(txn: Txn) -> None:
            for row in rows:
                existing = txn.execute(
                    "SELECT valid_until_ts FROM server_keys WHERE server_name = ? AND key_id = ?",
                    row[:2],
                ).fetchone()
                # Keep whichever copy of a key stays valid longer (a stale notary answer
                # must not shorten what the origin itself told us).
                if existing is not None and int(existing[0]) > row[3]:
                    continue
                txn.execute(
                    "DELETE FROM server_keys WHERE server_name = ? AND key_id = ?", row[:2]
                )
                txn.execute(
                    "INSERT INTO server_keys (server_name, key_id, verify_key, valid_until_ts,"
                    " fetched_ts, from_server, document) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    row,
                )

        await self.db.run("store_server_keys", txn_fn)

    async def get(self, server_name: str) -> dict[str, StoredKey]:
        def txn_fn(txn: Txn) -> dict[str, StoredKey]:
            rows = txn.execute(
                "SELECT key_id, verify_key, valid_until_ts, fetched_ts, document"
                " FROM server_keys WHERE server_name = ?",
                (server_name,),
            ).fetchall()
            return {
                key_id: StoredKey(
                    ServerKey(decode_verify_key(key_id, key_b64), int(valid_until)),
                    int(fetched),
                    json.loads(document),
                )
                for key_id, key_b64, valid_until, fetched, document in rows
            }

        return await self.db.run("get_server_keys", txn_fn)
