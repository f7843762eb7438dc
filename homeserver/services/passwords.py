"""Password hashing with bcrypt; hashing runs off the reactor thread (it is slow on purpose)."""

from __future__ import annotations

import bcrypt
from twisted.internet import threads


def _pepper(password: str) -> bytes:
    # bcrypt reads at most 72 bytes; longer passwords must still count in full, so hash long
    # ones down first (SHA-256, base64) like common practice.
    raw = password.encode("utf-8")
    if len(raw) <= 72:
        return raw
    import base64
    import hashlib

    return base64.b64encode(hashlib.sha256(raw).digest())


def hash_password_sync(password: str, rounds: int) -> str:
    return bcrypt.hashpw(_pepper(password), bcrypt.gensalt(rounds)).decode("ascii")


def check_password_sync(password: str, stored_hash: str) -> bool:
    try:
        return bool(bcrypt.checkpw(_pepper(password), stored_hash.encode("ascii")))
    except ValueError:
        return False


async def hash_password(password: str, rounds: int) -> str:
    return await threads.deferToThread(hash_password_sync, password, rounds)


async def check_password(password: str, stored_hash: str) -> bool:
    return await threads.deferToThread(check_password_sync, password, stored_hash)
