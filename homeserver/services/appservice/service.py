"""The application services of this server (``Services.appservices``): who owns a token, a
user or an alias; their senders; queries for unknown users and aliases; third-party lookups;
pings; room lists per third-party network."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from homeserver.http.errors import Codes, MatrixError
from homeserver.services.appservice.client import AppServiceClient, AppServiceUnreachable
from homeserver.services.appservice.registration import AppService
from homeserver.services.appservice.sender import AppServiceSender, Serializer
from homeserver.storage.appservice import AppServiceStore
from homeserver.storage.engine import StreamNote
from homeserver.storage.events import Alias, EventStore, StoredEvent
from homeserver.storage.users import UserExists, UserStore

logger = logging.getLogger(__name__)

JsonDict = dict[str, Any]
# Streams whose new rows may be ephemeral data or to-device messages for a service.
_EPHEMERAL_STREAMS = frozenset({"receipts", "presence", "to_device"})


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class AppServices:
    def __init__(
        self,
        services: Sequence[AppService],
        *,
        store: AppServiceStore,
        users: UserStore,
        events: EventStore,
        client: AppServiceClient,
        time_ms: Any,
        reactor: Any,
    ) -> None:
        self.all = list(services)
        self.store = store
        self.users = users
        self.events = events
        self.client = client
        self.time_ms = time_ms
        self.reactor = reactor
        # Looked up by digest, as access tokens are: the comparison is on a hash the caller
        # cannot steer.
        self._by_token = {_digest(s.as_token): s for s in self.all}
        self._by_id = {s.id: s for s in self.all}
        self.senders: dict[str, AppServiceSender] = {}

    # -- lookups ------------------------------------------------------------------------------
    def by_token(self, token: str) -> AppService | None:
        return self._by_token.get(_digest(token)) if self._by_token else None

    def by_id(self, as_id: str) -> AppService | None:
        return self._by_id.get(as_id)

    def exclusive_user_owner(self, user_id: str) -> AppService | None:
        return next((s for s in self.all if s.is_exclusive_user(user_id)), None)

    def exclusive_alias_owner(self, alias: str) -> AppService | None:
        return next((s for s in self.all if s.is_exclusive_alias(alias)), None)

    def check_user_allowed(self, user_id: str, acting: AppService | None) -> None:
        """400 M_EXCLUSIVE when ``user_id`` is another party's exclusive namespace."""
        owner = self.exclusive_user_owner(user_id)
        if owner is not None and owner is not acting:
            raise MatrixError(400, Codes.EXCLUSIVE,
                              "This user ID is reserved by an application service")

    def check_alias_allowed(self, alias: str, acting: AppService | None) -> None:
        """400 M_EXCLUSIVE for an alias in another party's exclusive namespace, or, for an
        application service, outside its own alias namespaces (spec, as Synapse)."""
        if acting is not None and not acting.is_interested_in_alias(alias):
            raise MatrixError(400, Codes.EXCLUSIVE,
                              "This alias is outside the application service's namespace")
        owner = self.exclusive_alias_owner(alias)
        if owner is not None and owner is not acting:
            raise MatrixError(400, Codes.EXCLUSIVE,
                              "This alias is reserved by an application service")

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self, serialize: Serializer, typing_users: Any) -> None:
        """Create each service's sender user, then start delivery to those with a URL."""
        for svc in self.all:
            if not await self.users.exists(svc.sender):
                try:
                    await self.users.create(svc.sender, None, admin=False,
                                            created_ts=self.time_ms())
                except UserExists:
                    pass
                logger.info("application service %s: created its user %s", svc.id, svc.sender)
            if svc.url is None:
                continue
            sender = AppServiceSender(
                svc, store=self.store, client=self.client, serialize=serialize,
                typing_users=typing_users, time_ms=self.time_ms, reactor=self.reactor,
            )
            await sender.start()
            self.senders[svc.id] = sender
        if self.all:
            logger.info("application services: %s", ", ".join(s.id for s in self.all))

    async def stop(self) -> None:
        for sender in self.senders.values():
            await sender.stop()
        self.senders.clear()
        await self.client.close()

    # -- hooks that wake the senders ------------------------------------------------------------
    def on_persisted(self, room_id: str, events: list[StoredEvent]) -> None:
        for sender in self.senders.values():
            sender.wake()

    def on_commit(self, notes: list[StreamNote]) -> None:
        if any(n.stream in _EPHEMERAL_STREAMS for n in notes):
            for sender in self.senders.values():
                if sender.svc.receive_ephemeral or sender.svc.receive_to_device:
                    sender.wake()

    def service_is_back(self, svc: AppService) -> None:
        """Called for every request a service makes: retry its delivery now if it was
        backing off (a restarted bridge need not wait out the backoff)."""
        sender = self.senders.get(svc.id)
        if sender is not None:
            sender.retry_now()

    def on_typing(self, room_id: str, user_id: str, typing: bool) -> None:
        for sender in self.senders.values():
            sender.typing_changed(room_id)

    # -- queries --------------------------------------------------------------------------------
    async def query_user(self, user_id: str) -> bool:
        """Ask the services whose namespace covers an unknown local user to create it; True
        if it exists afterwards."""
        for svc in self.all:
            if svc.url is not None and svc.may_act_as(user_id) and user_id != svc.sender:
                if await self.client.query_user(svc, user_id) and await self.users.exists(
                    user_id
                ):
                    return True
        return False

    async def ensure_user(self, user_id: str) -> bool:
        """Whether the local ``user_id`` exists, asking the services first when it does not
        and it is in one of their namespaces."""
        if await self.users.exists(user_id):
            return True
        return bool(self.all) and await self.query_user(user_id)

    async def get_alias(self, alias: str) -> Alias | None:
        """The alias's row, asking the services whose namespace covers an unknown one."""
        found = await self.events.get_alias(alias)
        if found is None and self.all and await self.query_alias(alias):
            found = await self.events.get_alias(alias)
        return found

    async def query_alias(self, alias: str) -> bool:
        """Ask the services whose namespace covers an unknown alias to create it; True if one
        said it did (the caller looks the alias up again)."""
        for svc in self.all:
            if svc.url is not None and svc.is_interested_in_alias(alias):
                if await self.client.query_alias(svc, alias):
                    return True
        return False

    # -- third-party networks ---------------------------------------------------------------------
    def protocol_names(self) -> list[str]:
        return sorted({p for s in self.all for p in s.protocols})

    async def protocol(self, protocol: str) -> JsonDict | None:
        """The protocol's metadata, with the ``instances`` of every service that has it
        (each with an ``instance_id`` of ``<service>|<network>``)."""
        found: JsonDict | None = None
        instances: list[JsonDict] = []
        for svc in self.all:
            if protocol not in svc.protocols or svc.url is None:
                continue
            info = await self.client.get_json(svc, f"/thirdparty/protocol/{quote(protocol)}")
            if not isinstance(info, dict):
                continue
            if found is None:
                found = dict(info)
            for inst in info.get("instances") or []:
                if isinstance(inst, dict) and isinstance(inst.get("network_id"), str):
                    inst = dict(inst)
                    inst["instance_id"] = f"{svc.id}|{inst['network_id']}"
                    inst.setdefault("fields", {})
                    instances.append(inst)
        if found is None:
            return None
        found["instances"] = instances
        return found

    async def thirdparty_lookup(
        self, kind: str, protocol: str | None, query: list[tuple[str, str]]
    ) -> list[Any]:
        """``kind`` is ``location`` or ``user``: with a protocol, a search by its fields over
        the services that have it; without, a reverse lookup (alias or userid) over all."""
        path = f"/thirdparty/{kind}" + (f"/{quote(protocol)}" if protocol else "")
        results: list[Any] = []
        for svc in self.all:
            if svc.url is None or (protocol is not None and protocol not in svc.protocols):
                continue
            if protocol is None and not svc.protocols:
                continue
            found = await self.client.get_json(svc, path, query)
            if isinstance(found, list):
                results.extend(x for x in found if isinstance(x, dict))
        return results

    async def ping(self, svc: AppService, transaction_id: str | None) -> int:
        """POST /_matrix/app/v1/ping; the time it took in ms, or the spec's 502/504 errors."""
        if svc.url is None:
            raise MatrixError(400, "M_URL_NOT_SET", "The application service has no url")
        body: JsonDict = {}
        if transaction_id is not None:
            body["transaction_id"] = transaction_id
        start = time.monotonic()
        try:
            status, raw = await self.client.request(svc, "POST", "/_matrix/app/v1/ping",
                                                    body=body, timeout_s=30)
        except AppServiceUnreachable as e:
            if "no answer within" in str(e):
                raise MatrixError(504, "M_CONNECTION_TIMEOUT",
                                  "The application service did not answer in time") from None
            raise MatrixError(502, "M_CONNECTION_FAILED",
                              "Could not reach the application service") from None
        if not 200 <= status < 300:
            error = MatrixError(502, "M_BAD_STATUS",
                                f"The application service answered HTTP {status}",
                                body=raw.decode("utf-8", "replace")[:1000])
            error.extra["status"] = status  # a keyword MatrixError takes for itself
            raise error
        return int((time.monotonic() - start) * 1000)
