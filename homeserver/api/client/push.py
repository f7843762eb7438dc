"""Push over the client API: /pushrules, /pushers, /notifications."""

from __future__ import annotations

from typing import Any

from homeserver.http.errors import Codes, MatrixError
from homeserver.http.request import HomeserverRequest
from homeserver.http.router import JsonResponse, Router
from homeserver.http.validation import query_int
from homeserver.services.push.pushers import validate_pusher_request
from homeserver.services.push.rules import check_kind, check_scope, find_rule, rule_not_found
from homeserver.services.registry import Services

MAX_NOTIFICATIONS = 100


def register(router: Router, s: Services) -> None:
    push = s.push

    # -- /pushrules --------------------------------------------------------------------------------
    async def get_all(request: HomeserverRequest) -> JsonResponse:
        requester = await s.auth.authenticate(request)
        return 200, {"global": await push.rules.ruleset(requester.user_id)}

    async def get_scope(request: HomeserverRequest, scope: str) -> JsonResponse:
        requester = await s.auth.authenticate(request)
        check_scope(scope)
        return 200, await push.rules.ruleset(requester.user_id)

    async def get_kind(request: HomeserverRequest, scope: str, kind: str) -> JsonResponse:
        requester = await s.auth.authenticate(request)
        check_scope(scope)
        check_kind(kind)
        return 200, (await push.rules.ruleset(requester.user_id))[kind]

    async def get_rule(
        request: HomeserverRequest, scope: str, kind: str, ruleId: str
    ) -> JsonResponse:
        requester = await s.auth.authenticate(request)
        check_scope(scope)
        return 200, await push.rules.get_rule(requester.user_id, kind, ruleId)

    async def put_rule(
        request: HomeserverRequest, scope: str, kind: str, ruleId: str
    ) -> JsonResponse:
        requester = await s.auth.authenticate(request)
        check_scope(scope)
        body = request.json_object()
        await push.rules.put_rule(
            requester.user_id, kind, ruleId, body,
            request.query_param("before"), request.query_param("after"),
        )
        return 200, {}

    async def delete_rule(
        request: HomeserverRequest, scope: str, kind: str, ruleId: str
    ) -> JsonResponse:
        requester = await s.auth.authenticate(request)
        check_scope(scope)
        await push.rules.delete_rule(requester.user_id, kind, ruleId)
        return 200, {}

    async def _field(user_id: str, kind: str, rule_id: str, name: str) -> Any:
        check_kind(kind)
        rule = find_rule(await push.rules.ruleset(user_id), kind, rule_id)
        if name not in rule:
            raise rule_not_found()
        return rule[name]

    async def get_enabled(
        request: HomeserverRequest, scope: str, kind: str, ruleId: str
    ) -> JsonResponse:
        requester = await s.auth.authenticate(request)
        check_scope(scope)
        return 200, {"enabled": await _field(requester.user_id, kind, ruleId, "enabled")}

    async def put_enabled(
        request: HomeserverRequest, scope: str, kind: str, ruleId: str
    ) -> JsonResponse:
        requester = await s.auth.authenticate(request)
        check_scope(scope)
        body = request.json_object()
        if "enabled" not in body:
            raise MatrixError(400, Codes.MISSING_PARAM, "Missing parameter: enabled")
        if not isinstance(body["enabled"], bool):
            raise MatrixError(400, Codes.BAD_JSON, "'enabled' must be true or false")
        await push.rules.set_enabled(requester.user_id, kind, ruleId, body["enabled"])
        return 200, {}

    async def get_actions(
        request: HomeserverRequest, scope: str, kind: str, ruleId: str
    ) -> JsonResponse:
        requester = await s.auth.authenticate(request)
        check_scope(scope)
        return 200, {"actions": await _field(requester.user_id, kind, ruleId, "actions")}

    async def put_actions(
        request: HomeserverRequest, scope: str, kind: str, ruleId: str
    ) -> JsonResponse:
        requester = await s.auth.authenticate(request)
        check_scope(scope)
        body = request.json_object()
        if "actions" not in body:
            raise MatrixError(400, Codes.MISSING_PARAM, "Missing parameter: actions")
        await push.rules.set_actions(requester.user_id, kind, ruleId, body["actions"])
        return 200, {}

    router.client("GET", "/pushrules/", get_all)
    router.client("GET", "/pushrules", get_all)
    router.client("GET", "/pushrules/{scope}/", get_scope)
    router.client("GET", "/pushrules/{scope}", get_scope)
    router.client("GET", "/pushrules/{scope}/{kind}/", get_kind)
    rule = "/pushrules/{scope}/{kind}/{ruleId}"
    router.client("GET", rule, get_rule)
    router.client("PUT", rule, put_rule)
    router.client("DELETE", rule, delete_rule)
    router.client("GET", rule + "/enabled", get_enabled)
    router.client("PUT", rule + "/enabled", put_enabled)
    router.client("GET", rule + "/actions", get_actions)
    router.client("PUT", rule + "/actions", put_actions)

    # -- /pushers ----------------------------------------------------------------------------------
    async def get_pushers(request: HomeserverRequest) -> JsonResponse:
        requester = await s.auth.authenticate(request)
        return 200, {"pushers": await push.pushers.get_pushers(requester.user_id)}

    async def set_pusher(request: HomeserverRequest) -> JsonResponse:
        requester = await s.auth.authenticate(request)
        req = validate_pusher_request(request.json_object())
        if req.kind == "email" and s.threepids.enabled:
            # Only an address bound to the account (as Synapse).
            if req.pushkey.strip().lower() not in await s.threepids.emails_of(
                requester.user_id
            ):
                raise MatrixError(400, "M_THREEPID_NOT_FOUND",
                                  "The pushkey must be an email address of your account")
        await push.pushers.set_pusher(requester.user_id, requester.device_id, req)
        if req.kind == "email" and push.email is not None:
            push.email.pusher_set(requester.user_id)
        return 200, {}

    router.client("GET", "/pushers", get_pushers)
    router.client("POST", "/pushers/set", set_pusher)

    # -- /notifications ----------------------------------------------------------------------------
    async def notifications(request: HomeserverRequest) -> JsonResponse:
        requester = await s.auth.authenticate(request)
        raw_from = request.query_param("from")
        before: int | None = None
        if raw_from:
            if not raw_from.isdigit() or len(raw_from) > 18:
                raise MatrixError(400, Codes.INVALID_PARAM, "Invalid 'from' token")
            before = int(raw_from)
        limit = query_int(request.query_param("limit"), "limit", 20, min=1,
                          max=MAX_NOTIFICATIONS)
        only_highlight = request.query_param("only") == "highlight"
        rows = await push.notifications(requester.user_id, before, limit, only_highlight)
        found = await s.events.get_events([r.event_id for r in rows])
        present = [r for r in rows if r.event_id in found]
        events = await s.rooms.serialize([found[r.event_id] for r in present],
                                         requester.user_id)
        out = []
        for row, event in zip(present, events, strict=True):
            event.pop("room_id", None)
            out.append({
                "actions": row.actions,
                "event": event,
                "read": row.read,
                "room_id": row.room_id,
                "ts": row.ts,
            })
        body: dict[str, Any] = {"notifications": out}
        if len(rows) == limit:
            body["next_token"] = str(rows[-1].stream_ordering)
        return 200, body

    router.client("GET", "/notifications", notifications)
