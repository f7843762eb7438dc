"""The server's ed25519 signing key file: loaded, or generated on first start."""

from __future__ import annotations

import logging
import os

from federation.keys import (
    InvalidKey,
    SigningKey,
    format_signing_key,
    generate_signing_key,
    parse_signing_keys,
)
from homeserver.config import ConfigError

logger = logging.getLogger(__name__)


def load_or_create(path: str) -> SigningKey:
    """The first key in the file signs; later lines are kept for operators' records."""
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            try:
                keys = parse_signing_keys(f.read())
            except InvalidKey as e:
                raise ConfigError(f"signing_key_path: {path}: {e}") from None
        if not keys:
            raise ConfigError(f"signing_key_path: {path} holds no key")
        return keys[0]
    key = generate_signing_key()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(format_signing_key(key))
    logger.info("generated signing key %s:%s at %s", key.alg, key.version, path)
    return key
