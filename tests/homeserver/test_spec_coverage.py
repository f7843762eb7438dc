"""Endpoint coverage against the Matrix spec: every (method, path) of the client-server and
server-server OpenAPI files in the spec checkout is served by our router, or is on the
allow-list below with the reason we deliberately do not serve it. The spec checkout is
$HS_MATRIX_SPEC_API (default /work/shared/matrix-spec/data/api); without one the test skips."""

from __future__ import annotations

import glob
import os
import re
from typing import Any

import pytest
import pytest_twisted
import yaml

from tests.support.databases import fresh_database
from tests.support.server import start_server

SPEC_API = os.environ.get("HS_MATRIX_SPEC_API", "/work/shared/matrix-spec/data/api")

_C = "/_matrix/client/v3"
_C1 = "/_matrix/client/v1"
_F = "/_matrix/federation/v1"

# (method, full path template) of spec endpoints we deliberately do not serve, with why.
# A route that answers (even 404 M_UNRECOGNIZED, as /auth_metadata does without OAuth) is
# served and does not belong here.
ALLOWED_MISSING: dict[tuple[str, str], str] = {
    # Deprecated since r0 and replaced by /sync; no current client calls it, and a full
    # snapshot of every room in one answer is an easy way to overload a server.
    ("GET", f"{_C}/initialSync"): "deprecated global initialSync, replaced by /sync",
    # Single sign-on: this server has no SSO/CAS identity provider support, and advertises
    # no m.login.sso flow, so clients never follow these redirects (Synapse registers them
    # only with SSO configured).
    ("GET", f"{_C}/login/sso/redirect"): "SSO not supported (no m.login.sso login flow)",
    ("GET", f"{_C}/login/sso/redirect/{{idpId}}"): "SSO not supported (no m.login.sso flow)",
    # Binding third-party IDs lives on an identity server, which this server does not talk
    # to; the deprecated POST /account/3pid is binding by another name.
    ("POST", f"{_C}/account/3pid"): "deprecated; needs an identity server (3PID binding)",
    ("POST", f"{_C}/account/3pid/bind"): "needs an identity server",
    ("POST", f"{_C}/account/3pid/unbind"): "needs an identity server",
    # Phone numbers need an SMS provider; email is the only 3PID medium here. (Synapse
    # serves these only to answer 400 M_THREEPID_MEDIUM_NOT_SUPPORTED; the 3PID module may
    # do the same, and then they leave this list.)
    ("POST", f"{_C}/account/3pid/msisdn/requestToken"): "no SMS (msisdn) support",
    ("POST", f"{_C}/account/password/msisdn/requestToken"): "no SMS (msisdn) support",
    ("POST", f"{_C}/register/msisdn/requestToken"): "no SMS (msisdn) support",
    # Account locking and suspension (MSC3823/MSC4323, recent): the server has no such
    # account states yet (admins deactivate accounts instead); Synapse does not serve these
    # client-API copies either.
    ("GET", f"{_C1}/admin/lock/{{userId}}"): "account locking not implemented",
    ("PUT", f"{_C1}/admin/lock/{{userId}}"): "account locking not implemented",
    ("GET", f"{_C1}/admin/suspend/{{userId}}"): "account suspension not implemented",
    ("PUT", f"{_C1}/admin/suspend/{{userId}}"): "account suspension not implemented",
    # Policy servers (MSC4284) are run by communities beside their homeserver; a plain
    # homeserver (Synapse included) neither publishes a policy server key nor signs events.
    ("GET", "/.well-known/matrix/policy_server"): "we are not a room policy server",
    ("POST", "/_matrix/policy/v1/sign"): "we are not a room policy server",
    # Third-party (email) invites: issuing them needs an identity server, and accepting
    # them means checking the identity server's signatures on m.room.third_party_invite,
    # which this server does not support (Synapse does, with an identity server).
    ("PUT", f"{_F}/3pid/onbind"): "third-party invites need an identity server",
    ("PUT", f"{_F}/exchange_third_party_invite/{{roomId}}"):
        "third-party invites need an identity server",
}


def _example_path(template: str) -> str:
    # A concrete path of the template: our routes may name parameters differently, or take
    # a parameter where the spec has a literal (/pushrules/{scope}/ for /pushrules/global/).
    return re.sub(r"\{[^}]+\}", "x", template)


def spec_endpoints(area: str) -> set[tuple[str, str]]:
    """(METHOD, basePath + path) of every operation in the area's OpenAPI files."""
    found: set[tuple[str, str]] = set()
    for path in sorted(glob.glob(os.path.join(SPEC_API, area, "*.yaml"))):
        with open(path, encoding="utf-8") as f:
            doc: dict[str, Any] = yaml.safe_load(f)
        base = ""
        for server in doc.get("servers") or []:
            base = server.get("variables", {}).get("basePath", {}).get("default", base)
        for template, operations in (doc.get("paths") or {}).items():
            for method in operations:
                if method in ("get", "put", "post", "delete", "patch"):
                    # The spec repeats a path with a trailing space to document two
                    # operations of one path in different modules.
                    found.add((method.upper(), base + template.strip()))
    return found


@pytest.mark.skipif(not os.path.isdir(SPEC_API), reason=f"no spec checkout at {SPEC_API}")
@pytest_twisted.ensureDeferred
async def test_spec_endpoints_are_served(tmp_path: Any) -> None:
    with fresh_database("sqlite", str(tmp_path)) as db:
        server = await start_server(str(tmp_path), db)
        try:
            routes = list(server.hs.router.routes)
        finally:
            await server.stop()

    def served(method: str, path: str) -> bool:
        return any(r.method == method and r.pattern.match(_example_path(path)) for r in routes)

    spec = spec_endpoints("client-server") | spec_endpoints("server-server")
    # Sanity: the reader found the spec's endpoints (about 200 in all).
    assert len(spec) > 150
    missing = sorted(e for e in spec if e not in ALLOWED_MISSING and not served(*e))
    assert not missing, "spec endpoints not served:\n" + "\n".join(
        f"{m} {p}" for m, p in missing)
    # The allow-list stays honest: nothing on it that we serve or that the spec lacks.
    stale = sorted(e for e in ALLOWED_MISSING if e not in spec or served(*e))
    assert not stale, "remove from ALLOWED_MISSING:\n" + "\n".join(
        f"{m} {p}" for m, p in stale)
