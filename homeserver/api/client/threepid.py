"""Email addresses on accounts over the client API: requestToken (register, add, password
reset), the submit_token link, ``/account/3pid`` (list, add with user-interactive auth,
delete). Thin handlers over ``services/threepid``."""

from __future__ import annotations

import html
from collections.abc import Awaitable, Callable
from urllib.parse import urlencode, urlsplit

from homeserver.http.errors import MatrixError
from homeserver.http.request import HomeserverRequest
from homeserver.http.router import JsonResponse, Router
from homeserver.http.site import RawResponse
from homeserver.services import uia
from homeserver.services.push.pushers import PusherRequest
from homeserver.services.registry import Services
from homeserver.services.threepid import ADD, PASSWORD, REGISTER, SUBMIT_PATH

_PAGE = ("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{title}</title>{head}"
         "</head><body><p>{message}</p>{link}</body></html>")


def _page(status: int, title: str, message: str, next_link: str | None = None,
          extra: str = "", redirect: bool = False) -> RawResponse:
    head, link = "", extra
    if next_link is not None:
        url = html.escape(next_link, quote=True)
        if redirect:  # only to a domain of email.next_link_domain_whitelist
            head = f'<meta http-equiv="refresh" content="0; url={url}">'
        link = f'<p><a href="{url}">Continue</a></p>'
    body = _PAGE.format(title=html.escape(title), message=html.escape(message), head=head,
                        link=link)
    return RawResponse(status, body.encode("utf-8"), "text/html; charset=utf-8")


def register(router: Router, s: Services) -> None:
    def request_token(purpose: str) -> Callable[[HomeserverRequest], Awaitable[JsonResponse]]:
        async def handler(request: HomeserverRequest) -> JsonResponse:
            s.ratelimits.registration_per_address.check(request.client_ip)
            return 200, await s.threepids.request_token(purpose, request.json_object())
        return handler

    async def submit_token_post(request: HomeserverRequest) -> JsonResponse | RawResponse:
        if request.query_param("sid") is not None:
            # The confirmation form of a password-reset link (see submit_token_get).
            return await submit_link(request, True)
        body = request.json_object()
        await s.threepids.submit_token(body.get("sid"), body.get("client_secret"),
                                       body.get("token"))
        return 200, {"success": True}

    async def submit_token_get(request: HomeserverRequest) -> RawResponse:
        """The link in the email, opened in a browser: an HTML page either way. A password
        reset is not validated by the GET (mail scanners follow links): it asks to confirm
        with a form that POSTs the same link."""
        return await submit_link(request, False)

    async def submit_link(request: HomeserverRequest, confirm: bool) -> RawResponse:
        params = {k: request.query_param(k) for k in ("sid", "client_secret", "token")}
        try:
            session = await s.threepids.submit_token(*params.values(), confirm=confirm)
        except MatrixError as e:
            return _page(e.status, "Validation failed", f"This link does not work: {e.message}")
        if session.purpose == PASSWORD and not confirm:
            action = html.escape("?" + urlencode(params), quote=True)
            form = (f'<form method="post" action="{action}">'
                    '<button type="submit">Yes, reset my password</button></form>')
            return _page(200, "Confirm password reset",
                         "A password reset was requested for the account with this email "
                         "address. If it was not you, close this page: nothing changes.",
                         extra=form)
        if session.next_link is not None:
            # The client asked to be brought back (Element's registration continues there).
            return _page(200, "Email validated", "Your email address has been validated.",
                         session.next_link,
                         redirect=urlsplit(session.next_link).hostname
                         in (s.config.email.next_link_domain_whitelist or ()))
        return _page(200, "Email validated",
                     "Your email address has been validated. Return to your client to "
                     "continue.")

    async def get_threepids(request: HomeserverRequest) -> JsonResponse:
        requester = await s.auth.authenticate(request)
        return 200, {"threepids": await s.threepids.list(requester.user_id)}

    async def add_threepid(request: HomeserverRequest) -> JsonResponse:
        requester = await s.auth.authenticate(request)
        body = request.json_object()
        creds = {"sid": body.get("sid"), "client_secret": body.get("client_secret")}
        # Not validated yet: say so before asking for the password (clients poll this).
        await s.threepids.validated(creds, (ADD, REGISTER))
        await s.uia.check(body, "add_threepid", [[uia.PASSWORD]], requester.user_id)
        await s.threepids.add(requester.user_id, creds)
        return 200, {}

    async def delete_threepid(request: HomeserverRequest) -> JsonResponse:
        requester = await s.auth.authenticate(request)
        body = request.json_object()
        address = await s.threepids.delete(requester.user_id, body.get("medium"),
                                           body.get("address"))
        # Its email pushers go with it (as in Synapse).
        live, _ = await s.push.store.pushers_for_user(requester.user_id)
        for p in live:
            if p.kind == "email" and p.pushkey.strip().lower() == address:
                await s.push.pushers.set_pusher(requester.user_id, None,
                                                PusherRequest(None, p.app_id, p.pushkey))
        return 200, {"id_server_unbind_result": "no-support"}

    router.client("POST", "/register/email/requestToken", request_token(REGISTER))
    router.client("POST", "/account/3pid/email/requestToken", request_token(ADD))
    router.client("POST", "/account/password/email/requestToken", request_token(PASSWORD))
    router.add("POST", "/" + SUBMIT_PATH, submit_token_post, resource="client")
    router.add("GET", "/" + SUBMIT_PATH, submit_token_get, resource="client")
    router.client("GET", "/account/3pid", get_threepids)
    router.client("POST", "/account/3pid/add", add_threepid)
    router.client("POST", "/account/3pid/delete", delete_threepid)
