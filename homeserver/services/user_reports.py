"""Reporting users to the server's operators (``POST /users/{userId}/report``, spec v1.13).

As in Synapse, a report of a local user who does not exist is answered like any other but
not stored, so the endpoint cannot be used to find out which accounts exist. Reports of
users of other servers are kept (unlike Synapse): a remote spammer is exactly what a local
admin wants to hear about, to block the server or ban the user from local rooms."""

from __future__ import annotations

from typing import Any

from federation.identifiers import get_domain, is_valid_user_id
from homeserver.clock import Clock
from homeserver.config.model import RateLimit
from homeserver.http.errors import Codes, MatrixError
from homeserver.services.ratelimit import Ratelimiter
from homeserver.storage.user_reports import UserReport, UserReportStore
from homeserver.storage.users import UserStore

MAX_REASON = 1000  # characters, as Synapse
# Reports per user: a burst of 5, then one every 10 seconds (Synapse's rc_reports is alike).
REPORT_RATE = RateLimit(0.1, 5)


class UserReportService:
    def __init__(self, *, users: UserStore, store: UserReportStore, clock: Clock,
                 server_name: str, ratelimit: bool) -> None:
        self.users = users
        self.store = store
        self.clock = clock
        self.server_name = server_name
        self.limiter = Ratelimiter(REPORT_RATE, ratelimit, clock)

    async def report(self, reporter: str, target: str, reason: Any) -> None:
        if not isinstance(reason, str):
            raise MatrixError(400, Codes.BAD_JSON, "reason must be a string")
        if len(reason) > MAX_REASON:
            raise MatrixError(400, Codes.BAD_JSON,
                              f"reason must be at most {MAX_REASON} characters")
        if not is_valid_user_id(target):
            raise MatrixError(400, Codes.INVALID_PARAM, "Invalid user ID")
        self.limiter.check(reporter)
        if get_domain(target) == self.server_name and await self.users.get(target) is None:
            return
        await self.store.add_report(now=self.clock.time_ms(), target_user_id=target,
                                    user_id=reporter, reason=reason)

    async def list_reports(
        self, *, offset: int, limit: int, newest_first: bool, target_user_id: str | None,
        user_id: str | None,
    ) -> tuple[list[dict[str, Any]], int]:
        reports, total = await self.store.reports(
            offset=offset, limit=limit, newest_first=newest_first,
            target_user_id=target_user_id, user_id=user_id)
        return [report_json(r) for r in reports], total

    async def get(self, report_id: int) -> dict[str, Any]:
        found = await self.store.get_report(report_id)
        if found is None:
            raise MatrixError(404, Codes.NOT_FOUND, "User report not found")
        return report_json(found)

    async def delete(self, report_id: int) -> None:
        if not await self.store.delete_report(report_id):
            raise MatrixError(404, Codes.NOT_FOUND, "User report not found")


def report_json(r: UserReport) -> dict[str, Any]:
    return {"id": r.id, "received_ts": r.received_ts, "target_user_id": r.target_user_id,
            "user_id": r.user_id, "reason": r.reason}
