"""Background admin tasks (room deletion, history purges): each has an ID the operator polls
and a status kept in the database, so it survives the request that started it."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

from homeserver.clock import Clock
from homeserver.http.errors import MatrixError
from homeserver.storage.admin import AdminStore

logger = logging.getLogger(__name__)

TaskBody = Callable[[], Awaitable[dict[str, Any]]]


def _ignore_cancel(failure: Failure) -> None:
    failure.trap(defer.CancelledError)


class TaskRunner:
    def __init__(self, store: AdminStore, clock: Clock) -> None:
        self.store = store
        self.clock = clock
        self.running: dict[str, defer.Deferred[None]] = {}
        self._waiters: dict[str, list[defer.Deferred[None]]] = {}

    async def start(self) -> None:
        failed = await self.store.fail_interrupted_tasks(self.clock.time_ms())
        if failed:
            logger.warning("%d admin tasks were interrupted by the last shutdown", failed)

    async def submit(self, kind: str, room_id: str, body: TaskBody) -> str:
        """Record a task and run it in the background; returns its ID at once."""
        task_id = secrets.token_urlsafe(12)
        await self.store.add_task(task_id, kind, room_id, self.clock.time_ms())
        self._waiters[task_id] = []
        d = defer.ensureDeferred(self._run(task_id, kind, room_id, body))
        self.running[task_id] = d
        d.addErrback(_ignore_cancel)
        return task_id

    async def wait(self, task_id: str) -> None:
        """Until the task is finished (at once if it is not running)."""
        waiters = self._waiters.get(task_id)
        if waiters is not None:
            d: defer.Deferred[None] = defer.Deferred()
            waiters.append(d)
            await d

    async def _run(self, task_id: str, kind: str, room_id: str, body: TaskBody) -> None:
        try:
            await self._run_body(task_id, kind, room_id, body)
        finally:
            self.running.pop(task_id, None)
            for d in self._waiters.pop(task_id, []):
                d.callback(None)

    async def _run_body(self, task_id: str, kind: str, room_id: str, body: TaskBody) -> None:
        await self.store.update_task(task_id, "active", self.clock.time_ms())
        try:
            result = await body()
        except defer.CancelledError:
            # Shutting down: the next start marks the task failed.
            raise
        except Exception as e:
            message = e.message if isinstance(e, MatrixError) else f"{type(e).__name__}: {e}"
            if not isinstance(e, MatrixError):
                logger.exception("admin task %s (%s of %s) failed", task_id, kind, room_id)
            await self.store.update_task(task_id, "failed", self.clock.time_ms(), error=message)
            return
        await self.store.update_task(task_id, "complete", self.clock.time_ms(), result=result)
        logger.info("admin task %s (%s of %s) complete: %s", task_id, kind, room_id, result)
