"""Device keys: upload, query, claim, and who changed keys (the device_lists stream).

For the sync engineer: ``sync_key_counts`` (one-time key counts and unused fallback types),
``current_device_list_position`` and ``changed_users`` (the users a client must re-query,
filtered by the set of users it cares about; /sync and /keys/changes, which lives beside
/sync in services/sync/device_lists.py, build on it). For the federation engineer:
``set_remote`` routes queries and claims for remote users.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection
from typing import Any

from federation.identifiers import InvalidIdentifier, get_domain, is_valid_user_id
from homeserver.clock import Clock
from homeserver.http.errors import Codes, MatrixError
from homeserver.services.e2ee.validation import (
    bad_json,
    check_key_value,
    check_public_key,
    check_signatures_shape,
    invalid,
    is_algorithm,
    signature_ok,
    split_key_id,
)
from homeserver.storage.e2ee import (
    DeviceGone,
    DeviceKeysConflict,
    E2eKeyStore,
    NewKey,
    OneTimeKeyConflict,
    TooManyKeys,
)

logger = logging.getLogger(__name__)
JsonDict = dict[str, Any]

# Above what well-behaved clients keep on the server (rust-sdk and nio aim for 50), so only a
# runaway client is refused.
MAX_ONE_TIME_KEYS_PER_ALGORITHM = 500
MAX_KEYS_PER_UPLOAD = 1000
MAX_QUERY_USERS = 1000

# users sharing a room with the given user (the rooms engineer provides it)
# (server name, the request body for that server) -> that server's answer
RemoteCall = Callable[[str, JsonDict], Awaitable[JsonDict]]


class KeyService:
    def __init__(self, store: E2eKeyStore, server_name: str, clock: Clock) -> None:
        self.store = store
        self.server_name = server_name
        self.clock = clock
        self._remote_query: RemoteCall | None = None
        self._remote_claim: RemoteCall | None = None

    # -- hooks -----------------------------------------------------------------------------

    def set_remote(self, query: RemoteCall, claim: RemoteCall) -> None:
        """Federation: ask a remote server for device keys (/user/keys/query) and one-time
        keys (/user/keys/claim). Until this is set, remote servers are reported in
        ``failures``."""
        self._remote_query = query
        self._remote_claim = claim

    def is_mine(self, user_id: str) -> bool:
        try:
            return get_domain(user_id) == self.server_name
        except InvalidIdentifier:
            return False

    # -- upload ----------------------------------------------------------------------------

    async def upload(self, user_id: str, device_id: str, body: JsonDict) -> JsonDict:
        device_keys = body.get("device_keys")
        if device_keys is not None:
            device_keys = self._check_device_keys(user_id, device_id, device_keys)
        signing_key = None
        if device_keys is not None:
            signing_key = device_keys["keys"][f"ed25519:{device_id}"]
        one_time = self._parse_keys(body, "one_time_keys")
        fallback = self._parse_keys(body, "fallback_keys")
        if len(fallback) != len({k.algorithm for k in fallback}):
            raise invalid("fallback_keys: at most one key per algorithm")
        if one_time or fallback:
            if signing_key is None:
                stored = await self.store.get_device_keys_json(user_id, device_id)
                if stored is not None:
                    signing_key = stored["keys"][f"ed25519:{device_id}"]
            for key in [*one_time, *fallback]:
                self._check_key_signature(user_id, device_id, key, signing_key)
        try:
            counts = await self.store.upload(
                user_id, device_id, device_keys, one_time, fallback, self.clock.time_ms(),
                MAX_ONE_TIME_KEYS_PER_ALGORITHM,
            )
        except DeviceKeysConflict:
            raise invalid(
                "This device already has different identity keys; a new identity needs a new"
                " device (log in again)"
            ) from None
        except OneTimeKeyConflict as e:
            raise invalid(
                f"One-time key {e.key_id} already exists with different content"
            ) from None
        except TooManyKeys as e:
            raise MatrixError(
                400, Codes.TOO_LARGE,
                f"Uploading these keys would leave the device holding {e.total}"
                f" {e.algorithm} one-time keys, over the limit of {e.limit}",
            ) from None
        except DeviceGone:
            raise MatrixError(404, Codes.NOT_FOUND, "This device no longer exists") from None
        return {"one_time_key_counts": counts}

    def _check_device_keys(self, user_id: str, device_id: str, device_keys: Any) -> JsonDict:
        if not isinstance(device_keys, dict):
            raise bad_json("'device_keys' must be an object")
        if device_keys.get("user_id") != user_id:
            raise bad_json("'device_keys.user_id' does not match the authenticated user")
        if device_keys.get("device_id") != device_id:
            raise bad_json("'device_keys.device_id' does not match the authenticated device")
        algorithms = device_keys.get("algorithms")
        if (
            not isinstance(algorithms, list)
            or not 1 <= len(algorithms) <= 100
            or not all(is_algorithm(a) for a in algorithms)
        ):
            raise invalid("'device_keys.algorithms' must be a list of algorithm names")
        keys = device_keys.get("keys")
        if not isinstance(keys, dict) or not 1 <= len(keys) <= 100:
            raise bad_json("'device_keys.keys' must be an object of keys")
        for key_id, value in keys.items():
            algorithm, name = split_key_id(key_id, "device_keys.keys")
            if name != device_id:
                raise invalid(f"device key {key_id!r} must be named <algorithm>:{device_id}")
            check_key_value(algorithm, value, f"device key {key_id}")
        ed_id = f"ed25519:{device_id}"
        if ed_id not in keys:
            raise invalid(f"'device_keys.keys' must include the device's {ed_id} key")
        check_public_key(keys[ed_id], f"device key {ed_id}")
        check_signatures_shape(device_keys, "device_keys")
        if not signature_ok(device_keys, user_id, ed_id, keys[ed_id]):
            raise invalid(f"device_keys must be signed by the device's own key {ed_id}")
        return {k: v for k, v in device_keys.items() if k != "unsigned"}

    def _parse_keys(self, body: JsonDict, field: str) -> list[NewKey]:
        raw = body.get(field)
        if raw is None:
            return []
        if not isinstance(raw, dict):
            raise bad_json(f"'{field}' must be an object")
        if len(raw) > MAX_KEYS_PER_UPLOAD:
            raise invalid(f"'{field}': at most {MAX_KEYS_PER_UPLOAD} keys per upload")
        keys = []
        for full_id, value in raw.items():
            algorithm, key_id = split_key_id(full_id, field)
            if isinstance(value, dict):
                check_key_value(algorithm, value.get("key"), f"{field}.{full_id}.key")
                check_signatures_shape(value, f"{field}.{full_id}")
                if "fallback" in value and not isinstance(value["fallback"], bool):
                    raise bad_json(f"{field}.{full_id}.fallback must be true or false")
            elif isinstance(value, str):
                if algorithm.startswith("signed_"):
                    raise invalid(f"{field}.{full_id}: a {algorithm} key must be a signed object")
                check_key_value(algorithm, value, f"{field}.{full_id}")
            else:
                raise bad_json(f"{field}.{full_id} must be a key string or a signed key object")
            keys.append(NewKey(algorithm, key_id, value))
        return keys

    @staticmethod
    def _check_key_signature(
        user_id: str, device_id: str, key: NewKey, signing_key: str | None
    ) -> None:
        if not isinstance(key.key, dict):
            return  # an unsigned algorithm (plain curve25519)
        if signing_key is None:
            raise invalid(
                "Upload the device's identity keys (device_keys) before or with signed keys"
            )
        ed_id = f"ed25519:{device_id}"
        if not signature_ok(key.key, user_id, ed_id, signing_key):
            raise invalid(f"Key {key.full_id} must be signed by the device's key {ed_id}")

    # -- query -----------------------------------------------------------------------------

    async def query(self, requester: str, body: JsonDict) -> JsonDict:
        wanted = body.get("device_keys")
        if not isinstance(wanted, dict):
            raise bad_json("'device_keys' must be an object of user IDs to device ID lists")
        if len(wanted) > MAX_QUERY_USERS:
            raise invalid(f"At most {MAX_QUERY_USERS} users per query")
        local: dict[str, list[str]] = {}
        remote: dict[str, dict[str, list[str]]] = {}
        for user_id, device_ids in wanted.items():
            if device_ids is None:
                device_ids = []
            if not isinstance(device_ids, list) or not all(
                isinstance(d, str) for d in device_ids
            ):
                raise bad_json("'device_keys' values must be lists of device IDs")
            if not is_valid_user_id(user_id):
                continue  # unknown users are simply absent from the result
            if self.is_mine(user_id):
                local[user_id] = device_ids
            else:
                remote.setdefault(get_domain(user_id), {})[user_id] = device_ids
        result: JsonDict = {
            "device_keys": await self.store.query_devices(local),
            "failures": {},
            "master_keys": {},
            "self_signing_keys": {},
            "user_signing_keys": {},
        }
        cross = await self.store.get_cross_signing_keys(list(local), viewer=requester)
        for user_id, types in cross.items():
            for key_type, key in types.items():
                result[f"{key_type}_keys"][user_id] = key
        for server, query in sorted(remote.items()):
            if self._remote_query is None:
                result["failures"][server] = _no_federation()
                continue
            try:
                answer = await self._remote_query(server, {"device_keys": query})
            except Exception as e:  # an unreachable server is a failure, not an error
                logger.info("key query to %s failed: %s", server, e)
                result["failures"][server] = {"status": 503, "message": str(e)}
                continue
            for field in ("device_keys", "master_keys", "self_signing_keys"):
                part = answer.get(field)
                if isinstance(part, dict):
                    result[field].update(
                        {u: v for u, v in part.items() if u in query}
                    )
        return result

    # -- claim -----------------------------------------------------------------------------

    async def claim(self, body: JsonDict) -> JsonDict:
        wanted = body.get("one_time_keys")
        if not isinstance(wanted, dict):
            raise bad_json("'one_time_keys' must map user IDs to device IDs to algorithms")
        local: list[tuple[str, str, str]] = []
        remote: dict[str, dict[str, dict[str, str]]] = {}
        for user_id, devices in wanted.items():
            if not isinstance(devices, dict) or not all(
                isinstance(a, str) for a in devices.values()
            ):
                raise bad_json("'one_time_keys' values must map device IDs to algorithms")
            for algorithm in devices.values():
                if not is_algorithm(algorithm):
                    raise invalid(f"Invalid key algorithm {algorithm[:100]!r}")
            if not is_valid_user_id(user_id):
                continue
            if self.is_mine(user_id):
                local.extend((user_id, d, a) for d, a in devices.items())
            else:
                remote.setdefault(get_domain(user_id), {})[user_id] = devices
        if len(local) > MAX_KEYS_PER_UPLOAD:
            raise invalid(f"At most {MAX_KEYS_PER_UPLOAD} keys per claim")
        claimed = await self.store.claim(local)
        failures: JsonDict = {}
        for server, query in sorted(remote.items()):
            if self._remote_claim is None:
                failures[server] = _no_federation()
                continue
            try:
                answer = await self._remote_claim(server, {"one_time_keys": query})
            except Exception as e:
                logger.info("key claim to %s failed: %s", server, e)
                failures[server] = {"status": 503, "message": str(e)}
                continue
            part = answer.get("one_time_keys")
            if isinstance(part, dict):
                claimed.update({u: v for u, v in part.items() if u in query})
        return {"one_time_keys": claimed, "failures": failures}

    async def device_id_is_taken_by_a_key(self, user_id: str, device_id: str) -> bool:
        """Device IDs and cross-signing public keys share one namespace (spec): login should
        refuse a requested device ID for which this is true."""
        return await self.store.is_cross_signing_key(user_id, device_id)

    # -- for sync --------------------------------------------------------------------------

    async def one_time_key_counts(self, user_id: str, device_id: str) -> dict[str, int]:
        """``device_one_time_keys_count`` of /sync."""
        return await self.store.one_time_key_counts(user_id, device_id)

    async def unused_fallback_key_types(self, user_id: str, device_id: str) -> list[str]:
        """``device_unused_fallback_key_types`` of /sync."""
        return await self.store.unused_fallback_key_types(user_id, device_id)

    async def sync_key_counts(self, user_id: str, device_id: str
                              ) -> tuple[dict[str, int], list[str]]:
        """Both of the above, read together (one transaction per /sync response)."""
        return await self.store.sync_key_counts(user_id, device_id)

    async def current_device_list_position(self) -> int:
        return await self.store.current_device_list_position()

    async def changed_users(
        self, user_id: str, since: int, interesting: Collection[str], to: int | None = None
    ) -> set[str]:
        """Users in ``interesting`` (plus ``user_id``) whose devices or cross-signing keys
        changed after position ``since`` (up to ``to``; None: now), plus users whose change
        only ``user_id`` may see (their master key signed by user_id's user-signing key).
        ``device_lists.changed`` of /sync is this, with ``interesting`` the users sharing a
        room with ``user_id``; users newly sharing a room go there too (sync knows those)."""
        return await self.store.changed_users(user_id, since, to, interesting)


def _no_federation() -> JsonDict:
    return {
        "status": 503,
        "message": "This server cannot reach other servers yet (federation is not enabled);"
        " keys of remote users are unavailable",
    }
