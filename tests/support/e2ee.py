"""Real ed25519 keys for E2EE tests: devices that sign their keys, and cross-signing identities,
all signing canonical JSON the way clients do (signedjson)."""

from __future__ import annotations

import base64
import os
from typing import Any

from signedjson.key import decode_signing_key_base64, generate_signing_key, get_verify_key
from signedjson.sign import sign_json
from unpaddedbase64 import encode_base64

from tests.support.client import Client, User

JsonDict = dict[str, Any]
ALGORITHMS = ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"]


def random_key() -> str:
    """A 32-byte public key in unpadded base64 (curve25519 keys need no real curve point
    for the server)."""
    return encode_base64(os.urandom(32))


class Ed25519:
    """An ed25519 key pair whose key ID is ``ed25519:<name>``."""

    def __init__(self, name: str | None = None) -> None:
        seed_key = generate_signing_key("tmp")
        public = encode_base64(get_verify_key(seed_key).encode())
        self.name = name if name is not None else public
        seed = base64.b64encode(seed_key.encode()).decode().rstrip("=")
        self.signing_key = decode_signing_key_base64("ed25519", self.name, seed)
        self.public = public

    @property
    def key_id(self) -> str:
        return f"ed25519:{self.name}"

    def sign(self, obj: JsonDict, signer: str) -> JsonDict:
        signed: JsonDict = sign_json(dict(obj), signer, self.signing_key)
        return signed


class Device:
    """A logged-in device with its identity keys."""

    def __init__(self, user: User) -> None:
        self.user = user
        self.user_id = user.user_id
        self.device_id = user.device_id
        self.token = user.access_token
        self.ed = Ed25519(self.device_id)
        self.curve = random_key()
        self._next = 0

    def device_keys(self, **extra: Any) -> JsonDict:
        obj = {
            "user_id": self.user_id,
            "device_id": self.device_id,
            "algorithms": ALGORITHMS,
            "keys": {f"curve25519:{self.device_id}": self.curve,
                     f"ed25519:{self.device_id}": self.ed.public},
            **extra,
        }
        return self.ed.sign(obj, self.user_id)

    def one_time_keys(self, n: int, *, fallback: bool = False) -> JsonDict:
        out = {}
        for _ in range(n):
            self._next += 1
            key_id = f"signed_curve25519:{self._next:06d}"
            obj: JsonDict = {"key": random_key()}
            if fallback:
                obj["fallback"] = True
            out[key_id] = self.ed.sign(obj, self.user_id)
        return out

    async def upload(self, c: Client, body: JsonDict) -> Any:
        return await c.call("POST", "/keys/upload", body, self.token)


class CrossSigning:
    """A user's master, self-signing and user-signing keys."""

    def __init__(self, user_id: str) -> None:
        self.user_id = user_id
        self.master = Ed25519()
        self.self_signing = Ed25519()
        self.user_signing = Ed25519()

    def key(self, usage: str, key: Ed25519, signed_by: Ed25519 | None = None) -> JsonDict:
        obj: JsonDict = {"user_id": self.user_id, "usage": [usage],
                         "keys": {key.key_id: key.public}}
        return signed_by.sign(obj, self.user_id) if signed_by else obj

    def master_key(self) -> JsonDict:
        return self.key("master", self.master)

    def self_signing_key(self) -> JsonDict:
        return self.key("self_signing", self.self_signing, self.master)

    def user_signing_key(self) -> JsonDict:
        return self.key("user_signing", self.user_signing, self.master)

    def upload_body(self) -> JsonDict:
        return {"master_key": self.master_key(), "self_signing_key": self.self_signing_key(),
                "user_signing_key": self.user_signing_key()}


def stored_events_json(engine: str, target: str) -> list[tuple[str, str]]:
    """(type, JSON) of every event a server stored, read straight from its database, for
    checks that encrypted rooms hold ciphertext only."""
    query = "SELECT type, json FROM events"
    if engine == "sqlite":
        import sqlite3

        conn = sqlite3.connect(target)
        try:
            return [(t, j) for t, j in conn.execute(query).fetchall()]
        finally:
            conn.close()
    import psycopg

    with psycopg.connect(target) as pg:
        return [(t, j) for t, j in pg.execute(query).fetchall()]
