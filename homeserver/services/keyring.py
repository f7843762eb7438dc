"""Signing keys: our own published document, and other servers' keys fetched from them (or a
notary when they cannot be reached), cached in the database with their validity.

Fetches of one server's keys are single-flight: many requests needing the same keys at once
cause one fetch. A server that could not be reached is not asked again for a minute.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from typing import Any

from twisted.internet import defer

from federation.canonical_json import encode_canonical_json
from federation.keys import SigningKey, decode_verify_key, key_id_of, verify_key_of
from federation.server_keys import (
    DEFAULT_OWN_KEYS_VALIDITY_MS,
    KeyResponseError,
    OldVerifyKey,
    build_server_keys_response,
    cached_response_is_fresh,
    notary_sign,
    parse_notary_response,
    parse_server_keys_response,
)
from federation.signing import KeyLookup, ServerKey
from federation.transport.client import FederationClient, FederationClientError
from homeserver.clock import Clock
from homeserver.config import Config
from homeserver.storage.server_keys import ServerKeyStore, StoredKey

logger = logging.getLogger(__name__)

FAILED_FETCH_BACKOFF_MS = 60_000


class Keyring:
    def __init__(
        self,
        config: Config,
        store: ServerKeyStore,
        client: FederationClient,
        signing_key: SigningKey,
        clock: Clock,
    ) -> None:
        self.config = config
        self.server_name = config.server_name
        self.store = store
        self.client = client
        self.signing_key = signing_key
        self.clock = clock
        self._own: dict[str, Any] | None = None
        self._in_flight: dict[str, list[defer.Deferred[None]]] = {}
        self._failed_at: dict[str, int] = {}
        self._old_keys = {
            key_id: OldVerifyKey(decode_verify_key(key_id, k.verify_key), k.expired_ts)
            for key_id, k in config.federation.old_signing_keys.items()
        }

    # -- our own keys -----------------------------------------------------------------------
    def own_document(self) -> dict[str, Any]:
        """Our signed key document, re-made once half of its validity has passed."""
        now = self.clock.time_ms()
        half_life = DEFAULT_OWN_KEYS_VALIDITY_MS // 2
        if self._own is None or now > self._own["valid_until_ts"] - half_life:
            self._own = build_server_keys_response(
                self.server_name,
                [self.signing_key],
                now + DEFAULT_OWN_KEYS_VALIDITY_MS,
                self._old_keys,
            )
        return self._own

    def _own_keys(self) -> dict[str, ServerKey]:
        keys = {key_id_of(self.signing_key): ServerKey(verify_key_of(self.signing_key), None)}
        for key_id, old in self._old_keys.items():
            keys[key_id] = ServerKey(old.verify_key, old.expired_ts)
        return keys

    # -- other servers' keys -------------------------------------------------------------------
    async def get_keys(
        self, server_name: str, key_ids: Collection[str], valid_at_ts: int | None = None
    ) -> dict[str, ServerKey]:
        """Keys of ``server_name``, fetching when any requested key is unknown or expired at
        ``valid_at_ts``. Returns what is known; callers check signatures with it."""
        if server_name == self.server_name:
            return self._own_keys()
        stored = await self.store.get(server_name)
        if not _covers({k: v.key for k, v in stored.items()}, key_ids, valid_at_ts):
            await self._fetch(server_name, key_ids, valid_at_ts)
            stored = await self.store.get(server_name)
        return {key_id: s.key for key_id, s in stored.items()}

    async def lookup_for(
        self, wanted: dict[str, Collection[str]], valid_at_ts: int | None = None
    ) -> KeyLookup:
        """A synchronous KeyLookup over the keys of several servers, fetched first."""
        found: dict[tuple[str, str], ServerKey] = {}
        for server_name, key_ids in wanted.items():
            for key_id, key in (await self.get_keys(server_name, key_ids, valid_at_ts)).items():
                found[(server_name, key_id)] = key

        def lookup(server_name: str, key_id: str) -> ServerKey | None:
            return found.get((server_name, key_id))

        return lookup

    async def _fetch(
        self, server_name: str, key_ids: Collection[str], valid_at_ts: int | None
    ) -> None:
        now = self.clock.time_ms()
        failed_at = self._failed_at.get(server_name)
        if failed_at is not None and now - failed_at < FAILED_FETCH_BACKOFF_MS:
            return
        waiters = self._in_flight.get(server_name)
        if waiters is not None:
            # A fetch of these keys is under way: wait for it instead of starting another.
            waiter: defer.Deferred[None] = defer.Deferred()
            waiters.append(waiter)
            await waiter
            return
        self._in_flight[server_name] = []
        try:
            await self._fetch_once(server_name, key_ids, valid_at_ts)
        finally:
            for waiter in self._in_flight.pop(server_name):
                waiter.callback(None)

    async def _fetch_once(
        self, server_name: str, key_ids: Collection[str], valid_at_ts: int | None
    ) -> None:
        now = self.clock.time_ms()
        try:
            response = await self.client.get_json(
                server_name, "/_matrix/key/v2/server", timeout_s=15
            )
            doc = parse_server_keys_response(response, now_ms=now,
                                             expected_server_name=server_name)
            await self.store.store(doc, now, server_name)
            if _covers(doc.all_keys(), key_ids, valid_at_ts):
                return
        except (FederationClientError, KeyResponseError) as e:
            logger.info("could not fetch keys of %s directly: %s", server_name, e)
        for notary in self.config.federation.trusted_key_servers:
            if await self._fetch_from_notary(notary.server_name, notary.verify_keys,
                                             server_name, key_ids, valid_at_ts):
                return
        self._failed_at[server_name] = now

    async def _fetch_from_notary(
        self,
        notary: str,
        pinned: dict[str, str],
        server_name: str,
        key_ids: Collection[str],
        valid_at_ts: int | None,
    ) -> bool:
        now = self.clock.time_ms()
        criteria = {k: {"minimum_valid_until_ts": valid_at_ts or now} for k in key_ids}
        try:
            response = await self.client.post_json(
                notary, "/_matrix/key/v2/query", {"server_keys": {server_name: criteria}},
                timeout_s=15,
            )
            notary_keys: KeyLookup | None = None
            if pinned:
                keys = {k: decode_verify_key(k, v) for k, v in pinned.items()}

                def notary_keys(name: str, key_id: str) -> Any:
                    return keys.get(key_id) if name == notary else None

            result = parse_notary_response(response, notary_name=notary,
                                           notary_keys=notary_keys, now_ms=now,
                                           requested={server_name})
        except (FederationClientError, KeyResponseError) as e:
            logger.info("notary %s could not give the keys of %s: %s", notary, server_name, e)
            return False
        for doc in result.keys:
            await self.store.store(doc, now, notary)
        return any(_covers(doc.all_keys(), key_ids, valid_at_ts) for doc in result.keys)

    # -- acting as a notary ----------------------------------------------------------------------
    async def notary_query(
        self, criteria: dict[str, dict[str, int | None]], minimum: int | None = None
    ) -> dict[str, Any]:
        """Our answer to ``/_matrix/key/v2/query``: each server's documents, countersigned.
        An empty key map asks for every key; ``minimum`` applies to all servers."""
        now = self.clock.time_ms()
        documents: list[dict[str, Any]] = []
        for server_name, wanted in criteria.items():
            if server_name == self.server_name:
                documents.append(self.own_document())
                continue
            wanted_min = max((m for m in wanted.values() if m is not None), default=minimum)
            stored = await self.store.get(server_name)
            if not stored or not _fresh(stored, wanted, now, wanted_min):
                await self._fetch(server_name, list(wanted), wanted_min or now)
                stored = await self.store.get(server_name)
            unique: dict[bytes, dict[str, Any]] = {}
            for s in stored.values():
                listed = set(s.document.get("verify_keys", {})) | set(
                    s.document.get("old_verify_keys", {})
                )
                if wanted and not listed & set(wanted):
                    continue
                unique[encode_canonical_json(s.document)] = s.document
            documents.extend(
                notary_sign(d, [self.signing_key], self.server_name) for d in unique.values()
            )
        return {"server_keys": documents}


def _covers(
    keys: Mapping[str, ServerKey], key_ids: Collection[str], valid_at_ts: int | None
) -> bool:
    """Every requested key is known and (when asked) still valid at ``valid_at_ts``."""
    for key_id in key_ids:
        k = keys.get(key_id)
        if k is None:
            return False
        until = k.valid_until_ts
        if valid_at_ts is not None and until is not None and until < valid_at_ts:
            return False
    return True


def _fresh(
    stored: dict[str, StoredKey], wanted: dict[str, int | None], now: int, minimum: int | None
) -> bool:
    relevant = [stored[k] for k in wanted if k in stored] if wanted else list(stored.values())
    if wanted and len(relevant) < len(wanted):
        return False
    return all(
        cached_response_is_fresh(int(s.document.get("valid_until_ts", 0)), s.fetched_ts, now,
                                 minimum)
        for s in relevant
    )

