"""End-to-end encryption support: the server stores and hands out keys and device messages;
clients do all the cryptography.

- ``keys`` — device keys, one-time and fallback keys, /keys/query and /keys/claim, and the
  device_lists stream (who changed keys) that /sync and /keys/changes read.
- ``cross_signing`` — master, self-signing and user-signing keys and their signatures.
- ``to_device`` — send-to-device messages: an inbox per device, an outbox per remote server.
- ``backup`` — server-side key backups.
"""

from __future__ import annotations

from dataclasses import dataclass

from homeserver.clock import Clock
from homeserver.config import Config
from homeserver.services.e2ee.backup import KeyBackupService
from homeserver.services.e2ee.cross_signing import CrossSigningService
from homeserver.services.e2ee.keys import KeyService
from homeserver.services.e2ee.to_device import ToDeviceService
from homeserver.storage import Database
from homeserver.storage.e2ee import E2eKeyStore
from homeserver.storage.key_backup import KeyBackupStore
from homeserver.storage.to_device import ToDeviceStore


@dataclass
class E2eeServices:
    keys: KeyService
    cross_signing: CrossSigningService
    to_device: ToDeviceService
    backup: KeyBackupService

    async def on_deactivate(self, user_id: str) -> None:
        """A deactivated account keeps no keys: device keys, cross-signing keys and the
        signatures they made, key backups. (Its devices, with their one-time keys and
        to-device inboxes, are deleted with the account's devices.)"""
        await self.keys.store.delete_all_for_user(user_id)
        await self.backup.on_deactivate(user_id)


def build_e2ee(config: Config, db: Database, clock: Clock) -> E2eeServices:
    keys_store = E2eKeyStore(db)
    return E2eeServices(
        keys=KeyService(keys_store, config.server_name, clock),
        cross_signing=CrossSigningService(keys_store, clock),
        to_device=ToDeviceService(
            ToDeviceStore(db, config.max_to_device_messages_per_device),
            config.server_name, clock),
        backup=KeyBackupService(KeyBackupStore(db)),
    )
