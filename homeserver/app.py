"""Wiring: the validated config becomes a database, services, routes and listeners."""

from __future__ import annotations

import logging
import os
from typing import Any

from twisted.internet import defer, task

from homeserver import metrics, signing_key, tls
from homeserver.api import health as health_api
from homeserver.api import media, versions
from homeserver.api.admin import event_reports as admin_event_reports
from homeserver.api.admin import federation as admin_federation
from homeserver.api.admin import media as admin_media
from homeserver.api.admin import notices as admin_notices
from homeserver.api.admin import registration as admin_registration
from homeserver.api.admin import rooms as admin_rooms
from homeserver.api.admin import users as admin_users
from homeserver.api.client import (
    account_data,
    appservice,
    capabilities,
    devices,
    directory,
    ephemeral,
    hierarchy,
    key_backup,
    keys,
    membership,
    mutual_rooms,
    openid,
    peeking,
    profile,
    push,
    relations,
    room_events,
    room_reports,
    search,
    server_info,
    session,
    tags,
    threepid,
    to_device,
    upgrade,
    user_reports,
)
from homeserver.api.client import sync as sync_api
from homeserver.api.federation import directory as federation_directory
from homeserver.api.federation import extras as federation_extras
from homeserver.api.federation import keys as federation_keys
from homeserver.api.federation import media as federation_media
from homeserver.api.federation import queries as federation_queries
from homeserver.api.federation import rooms as federation_rooms
from homeserver.api.federation import user_keys as federation_user_keys
from homeserver.config import Config
from homeserver.http.router import Router
from homeserver.http.site import HomeserverSite
from homeserver.services.registry import Services, build_services
from homeserver.storage import Database, open_database
from homeserver.storage.schema import migrate

logger = logging.getLogger(__name__)

# How long shutdown waits for in-flight requests before closing their connections.
SHUTDOWN_GRACE_SECONDS = 10.0
# After the last response: how long its bytes get to leave before idle connections are cut.
CLOSE_FLUSH_SECONDS = 2.0


class HomeServer:
    def __init__(self, config: Config, reactor: Any) -> None:
        self.config = config
        self.reactor = reactor
        self.db: Database | None = None
        self.router = Router()
        self.sites: list[HomeserverSite] = []
        self.ports: list[Any] = []
        self.signing_key: Any = None
        self.services: Services | None = None

    async def start(self) -> None:
        config = self.config
        os.makedirs(config.data_dir, exist_ok=True)
        self.signing_key = signing_key.load_or_create(config.signing_key_path)
        if any(listener.tls for listener in config.listeners):
            tls.ensure_certificate(
                config.tls.certificate_path, config.tls.private_key_path, config.server_name
            )
        self.db = open_database(config.database, self.reactor)
        version = await migrate(self.db)
        logger.info("database %s ready at schema version %d", config.database.engine, version)
        self.services = build_services(
            config, self.db, reactor=self.reactor, signing_key=self.signing_key
        )
        self._register_routes(self.services)
        # Everything that reads the database at start runs before the listeners open, so a
        # signal arriving as soon as /health answers cannot interrupt start-up half-way.
        await self.services.federation_sender.start()
        await self.services.federation.catch_up_outbox()
        await self.services.admin.start()
        await self.services.appservices.start(self.services.rooms.serialize,
                                              self.services.typing.typing_users)
        self._listen()
        await self.services.presence.start()
        await self.services.push.start()

    def _is_app_service_token(self, token: str) -> bool:
        return self.services is not None and \
            self.services.appservices.by_token(token) is not None

    def _register_routes(self, services: Services) -> None:
        versions.register(self.router, self.config)
        metrics.register(self.router, services, self.reactor)
        health_api.register(self.router, services, self.reactor)
        for module in (session, appservice, devices, profile, account_data, capabilities,
                       room_events, membership, directory, relations, upgrade,
                       room_reports, admin_event_reports, search, hierarchy,
                       sync_api, ephemeral, tags,
                       push, threepid,
                       keys, to_device, key_backup,
                       admin_registration, federation_keys, federation_queries,
                       federation_rooms, federation_user_keys, federation_media,
                       federation_directory, openid,
                       server_info, mutual_rooms, federation_extras, peeking,
                       user_reports,
                       media, admin_media,
                       admin_users, admin_rooms, admin_federation, admin_notices):
            module.register(self.router, services)

    def _listen(self) -> None:
        for listener in self.config.listeners:
            site = HomeserverSite(
                self.router,
                frozenset(listener.resources),
                self.config.max_json_body_bytes,
                x_forwarded=listener.x_forwarded,
                max_concurrent_per_client=self.config.max_concurrent_requests_per_client,
                concurrency_exempt=self._is_app_service_token,
            )
            if listener.tls:
                ctx = tls.server_context(
                    self.config.tls.certificate_path, self.config.tls.private_key_path
                )
                port = self.reactor.listenSSL(listener.port, site, ctx, interface=listener.bind)
            else:
                port = self.reactor.listenTCP(listener.port, site, interface=listener.bind)
            self.sites.append(site)
            self.ports.append(port)
            scheme = "https" if listener.tls else "http"
            logger.info(
                "listening on %s://%s:%d for %s",
                scheme,
                listener.bind,
                port.getHost().port,
                ", ".join(listener.resources),
            )

    async def shutdown(self) -> None:
        """Stop accepting, let in-flight requests finish (up to a grace period), close the DB."""
        logger.info("shutting down: no longer accepting connections")
        stopping = [p.stopListening() for p in self.ports]
        await defer.gatherResults([d for d in stopping if d is not None])
        if self.services is not None:
            # Long-polling /sync requests answer now instead of holding up the shutdown.
            self.services.sync.shutdown()
            self.services.presence.stop()
            self.services.typing.close()
        waited = 0.0
        while any(site.busy() for site in self.sites) and waited < SHUTDOWN_GRACE_SECONDS:
            await task.deferLater(self.reactor, 0.05, lambda: None)
            waited += 0.05
        flushed = 0.0
        while any(site.unsent_on_idle_connections() for site in self.sites) and \
                flushed < CLOSE_FLUSH_SECONDS:
            await task.deferLater(self.reactor, 0.05, lambda: None)
            flushed += 0.05
        for site in self.sites:
            site.close_idle_connections()
        remaining = sum(len(site.in_flight) for site in self.sites)
        if remaining:
            logger.warning("closing %d requests still in flight after %.0fs", remaining, waited)
        if self.services is not None:
            await self.services.federation_sender.stop()
            await self.services.appservices.stop()
            await self.services.push.stop()
            self.services.admin.stop()
            await self.services.federation_client.close()
        if self.db is not None:
            await self.db.close()
            logger.info("database closed")
