"""What server operators can do through the admin API: manage users and rooms, delete rooms
and purge history in the background, inspect federation destinations, send server notices;
and the retention job, which purges through the same code as the admin API."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from homeserver.services.admin.federation import FederationAdmin
from homeserver.services.admin.rooms import RoomAdmin
from homeserver.services.admin.tasks import TaskRunner
from homeserver.services.admin.users import UserAdmin
from homeserver.storage.admin import AdminStore

if TYPE_CHECKING:
    from homeserver.services.registry import Services
    from homeserver.services.retention import RetentionService
    from homeserver.services.server_notices import ServerNotices


@dataclass
class AdminServices:
    store: AdminStore
    tasks: TaskRunner
    users: UserAdmin
    rooms: RoomAdmin
    federation: FederationAdmin
    notices: ServerNotices
    retention: RetentionService

    async def start(self) -> None:
        await self.tasks.start()
        self.retention.start()

    def stop(self) -> None:
        """Stop the retention job and cancel running tasks (their transactions roll back;
        the next start marks them failed)."""
        self.retention.stop()
        for d in list(self.tasks.running.values()):
            d.cancel()


def build_admin(s: Services, reactor: Any) -> AdminServices:
    from homeserver.services.retention import RetentionService
    from homeserver.services.server_notices import ServerNotices

    store = AdminStore(s.db)
    tasks = TaskRunner(store, s.clock)
    rooms = RoomAdmin(server_name=s.config.server_name, db=s.db, store=store, users=s.users,
                      rooms=s.rooms, pipeline=s.pipeline, tasks=tasks)
    s.rooms.blocked = rooms.is_blocked
    return AdminServices(
        store=store,
        tasks=tasks,
        users=UserAdmin(server_name=s.config.server_name, bcrypt_rounds=s.config.bcrypt_rounds,
                        store=store, users=s.users, devices=s.devices, accounts=s.accounts,
                        profiles=s.profiles, rooms=s.rooms, clock=s.clock),
        rooms=rooms,
        federation=FederationAdmin(s.config, store, s.federation_sender),
        notices=ServerNotices(config=s.config, store=store, users=s.users,
                              accounts=s.accounts, profiles=s.profiles, rooms=s.rooms,
                              account_data=s.account_data),
        retention=RetentionService(config=s.config.retention, db=s.db, rooms=rooms,
                                   clock=s.clock, reactor=reactor),
    )
