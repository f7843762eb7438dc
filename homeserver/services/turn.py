"""TURN credentials for /voip/turnServer: the time-limited username and password of the TURN
REST API (coturn's ``use-auth-secret``), or the configured fixed ones."""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

from homeserver.config.client_extras import VoipConfig


def turn_server(config: VoipConfig, user_id: str, now_ms: int) -> dict[str, Any]:
    """The answer for this user now; ``{}`` when no TURN server is configured (the spec's
    answer for "none", which clients take as "calls go peer to peer or through their own")."""
    if not config.turn_uris:
        return {}
    lifetime_s = config.turn_user_lifetime_ms // 1000
    if config.turn_shared_secret is not None:
        # The TURN server recomputes the password from the username and the shared secret,
        # and refuses the username once the expiry time in it has passed.
        expiry = (now_ms + config.turn_user_lifetime_ms) // 1000
        username = f"{expiry}:{user_id}"
        mac = hmac.new(config.turn_shared_secret.encode(), username.encode(), hashlib.sha1)
        password = base64.b64encode(mac.digest()).decode("ascii")
    elif config.turn_username is not None and config.turn_password is not None:
        username, password = config.turn_username, config.turn_password
    else:
        return {}
    return {"username": username, "password": password, "ttl": lifetime_s,
            "uris": list(config.turn_uris)}
