"""Access control for every client-listener route: a second user's token (mallory's) cannot
read or change the first user's (alice's) data, and admin endpoints refuse non-admins.

The route table below classifies every route the running server registers (a coverage test
fails when a route is added without a classification) and says what mallory must get when she
aims it at alice's resources. Beyond the per-route answer, two checks cover every route at
once: no answer to mallory contains any of alice's secret strings, and everything alice sees
(sync, state, history, account data, devices, keys, pushers, push rules, backup, ...) is the
same before and after all of mallory's attempts.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import pytest_twisted

from tests.support.client import Client, User, q
from tests.support.e2ee import CrossSigning, Device
from tests.support.http import request
from tests.support.media import png
from tests.support.server import RunningServer

# Route classes.
PUBLIC = "public"  # no auth, or nothing of anyone else's behind it
SELF = "self"  # acts on the caller's own data by construction
ROOM = "room"  # needs membership or power in the room
USER = "user"  # a {userId} path parameter: only the caller's own
ADMIN = "admin"  # server admins only
MEDIA = "media"  # the content repository

ALLOW = "allow"  # a 2xx is right: the answer is mallory's own or public data
ANY4XX = "any4xx"  # any refusal (4xx) is right; the spec names none
HTML4XX = "html4xx"  # a refusal as an HTML page (a link opened in a browser)
NOLEAK = "noleak"  # a 2xx or a JSON 4xx; the leak and snapshot checks decide

Expect = str | tuple[tuple[int, str], ...]


def deny(*pairs: tuple[int, str]) -> tuple[tuple[int, str], ...]:
    return pairs


F403 = deny((403, "M_FORBIDDEN"))
N404 = deny((404, "M_NOT_FOUND"))
V3 = "/_matrix/client/v3"
V1 = "/_matrix/client/v1"
SA1, SA2 = "/_synapse/admin/v1", "/_synapse/admin/v2"
MEDIA3 = "/_matrix/media/v3"

# (method, template) -> (class, what mallory gets when aiming the route at alice's data).
# /r0 routes (client and media) share their /v3 twin's entry.
ROUTES: dict[tuple[str, str], tuple[str, Expect]] = {
    ("GET", "/_matrix/client/versions"): (PUBLIC, ALLOW),
    ("GET", "/.well-known/matrix/client"): (PUBLIC, ALLOW),
    ("GET", "/health"): (PUBLIC, ALLOW),
    ("GET", "/health/detail"): (PUBLIC, ALLOW),
    ("GET", "/metrics"): (PUBLIC, ALLOW),
    ("GET", "/_synapse/metrics"): (PUBLIC, ALLOW),
    # Registering or logging in as alice.
    ("POST", f"{V3}/register"): (PUBLIC, deny((400, "M_USER_IN_USE"))),
    ("GET", f"{V3}/register/available"): (PUBLIC, deny((400, "M_USER_IN_USE"))),
    ("GET", f"{V1}/register/m.login.registration_token/validity"): (PUBLIC, ALLOW),
    ("GET", f"{V3}/login"): (PUBLIC, ALLOW),
    ("POST", f"{V3}/login"): (PUBLIC, F403),
    ("POST", f"{V1}/login/get_token"): (SELF, ALLOW),
    ("POST", f"{V3}/logout"): (SELF, ALLOW),
    ("POST", f"{V3}/logout/all"): (SELF, ALLOW),
    ("POST", f"{V3}/refresh"): (PUBLIC, deny((401, "M_UNKNOWN_TOKEN"))),
    ("POST", f"{V1}/refresh"): (PUBLIC, deny((401, "M_UNKNOWN_TOKEN"))),
    ("GET", f"{V3}/account/whoami"): (SELF, ALLOW),
    # Interactive auth naming alice, with mallory's password.
    ("POST", f"{V3}/account/password"): (SELF, deny((401, "M_FORBIDDEN"))),
    ("POST", f"{V3}/account/deactivate"): (SELF, deny((401, "M_FORBIDDEN"))),
    ("POST", f"{V1}/appservice/{{appserviceId}}/ping"): (SELF, F403),
    ("PUT", f"{V3}/directory/list/appservice/{{networkId}}/{{roomId}}"): (ROOM, F403),
    ("GET", f"{V3}/thirdparty/protocols"): (PUBLIC, ALLOW),
    ("GET", f"{V3}/thirdparty/protocol/{{protocol}}"): (PUBLIC, N404),
    ("GET", f"{V3}/thirdparty/location/{{protocol}}"): (PUBLIC, N404),
    ("GET", f"{V3}/thirdparty/location"): (PUBLIC, ALLOW),
    ("GET", f"{V3}/thirdparty/user/{{protocol}}"): (PUBLIC, N404),
    ("GET", f"{V3}/thirdparty/user"): (PUBLIC, ALLOW),
    ("GET", f"{V3}/devices"): (SELF, ALLOW),
    ("GET", f"{V3}/devices/{{deviceId}}"): (SELF, N404),
    ("PUT", f"{V3}/devices/{{deviceId}}"): (SELF, N404),
    # Deleting a device the caller does not have is a no-op (as Synapse): alice's survives.
    ("DELETE", f"{V3}/devices/{{deviceId}}"): (SELF, ALLOW),
    ("POST", f"{V3}/delete_devices"): (SELF, ALLOW),  # only ever the caller's devices
    ("GET", f"{V3}/profile/{{userId}}"): (USER, ALLOW),  # profiles are public
    ("GET", f"{V3}/profile/{{userId}}/{{keyName}}"): (USER, ALLOW),
    ("PUT", f"{V3}/profile/{{userId}}/{{keyName}}"): (USER, F403),
    ("DELETE", f"{V3}/profile/{{userId}}/{{keyName}}"): (USER, F403),
    ("PUT", f"{V3}/user/{{userId}}/account_data/{{type}}"): (USER, F403),
    ("GET", f"{V3}/user/{{userId}}/account_data/{{type}}"): (USER, F403),
    ("PUT", f"{V3}/user/{{userId}}/rooms/{{roomId}}/account_data/{{type}}"): (USER, F403),
    ("GET", f"{V3}/user/{{userId}}/rooms/{{roomId}}/account_data/{{type}}"): (USER, F403),
    ("POST", f"{V3}/user/{{userId}}/filter"): (USER, F403),
    ("GET", f"{V3}/user/{{userId}}/filter/{{filterId}}"): (USER, F403),
    ("GET", f"{V3}/capabilities"): (SELF, ALLOW),
    ("POST", f"{V3}/user_directory/search"): (SELF, ALLOW),
    ("POST", f"{V3}/createRoom"): (SELF, deny((400, "M_ROOM_IN_USE"))),  # alice's alias
    ("PUT", f"{V3}/rooms/{{roomId}}/send/{{eventType}}/{{txnId}}"): (ROOM, F403),
    ("PUT", f"{V3}/rooms/{{roomId}}/state/{{eventType}}/{{stateKey}}"): (ROOM, F403),
    ("PUT", f"{V3}/rooms/{{roomId}}/state/{{eventType}}"): (ROOM, F403),
    ("PUT", f"{V3}/rooms/{{roomId}}/state/{{eventType}}/"): (ROOM, F403),
    ("GET", f"{V3}/rooms/{{roomId}}/state/{{eventType}}/"): (ROOM, F403),
    ("GET", f"{V3}/rooms/{{roomId}}/state"): (ROOM, F403),
    ("GET", f"{V3}/rooms/{{roomId}}/state/{{eventType}}/{{stateKey}}"): (ROOM, F403),
    ("GET", f"{V3}/rooms/{{roomId}}/state/{{eventType}}"): (ROOM, F403),
    ("PUT", f"{V3}/rooms/{{roomId}}/redact/{{eventId}}/{{txnId}}"): (ROOM, F403),
    # "The event was not found or you do not have permission to read this event."
    ("GET", f"{V3}/rooms/{{roomId}}/event/{{eventId}}"): (ROOM, N404),
    ("GET", f"{V3}/rooms/{{roomId}}/members"): (ROOM, F403),
    ("GET", f"{V3}/rooms/{{roomId}}/joined_members"): (ROOM, F403),
    ("GET", f"{V3}/joined_rooms"): (SELF, ALLOW),
    ("GET", f"{V3}/rooms/{{roomId}}/messages"): (ROOM, F403),
    ("GET", f"{V3}/rooms/{{roomId}}/context/{{eventId}}"): (ROOM, deny((403, "M_FORBIDDEN"),
                                                                       (404, "M_NOT_FOUND"))),
    ("POST", f"{V3}/join/{{roomIdOrAlias}}"): (ROOM, F403),
    ("POST", f"{V3}/rooms/{{roomId}}/join"): (ROOM, F403),
    ("POST", f"{V3}/knock/{{roomIdOrAlias}}"): (ROOM, F403),
    ("POST", f"{V3}/rooms/{{roomId}}/leave"): (ROOM, F403),
    # Forgetting a room you were never in changes nothing of anyone's.
    ("POST", f"{V3}/rooms/{{roomId}}/forget"): (ROOM, ALLOW),
    ("POST", f"{V3}/rooms/{{roomId}}/invite"): (ROOM, F403),
    ("POST", f"{V3}/rooms/{{roomId}}/kick"): (ROOM, F403),
    ("POST", f"{V3}/rooms/{{roomId}}/ban"): (ROOM, F403),
    ("POST", f"{V3}/rooms/{{roomId}}/unban"): (ROOM, F403),
    ("PUT", f"{V3}/directory/room/{{roomAlias}}"): (ROOM, F403),
    ("GET", f"{V3}/directory/room/{{roomAlias}}"): (PUBLIC, ALLOW),  # aliases are public
    ("DELETE", f"{V3}/directory/room/{{roomAlias}}"): (ROOM, F403),
    ("GET", f"{V3}/rooms/{{roomId}}/aliases"): (ROOM, F403),
    ("GET", f"{V3}/publicRooms"): (PUBLIC, ALLOW),
    ("POST", f"{V3}/publicRooms"): (PUBLIC, ALLOW),
    ("GET", f"{V3}/directory/list/room/{{roomId}}"): (PUBLIC, ALLOW),  # visibility is public
    ("PUT", f"{V3}/directory/list/room/{{roomId}}"): (ROOM, F403),
    ("GET", f"{V1}/rooms/{{roomId}}/relations/{{eventId}}"): (ROOM, N404),
    ("GET", f"{V1}/rooms/{{roomId}}/relations/{{eventId}}/{{relType}}"): (ROOM, N404),
    ("GET", f"{V1}/rooms/{{roomId}}/relations/{{eventId}}/{{relType}}/{{eventType}}"):
        (ROOM, N404),
    ("GET", f"{V1}/rooms/{{roomId}}/threads"): (ROOM, F403),
    ("POST", f"{V3}/rooms/{{roomId}}/upgrade"): (ROOM, F403),
    # "The event was not found or you are not currently joined to the room."
    ("POST", f"{V3}/rooms/{{roomId}}/report/{{eventId}}"): (ROOM, N404),
    # Reporting a room needs no membership (spam invites); it reaches the admins only.
    ("POST", f"{V3}/rooms/{{roomId}}/report"): (ROOM, ALLOW),
    ("GET", f"{V1}/rooms/{{roomId}}/timestamp_to_event"): (ROOM, deny((403, "M_FORBIDDEN"),
                                                                       (404, "M_NOT_FOUND"))),
    ("POST", f"{V3}/search"): (SELF, ALLOW),  # finds nothing of rooms the caller is not in
    ("GET", f"{V1}/rooms/{{roomId}}/hierarchy"): (ROOM, F403),
    ("GET", f"{V3}/sync"): (SELF, ALLOW),
    ("PUT", f"{V3}/rooms/{{roomId}}/typing/{{userId}}"): (USER, F403),
    ("POST", f"{V3}/rooms/{{roomId}}/receipt/{{receiptType}}/{{eventId}}"): (ROOM, F403),
    ("POST", f"{V3}/rooms/{{roomId}}/read_markers"): (ROOM, F403),
    # Mallory shares the public room with alice, so she may see alice's presence; eve, who
    # shares no room with her, may not (checked separately).
    ("GET", f"{V3}/presence/{{userId}}/status"): (USER, ALLOW),
    ("PUT", f"{V3}/presence/{{userId}}/status"): (USER, F403),
    ("GET", f"{V3}/user/{{userId}}/rooms/{{roomId}}/tags"): (USER, F403),
    ("PUT", f"{V3}/user/{{userId}}/rooms/{{roomId}}/tags/{{tag}}"): (USER, F403),
    ("DELETE", f"{V3}/user/{{userId}}/rooms/{{roomId}}/tags/{{tag}}"): (USER, F403),
    # Push rules and pushers are per user: alice's rule ID names nothing of mallory's.
    ("GET", f"{V3}/pushrules/"): (SELF, ALLOW),
    ("GET", f"{V3}/pushrules"): (SELF, ALLOW),
    ("GET", f"{V3}/pushrules/{{scope}}/"): (SELF, ALLOW),
    ("GET", f"{V3}/pushrules/{{scope}}"): (SELF, ALLOW),
    ("GET", f"{V3}/pushrules/{{scope}}/{{kind}}/"): (SELF, ALLOW),
    ("GET", f"{V3}/pushrules/{{scope}}/{{kind}}/{{ruleId}}"): (SELF, N404),
    ("PUT", f"{V3}/pushrules/{{scope}}/{{kind}}/{{ruleId}}"): (SELF, ALLOW),  # mallory's own
    # Deletes the rule of that ID mallory's PUT just made: her own.
    ("DELETE", f"{V3}/pushrules/{{scope}}/{{kind}}/{{ruleId}}"): (SELF, ALLOW),
    ("GET", f"{V3}/pushrules/{{scope}}/{{kind}}/{{ruleId}}/enabled"): (SELF, N404),
    ("PUT", f"{V3}/pushrules/{{scope}}/{{kind}}/{{ruleId}}/enabled"): (SELF, N404),
    ("GET", f"{V3}/pushrules/{{scope}}/{{kind}}/{{ruleId}}/actions"): (SELF, N404),
    ("PUT", f"{V3}/pushrules/{{scope}}/{{kind}}/{{ruleId}}/actions"): (SELF, N404),
    ("GET", f"{V3}/pushers"): (SELF, ALLOW),
    ("POST", f"{V3}/pushers/set"): (SELF, ALLOW),  # deleting "alice's" pusher: a no-op
    ("GET", f"{V3}/notifications"): (SELF, ALLOW),
    # Uploading keys that claim to be alice's device.
    ("POST", f"{V3}/keys/upload"): (SELF, deny((400, "M_INVALID_PARAM"), (400, "M_BAD_JSON"))),
    ("POST", f"{V3}/keys/query"): (SELF, ALLOW),  # device keys are public by design
    ("POST", f"{V3}/keys/claim"): (SELF, ALLOW),
    ("GET", f"{V3}/keys/changes"): (SELF, ALLOW),
    ("POST", f"{V3}/keys/device_signing/upload"): (SELF, deny((400, "M_INVALID_PARAM"),
                                                              (400, "M_BAD_JSON"))),
    ("POST", f"{V3}/keys/signatures/upload"): (SELF, ALLOW),  # answered as failures
    ("PUT", f"{V3}/sendToDevice/{{eventType}}/{{txnId}}"): (SELF, ALLOW),
    # Key backups are per user: alice's version is "not found" for mallory.
    ("POST", f"{V3}/room_keys/version"): (SELF, ALLOW),
    ("GET", f"{V3}/room_keys/version"): (SELF, N404),
    ("GET", f"{V3}/room_keys/version/{{version}}"): (SELF, N404),
    ("PUT", f"{V3}/room_keys/version/{{version}}"): (SELF, N404),
    ("DELETE", f"{V3}/room_keys/version/{{version}}"): (SELF, N404),
    ("PUT", f"{V3}/room_keys/keys"): (SELF, N404),
    ("GET", f"{V3}/room_keys/keys"): (SELF, N404),
    ("DELETE", f"{V3}/room_keys/keys"): (SELF, N404),
    ("PUT", f"{V3}/room_keys/keys/{{roomId}}"): (SELF, N404),
    ("GET", f"{V3}/room_keys/keys/{{roomId}}"): (SELF, N404),
    ("DELETE", f"{V3}/room_keys/keys/{{roomId}}"): (SELF, N404),
    ("PUT", f"{V3}/room_keys/keys/{{roomId}}/{{sessionId}}"): (SELF, N404),
    ("GET", f"{V3}/room_keys/keys/{{roomId}}/{{sessionId}}"): (SELF, N404),
    ("DELETE", f"{V3}/room_keys/keys/{{roomId}}/{{sessionId}}"): (SELF, N404),
    ("POST", f"{V3}/user/{{userId}}/openid/request_token"): (USER, F403),
    # Media: an mxc URI is the capability (the spec has no per-room media ACL); mallory never
    # learns alice's (the leak check), and cannot write into alice's pending upload.
    ("GET", f"{V1}/media/config"): (MEDIA, ALLOW),
    ("GET", f"{V1}/media/preview_url"): (MEDIA, ANY4XX),  # loopback URLs are refused
    ("GET", f"{V1}/media/download/{{serverName}}/{{mediaId}}"): (MEDIA, ALLOW),
    ("GET", f"{V1}/media/download/{{serverName}}/{{mediaId}}/{{fileName}}"): (MEDIA, ALLOW),
    ("GET", f"{V1}/media/thumbnail/{{serverName}}/{{mediaId}}"): (MEDIA, ALLOW),
    ("POST", "/_matrix/media/v1/create"): (MEDIA, ALLOW),
    ("PUT", f"{MEDIA3}/upload/{{serverName}}/{{mediaId}}"): (MEDIA, F403),
    ("POST", f"{MEDIA3}/upload"): (MEDIA, ALLOW),
    ("GET", f"{MEDIA3}/config"): (MEDIA, ALLOW),
    ("GET", f"{MEDIA3}/preview_url"): (MEDIA, ANY4XX),
    # New media is frozen out of the unauthenticated legacy API (as Synapse does).
    ("GET", f"{MEDIA3}/download/{{serverName}}/{{mediaId}}"): (MEDIA, N404),
    ("GET", f"{MEDIA3}/download/{{serverName}}/{{mediaId}}/{{fileName}}"): (MEDIA, N404),
    ("GET", f"{MEDIA3}/thumbnail/{{serverName}}/{{mediaId}}"): (MEDIA, N404),
    ("GET", f"{V1}/room_summary/{{roomIdOrAlias}}"): (ROOM, N404),
    ("GET", f"{V3}/rooms/{{roomId}}/initialSync"): (ROOM, F403),
    # The old event stream, peeking into alice's private room: nothing of hers comes back.
    ("GET", f"{V3}/events"): (ROOM, NOLEAK),
    ("GET", f"{V3}/events/{{eventId}}"): (ROOM, N404),
    # Email addresses: requesting a token for alice's address reveals nothing (the answer is
    # the same whether or not it is bound); mallory's delete only looks at her own addresses.
    ("POST", f"{V3}/register/email/requestToken"): (PUBLIC, NOLEAK),
    ("POST", f"{V3}/account/3pid/email/requestToken"): (SELF, NOLEAK),
    ("POST", f"{V3}/account/password/email/requestToken"): (PUBLIC, NOLEAK),
    ("POST", "/_matrix/client/unstable/add_threepid/email/submit_token"): (PUBLIC, ANY4XX),
    ("GET", "/_matrix/client/unstable/add_threepid/email/submit_token"): (PUBLIC, HTML4XX),
    ("GET", f"{V3}/account/3pid"): (SELF, ALLOW),
    ("POST", f"{V3}/account/3pid/add"): (SELF, ANY4XX),
    ("POST", f"{V3}/account/3pid/delete"): (SELF, deny((400, "M_THREEPID_NOT_FOUND"))),
    ("GET", "/.well-known/matrix/support"): (PUBLIC, NOLEAK),  # public when configured
    ("GET", f"{V1}/auth_metadata"): (PUBLIC, ANY4XX),
    ("GET", f"{V3}/voip/turnServer"): (SELF, ALLOW),
    # Only rooms both are in: never alice's private rooms (checked below).
    ("GET", f"{V1}/mutual_rooms"): (SELF, ALLOW),
    # "May be restricted to ... the user being looked up, or a server admin."
    ("GET", f"{V3}/admin/whois/{{userId}}"): (ADMIN, F403),
    # Reporting someone else is the point; it stores a report for the admins, nothing more.
    ("POST", f"{V3}/users/{{userId}}/report"): (SELF, ALLOW),
    # Synapse-compatible shared-secret registration: guarded by the secret, not a token.
    ("GET", f"{SA1}/register"): (PUBLIC, ANY4XX),  # disabled in tests
    ("POST", f"{SA1}/register"): (PUBLIC, ANY4XX),
}

_ADMIN_ROUTES = [
    ("GET", "event_reports"), ("GET", "event_reports/{reportId}"),
    ("DELETE", "event_reports/{reportId}"), ("GET", "user_reports"),
    ("GET", "user_reports/{reportId}"), ("DELETE", "user_reports/{reportId}"),
    ("GET", "registration_tokens"),
    ("POST", "registration_tokens/new"), ("GET", "registration_tokens/{token}"),
    ("DELETE", "registration_tokens/{token}"),
    ("POST", "media/quarantine/{serverName}/{mediaId}"),
    ("POST", "media/unquarantine/{serverName}/{mediaId}"),
    ("POST", "user/{userId}/media/quarantine"), ("DELETE", "media/{serverName}/{mediaId}"),
    ("GET", "users/{userId}/media"), ("DELETE", "users/{userId}/media"),
    ("POST", "purge_media_cache"), ("GET", "users/{userId}/joined_rooms"),
    ("POST", "deactivate/{userId}"), ("POST", "reset_password/{userId}"),
    ("GET", "users/{userId}/admin"), ("PUT", "users/{userId}/admin"),
    ("GET", "whois/{userId}"), ("GET", "statistics/users/media"),
    ("GET", "username_available"), ("GET", "users/{userId}/pushers"), ("GET", "rooms"),
    ("GET", "rooms/{roomId}"), ("GET", "rooms/{roomId}/members"),
    ("GET", "rooms/{roomId}/state"), ("GET", "rooms/{roomId}/block"),
    ("PUT", "rooms/{roomId}/block"), ("DELETE", "rooms/{roomId}"),
    ("POST", "purge_history/{roomId}"), ("POST", "purge_history/{roomId}/{eventId}"),
    ("GET", "purge_history_status/{purgeId}"), ("GET", "rooms/{roomId}/forward_extremities"),
    ("GET", "room/{roomId}/media"), ("POST", "room/{roomId}/media/quarantine"),
    ("GET", "federation/destinations"), ("GET", "federation/destinations/{destination}"),
    ("POST", "federation/destinations/{destination}/reset_connection"),
    ("GET", "federation/destinations/{destination}/rooms"), ("GET", "federation/policy"),
    ("POST", "send_server_notice"), ("PUT", "send_server_notice/{txnId}"),
    ("GET", "server_version"),
]
_ADMIN_V2_ROUTES = [
    ("GET", "users"), ("GET", "users/{userId}"), ("PUT", "users/{userId}"),
    ("GET", "users/{userId}/devices"), ("GET", "users/{userId}/devices/{deviceId}"),
    ("PUT", "users/{userId}/devices/{deviceId}"), ("DELETE", "users/{userId}/devices/{deviceId}"),
    ("POST", "users/{userId}/delete_devices"), ("DELETE", "rooms/{roomId}"),
    ("GET", "rooms/{roomId}/delete_status"), ("GET", "rooms/delete_status/{deleteId}"),
]
for _m, _p in _ADMIN_ROUTES:
    ROUTES[(_m, f"{SA1}/{_p}")] = (ADMIN, F403)
for _m, _p in _ADMIN_V2_ROUTES:
    ROUTES[(_m, f"{SA2}/{_p}")] = (ADMIN, F403)

# The routes served on the client listener (federation and key routes are the federation
# listener's, authenticated by X-Matrix; other tests cover them).
CLIENT_RESOURCES = frozenset({"client", "media", "admin", "metrics"})


def client_routes(hs: RunningServer) -> list[tuple[str, str]]:
    """Every (method, template) the running server serves on its client listener."""
    seen: list[tuple[str, str]] = []
    for route in hs.hs.router.routes:
        template = route.template.replace("/_matrix/client/r0/", f"{V3}/")
        key = (route.method, template.replace("/_matrix/media/r0/", f"{MEDIA3}/"))
        if route.resource in CLIENT_RESOURCES and key not in seen:
            seen.append(key)
    return seen


@pytest_twisted.ensureDeferred
async def test_every_route_is_classified(hs: RunningServer) -> None:
    routes = client_routes(hs)
    missing = [r for r in routes if r not in ROUTES]
    assert not missing, f"routes without an access-control classification: {missing}"
    stale = [r for r in ROUTES if r not in routes]
    assert not stale, f"classified routes the server does not serve: {stale}"
    # Admin paths (/_synapse/admin, /_matrix/client/*/admin) are all classified admin-only
    # (the shared-secret registration aside).
    for (method, template), (kind, _) in ROUTES.items():
        if "/admin/" in template and not template.endswith("/admin/v1/register"):
            assert kind == ADMIN, (method, template)


# --- alice's world -------------------------------------------------------------------------

_n = itertools.count(1)
ALG = "m.megolm_backup.v1.curve25519-aes-sha2"


def secret(what: str) -> str:
    return f"SECRET-{what}-{next(_n)}"


@dataclass
class World:
    alice: User
    mallory: User
    mallory2: User  # a second device of mallory's, for the logout routes
    eve: User  # shares no room with alice
    since: str  # a sync token of mallory's
    private: str  # invite-only room, history shared
    invite_only: str  # invite-only room, history "joined"
    public: str  # public room mallory has joined: she lacks power there
    event: str  # a message of alice's in the private room
    public_event: str  # a message of alice's in the public room
    alias: str  # alias of the private room
    filter_id: str
    version: str  # alice's backup version
    media: str  # mxc of media alice uploaded and sent in the private room
    pending: str  # mxc alice created but has not uploaded yet
    secrets: list[str] = field(default_factory=list)


async def _ok(c: Client, method: str, path: str, body: Any, token: str) -> Any:
    r = await c.call(method, path, body, token)
    assert r.status == 200, (method, path, r.status, r.body)
    return r.json()


async def _raw(hs: RunningServer, method: str, path: str, body: Any = None,
               token: str | None = None, headers: dict[str, str] | None = None
               ) -> tuple[int, Any]:
    r = await request(method, hs.client_url + path, body, headers=headers, access_token=token)
    try:
        return r.status, json.loads(r.body) if r.body else None
    except ValueError:
        return r.status, r.body


async def build_world(hs: RunningServer) -> World:
    c = Client(hs.client_url)
    alice = await c.register("alice", "alice-pw")
    mallory = await c.register("mallory", "mallory-pw")
    r = await c.login("mallory", "mallory-pw")
    assert r.status == 200, r.body
    j = r.json()
    mallory2 = User(j["user_id"], j["access_token"], j["device_id"], "mallory-pw")
    t = alice.access_token
    secrets: list[str] = []

    def s(what: str) -> str:
        value = secret(what)
        secrets.append(value)
        return value

    alias_local = "alices-room"
    private = (await _ok(c, "POST", "/createRoom", {
        "preset": "private_chat", "name": s("name"), "topic": s("topic"),
        "room_alias_name": alias_local,
        "initial_state": [{"type": "org.example.secret", "state_key": "",
                           "content": {"v": s("state")}}],
    }, t))["room_id"]
    invite_only = (await _ok(c, "POST", "/createRoom", {
        "preset": "private_chat", "name": s("name2"),
        "initial_state": [{"type": "m.room.history_visibility", "state_key": "",
                           "content": {"history_visibility": "joined"}}],
    }, t))["room_id"]
    public = (await _ok(c, "POST", "/createRoom", {"preset": "public_chat"}, t))["room_id"]
    event = (await _ok(c, "PUT", f"/rooms/{q(private)}/send/m.room.message/t1",
                       {"msgtype": "m.text", "body": s("message")}, t))["event_id"]
    await _ok(c, "PUT", f"/rooms/{q(invite_only)}/send/m.room.message/t2",
              {"msgtype": "m.text", "body": s("message2")}, t)
    public_event = (await _ok(c, "PUT", f"/rooms/{q(public)}/send/m.room.message/t3",
                              {"msgtype": "m.text", "body": "hello all"}, t))["event_id"]
    await _ok(c, "POST", f"/join/{q(public)}", {}, mallory.access_token)

    # Media: uploaded and sent in the private room; and one created but not yet uploaded.
    r = await request("POST", hs.client_url + f"{MEDIA3}/upload?filename=a.png",
                      png(64, 64), headers={"Content-Type": "image/png"}, access_token=t)
    assert r.status == 200, r.body
    media = r.json()["content_uri"]
    await _ok(c, "PUT", f"/rooms/{q(private)}/send/m.room.message/t4",
              {"msgtype": "m.image", "body": "a.png", "url": media}, t)
    r = await request("POST", hs.client_url + "/_matrix/media/v1/create", {}, access_token=t)
    assert r.status == 200, r.body
    pending = r.json()["content_uri"]

    # Account data, room account data, tags, a filter, a push rule, a pusher.
    await _ok(c, "PUT", f"/user/{q(alice.user_id)}/account_data/org.example.secret",
              {"v": s("account-data")}, t)
    await _ok(c, "PUT", f"/user/{q(alice.user_id)}/rooms/{q(private)}/account_data/"
              "org.example.secret", {"v": s("room-account-data")}, t)
    await _ok(c, "PUT", f"/user/{q(alice.user_id)}/rooms/{q(private)}/tags/u.work",
              {"order": 0.25}, t)
    filter_id = (await _ok(c, "POST", f"/user/{q(alice.user_id)}/filter",
                           {"room": {"not_types": [s("filter")]}}, t))["filter_id"]
    await _ok(c, "PUT", "/pushrules/global/content/alicerule",
              {"actions": ["notify"], "pattern": s("pushrule")}, t)
    await _ok(c, "POST", "/pushers/set", {
        "kind": "http", "app_id": "org.example.app", "pushkey": "alice-pushkey",
        "app_display_name": s("pusher-app"), "device_display_name": "phone", "lang": "en",
        "data": {"url": "http://127.0.0.1:9/_matrix/push/v1/notify"}}, t)
    # Device names are in /keys/query answers (public by the spec), so not a secret here.
    await _ok(c, "PUT", f"/devices/{q(alice.device_id)}", {"display_name": "alice's phone"}, t)
    await _ok(c, "PUT", f"/profile/{q(alice.user_id)}/displayname", {"displayname": "Alice"}, t)

    # Device keys and cross-signing keys; a key backup with one session.
    device = Device(alice)
    await _ok(c, "POST", "/keys/upload", {"device_keys": device.device_keys()}, t)
    cs = CrossSigning(alice.user_id)
    r = await c.call("POST", "/keys/device_signing/upload", cs.upload_body(), t)
    if r.status == 401:  # interactive auth with alice's own password
        auth = {"type": "m.login.password", "password": "alice-pw", "session":
                r.json().get("session"), "identifier": {"type": "m.id.user", "user": "alice"}}
        await _ok(c, "POST", "/keys/device_signing/upload", {**cs.upload_body(), "auth": auth},
                  t)
    else:
        assert r.status == 200, r.body
    version = (await _ok(c, "POST", "/room_keys/version",
                         {"algorithm": ALG, "auth_data": {"public_key": s("backup-key")}},
                         t))["version"]
    await _ok(c, "PUT", f"/room_keys/keys/{q(private)}/sess1?version={version}", {
        "first_message_index": 0, "forwarded_count": 0, "is_verified": False,
        "session_data": {"ephemeral": "e", "ciphertext": s("backup"), "mac": "m"}}, t)
    # An email address bound to alice (the validation mail round trip is another test's).
    from homeserver.storage.threepids import Threepid

    now = int(hs.hs.reactor.seconds() * 1000)
    await hs.hs.services.threepids.store.add(
        Threepid("email", "alice@example.org", alice.user_id, now, now))
    eve = await c.register("eve", "eve-pw")
    since = (await _ok(c, "GET", "/sync?timeout=0", None, mallory.access_token))["next_batch"]
    return World(alice, mallory, mallory2, eve, since, private, invite_only, public, event,
                 public_event, f"#{alias_local}:test.local", filter_id, version, media, pending,
                 secrets)


# --- what alice sees ------------------------------------------------------------------------

def _strip(value: Any, keys: frozenset[str]) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v, keys) for k, v in value.items() if k not in keys}
    if isinstance(value, list):
        return [_strip(v, keys) for v in value]
    return value


# Parts that change without anyone acting on alice's data: clocks and tokens.
_VOLATILE = frozenset({"next_batch", "age", "last_seen_ts", "last_seen_ip", "last_active_ago",
                       "currently_active", "prev_batch", "start", "end", "presence",
                       "unsigned", "device_one_time_keys_count", "org.matrix.msc2732"
                       ".device_unused_fallback_key_types",
                       "device_unused_fallback_key_types", "device_lists", "ephemeral"})


async def snapshot(hs: RunningServer, w: World) -> dict[str, Any]:
    c = Client(hs.client_url)
    t = w.alice.access_token
    a = q(w.alice.user_id)
    paths = ["/sync?full_state=true", "/devices", "/pushers", "/pushrules/", "/account/3pid",
             "/room_keys/version", f"/room_keys/keys?version={w.version}",
             f"/user/{a}/account_data/org.example.secret", f"/user/{a}/filter/{w.filter_id}",
             f"/profile/{a}", "/joined_rooms", f"/presence/{a}/status"]
    for room in (w.private, w.invite_only, w.public):
        r = q(room)
        paths += [f"/rooms/{r}/state", f"/rooms/{r}/messages?dir=b&limit=100",
                  f"/rooms/{r}/members", f"/rooms/{r}/aliases", f"/directory/list/room/{r}",
                  f"/user/{a}/rooms/{r}/tags",
                  f"/user/{a}/rooms/{r}/account_data/org.example.secret"]
    out: dict[str, Any] = {}
    for path in paths:
        resp = await c.call("GET", path, None, t)
        out[path] = (resp.status, _strip(resp.json(), _VOLATILE))
    resp = await c.call("POST", "/keys/query", {"device_keys": {w.alice.user_id: []}}, t)
    out["keys"] = (resp.status, _strip(resp.json(), _VOLATILE))
    media = w.media[len("mxc://"):]
    resp = await c.call("GET", f"{V1}/media/download/{media}", None, t, raw_path=True)
    out["media"] = (resp.status, resp.body.hex())
    # Sorting state/member lists makes the comparison independent of order.
    for key, value in out.items():
        if isinstance(value, tuple) and isinstance(value[1], list):
            out[key] = (value[0], sorted(json.dumps(v, sort_keys=True) for v in value[1]))
    return out


# --- mallory's attempts ---------------------------------------------------------------------

Params = dict[str, str]


def _fill(template: str, params: Params) -> str:
    def one(name: str) -> str:
        return quote(params[name], safe="")

    out = template
    for name in params:
        out = out.replace("{" + name + "}", one(name))
    assert "{" not in out, template
    return out


def _uia(user: str, password: str) -> dict[str, Any]:
    return {"type": "m.login.password", "password": password,
            "identifier": {"type": "m.id.user", "user": user}}


def attempts(w: World) -> list[tuple[str, str, dict[str, str], Any, str | None]]:
    """(method, template, params, body, query) for every route: mallory aimed at alice's
    resources. A route may appear more than once (each room, each angle)."""
    server, media_id = w.media[len("mxc://"):].split("/", 1)
    _, pending_id = w.pending[len("mxc://"):].split("/", 1)
    base: Params = {
        "userId": w.alice.user_id, "roomId": w.private, "eventId": w.event,
        "deviceId": w.alice.device_id, "type": "org.example.secret", "filterId": w.filter_id,
        "tag": "u.work", "version": w.version, "sessionId": "sess1", "serverName": server,
        "mediaId": media_id, "fileName": "a.png", "keyName": "displayname",
        "eventType": "m.room.message", "stateKey": "", "txnId": f"m{next(_n)}",
        "receiptType": "m.read", "roomIdOrAlias": w.alias, "roomAlias": w.alias,
        "scope": "global", "kind": "content", "ruleId": "alicerule", "protocol": "x",
        "appserviceId": "x", "networkId": "x", "relType": "m.thread",
        "reportId": "1", "token": "abc", "purgeId": "abc", "deleteId": "abc",
        "destination": "x.org",
    }
    bodies: dict[tuple[str, str], Any] = {
        ("POST", f"{V3}/register"): {"username": "alice", "password": "x",
                                     "auth": {"type": "m.login.dummy"}},
        ("POST", f"{V3}/login"): {"type": "m.login.password", "password": "mallory-pw",
                                  "identifier": {"type": "m.id.user", "user": "alice"}},
        ("POST", f"{V1}/login/get_token"): {"auth": _uia("mallory", "mallory-pw")},
        ("POST", f"{V3}/refresh"): {"refresh_token": "not-alices-refresh-token"},
        ("POST", f"{V1}/refresh"): {"refresh_token": "not-alices-refresh-token"},
        ("POST", f"{V3}/account/password"): {"new_password": "pwned",
                                             "auth": _uia("alice", "mallory-pw")},
        ("POST", f"{V3}/account/deactivate"): {"auth": _uia("alice", "mallory-pw")},
        ("PUT", f"{V3}/devices/{{deviceId}}"): {"display_name": "pwned"},
        ("DELETE", f"{V3}/devices/{{deviceId}}"): {"auth": _uia("mallory", "mallory-pw")},
        ("POST", f"{V3}/delete_devices"): {"devices": [w.alice.device_id],
                                           "auth": _uia("mallory", "mallory-pw")},
        ("PUT", f"{V3}/profile/{{userId}}/{{keyName}}"): {"displayname": "pwned"},
        ("PUT", f"{V3}/user/{{userId}}/account_data/{{type}}"): {"v": "pwned"},
        ("PUT", f"{V3}/user/{{userId}}/rooms/{{roomId}}/account_data/{{type}}"): {"v": "pwned"},
        ("POST", f"{V3}/user/{{userId}}/filter"): {"room": {"limit": 1}},
        ("POST", f"{V3}/user_directory/search"): {"search_term": "alice"},
        ("POST", f"{V3}/createRoom"): {"room_alias_name": "alices-room"},
        ("PUT", f"{V3}/rooms/{{roomId}}/send/{{eventType}}/{{txnId}}"):
            {"msgtype": "m.text", "body": "pwned"},
        ("PUT", f"{V3}/rooms/{{roomId}}/state/{{eventType}}/{{stateKey}}"): {"name": "pwned"},
        ("PUT", f"{V3}/rooms/{{roomId}}/state/{{eventType}}"): {"name": "pwned"},
        ("PUT", f"{V3}/rooms/{{roomId}}/state/{{eventType}}/"): {"name": "pwned"},
        ("PUT", f"{V3}/rooms/{{roomId}}/redact/{{eventId}}/{{txnId}}"): {"reason": "pwned"},
        ("POST", f"{V3}/rooms/{{roomId}}/invite"): {"user_id": w.mallory.user_id},
        ("POST", f"{V3}/rooms/{{roomId}}/kick"): {"user_id": w.alice.user_id},
        ("POST", f"{V3}/rooms/{{roomId}}/ban"): {"user_id": w.alice.user_id},
        ("POST", f"{V3}/rooms/{{roomId}}/unban"): {"user_id": w.alice.user_id},
        ("PUT", f"{V3}/directory/room/{{roomAlias}}"): {"room_id": w.private},
        ("PUT", f"{V3}/directory/list/room/{{roomId}}"): {"visibility": "public"},
        ("PUT", f"{V3}/directory/list/appservice/{{networkId}}/{{roomId}}"):
            {"visibility": "public"},
        ("POST", f"{V3}/publicRooms"): {"filter": {"generic_search_term": "SECRET"}},
        ("POST", f"{V3}/rooms/{{roomId}}/upgrade"): {"new_version": "10"},
        ("POST", f"{V3}/rooms/{{roomId}}/report/{{eventId}}"): {"reason": "spam"},
        ("POST", f"{V3}/rooms/{{roomId}}/report"): {"reason": "spam"},
        ("POST", f"{V3}/users/{{userId}}/report"): {"reason": "spam"},
        ("POST", f"{V3}/search"): {"search_categories": {"room_events": {
            "search_term": "SECRET", "filter": {"rooms": [w.private, w.invite_only]}}}},
        ("PUT", f"{V3}/rooms/{{roomId}}/typing/{{userId}}"): {"typing": True, "timeout": 1000},
        ("POST", f"{V3}/rooms/{{roomId}}/read_markers"): {"m.fully_read": w.event},
        ("PUT", f"{V3}/presence/{{userId}}/status"): {"presence": "online"},
        ("PUT", f"{V3}/user/{{userId}}/rooms/{{roomId}}/tags/{{tag}}"): {"order": 0.5},
        ("PUT", f"{V3}/pushrules/{{scope}}/{{kind}}/{{ruleId}}"):
            {"actions": ["notify"], "pattern": "mallory"},
        ("PUT", f"{V3}/pushrules/{{scope}}/{{kind}}/{{ruleId}}/enabled"): {"enabled": False},
        ("PUT", f"{V3}/pushrules/{{scope}}/{{kind}}/{{ruleId}}/actions"): {"actions": []},
        # kind null deletes the caller's pusher with this app ID and pushkey: never alice's.
        ("POST", f"{V3}/pushers/set"): {"kind": None, "app_id": "org.example.app",
                                        "pushkey": "alice-pushkey"},
        ("POST", f"{V3}/keys/upload"): {"device_keys": {
            "user_id": w.alice.user_id, "device_id": w.alice.device_id,
            "algorithms": ["m.megolm.v1.aes-sha2"],
            "keys": {f"ed25519:{w.alice.device_id}": "pwned"}, "signatures": {}}},
        ("POST", f"{V3}/keys/query"): {"device_keys": {w.alice.user_id: []}},
        ("POST", f"{V3}/keys/claim"): {"one_time_keys": {w.alice.user_id: {
            "NOSUCHDEVICE": "signed_curve25519"}}},
        ("POST", f"{V3}/keys/device_signing/upload"): {
            **CrossSigning(w.alice.user_id).upload_body(), "auth": _uia("mallory", "mallory-pw")},
        ("POST", f"{V3}/keys/signatures/upload"): {w.alice.user_id: {w.alice.device_id: {
            "user_id": w.alice.user_id, "device_id": w.alice.device_id,
            "algorithms": [], "keys": {}, "signatures": {w.mallory.user_id: {"ed25519:X": "x"}}}}},
        ("PUT", f"{V3}/sendToDevice/{{eventType}}/{{txnId}}"): {"messages": {
            w.mallory.user_id: {"*": {"hello": "me"}}}},
        ("POST", f"{V3}/room_keys/version"): {"algorithm": ALG,
                                              "auth_data": {"public_key": "mallory"}},
        ("PUT", f"{V3}/room_keys/version/{{version}}"): {
            "algorithm": ALG, "auth_data": {"public_key": "pwned"}, "version": w.version},
        ("PUT", f"{V3}/room_keys/keys"): {"rooms": {w.private: {"sessions": {"sess1": {
            "first_message_index": 0, "forwarded_count": 0, "is_verified": True,
            "session_data": {"ciphertext": "pwned"}}}}}},
        ("PUT", f"{V3}/room_keys/keys/{{roomId}}"): {"sessions": {"sess1": {
            "first_message_index": 0, "forwarded_count": 0, "is_verified": True,
            "session_data": {"ciphertext": "pwned"}}}},
        ("PUT", f"{V3}/room_keys/keys/{{roomId}}/{{sessionId}}"): {
            "first_message_index": 0, "forwarded_count": 0, "is_verified": True,
            "session_data": {"ciphertext": "pwned"}},
        ("POST", f"{V3}/register/email/requestToken"): {
            "client_secret": "abc", "email": "alice@example.org", "send_attempt": 1},
        ("POST", f"{V3}/account/3pid/email/requestToken"): {
            "client_secret": "abc", "email": "alice@example.org", "send_attempt": 1},
        ("POST", f"{V3}/account/password/email/requestToken"): {
            "client_secret": "abc", "email": "alice@example.org", "send_attempt": 1},
        ("POST", "/_matrix/client/unstable/add_threepid/email/submit_token"): {
            "sid": "x", "client_secret": "abc", "token": "123"},
        ("POST", f"{V3}/account/3pid/add"): {"sid": "x", "client_secret": "abc",
                                             "auth": _uia("mallory", "mallory-pw")},
        ("POST", f"{V3}/account/3pid/delete"): {"medium": "email",
                                                "address": "alice@example.org"},
        ("POST", f"{SA1}/register"): {"nonce": "x", "username": "alice", "password": "x",
                                      "mac": "00"},
    }
    queries: dict[tuple[str, str], str] = {
        ("GET", f"{V3}/register/available"): "username=alice",
        ("GET", f"{V1}/register/m.login.registration_token/validity"): "token=alices",
        ("GET", f"{V3}/thirdparty/location"): "alias=" + quote(w.alias),
        ("GET", f"{V3}/thirdparty/user"): "userid=" + quote(w.alice.user_id),
        ("GET", f"{V3}/keys/changes"): f"from={w.since}&to={w.since}",
        ("GET", f"{V1}/mutual_rooms"): "user_id=" + quote(w.alice.user_id),
        ("GET", f"{V3}/events"): "timeout=0&room_id=" + quote(w.private),
        ("GET", "/_matrix/client/unstable/add_threepid/email/submit_token"):
            "sid=x&client_secret=abc&token=123",
        ("GET", f"{V1}/rooms/{{roomId}}/timestamp_to_event"): "ts=0&dir=f",
        ("GET", f"{V1}/media/preview_url"): "url=http%3A%2F%2F127.0.0.1%3A9%2F",
        ("GET", f"{MEDIA3}/preview_url"): "url=http%3A%2F%2F127.0.0.1%3A9%2F",
        ("GET", f"{V1}/media/thumbnail/{{serverName}}/{{mediaId}}"): "width=32&height=32",
        ("GET", f"{MEDIA3}/thumbnail/{{serverName}}/{{mediaId}}"): "width=32&height=32",
        ("GET", f"{V3}/sync"): "full_state=true&filter=" + quote(json.dumps(
            {"room": {"rooms": [w.private, w.invite_only]}})),
        ("GET", f"{V3}/room_keys/keys"): f"version={w.version}",
        ("DELETE", f"{V3}/room_keys/keys"): f"version={w.version}",
        ("GET", f"{V3}/room_keys/keys/{{roomId}}"): f"version={w.version}",
        ("DELETE", f"{V3}/room_keys/keys/{{roomId}}"): f"version={w.version}",
        ("GET", f"{V3}/room_keys/keys/{{roomId}}/{{sessionId}}"): f"version={w.version}",
        ("DELETE", f"{V3}/room_keys/keys/{{roomId}}/{{sessionId}}"): f"version={w.version}",
        ("PUT", f"{V3}/room_keys/keys"): f"version={w.version}",
        ("PUT", f"{V3}/room_keys/keys/{{roomId}}"): f"version={w.version}",
        ("PUT", f"{V3}/room_keys/keys/{{roomId}}/{{sessionId}}"): f"version={w.version}",
    }
    media_routes = {("PUT", f"{MEDIA3}/upload/{{serverName}}/{{mediaId}}"): pending_id}
    out: list[tuple[str, str, dict[str, str], Any, str | None]] = []
    # Mallory's own backup comes last: until then alice's version is "not found" for her.
    late = ("POST", f"{V3}/room_keys/version")
    for key, (kind, _) in [*(i for i in ROUTES.items() if i[0] != late), (late, ROUTES[late])]:
        method, template = key
        params = dict(base)
        if key in media_routes:
            params["mediaId"] = media_routes[key]
        if "state" in template and template.count("{eventType}"):
            params["eventType"] = "m.room.name" if method == "PUT" else "org.example.secret"
        body = bodies.get(key, {} if method in ("POST", "PUT", "DELETE") else None)
        used = {k: v for k, v in params.items() if "{" + k + "}" in template}
        rooms = [w.private, w.invite_only] if kind in (ROOM, USER) and "roomId" in used else [None]
        for room in rooms:
            p = dict(used, roomId=room) if room else used
            if room == w.invite_only and "eventId" in p:
                continue  # the event is the private room's
            out.append((method, template, p, body, queries.get(key)))
    return out


# Routes needing power in a room mallory has joined (the public room): each refused.
def power_attempts(w: World) -> list[tuple[str, str, Any]]:
    r = q(w.public)
    return [
        ("PUT", f"{V3}/rooms/{r}/state/m.room.power_levels/",
         {"users": {w.mallory.user_id: 100}}),
        ("PUT", f"{V3}/rooms/{r}/state/m.room.name/", {"name": "pwned"}),
        ("POST", f"{V3}/rooms/{r}/kick", {"user_id": w.alice.user_id}),
        ("POST", f"{V3}/rooms/{r}/ban", {"user_id": w.alice.user_id}),
        ("PUT", f"{V3}/rooms/{r}/redact/{q(w.public_event)}/r{next(_n)}", {}),
        ("POST", f"{V3}/rooms/{r}/upgrade", {"new_version": "10"}),
        ("PUT", f"{V3}/directory/list/room/{r}", {"visibility": "private"}),
        ("PUT", f"{V3}/rooms/{r}/typing/{q(w.alice.user_id)}", {"typing": True}),
        ("DELETE", f"{V3}/directory/room/{q(w.alias)}", None),
    ]


_LOGOUTS = {("POST", f"{V3}/logout"), ("POST", f"{V3}/logout/all")}


def _matches(status: int, body: Any, expect: Expect) -> bool:
    if expect == ALLOW:
        return 200 <= status < 300
    if expect == NOLEAK:
        return 200 <= status < 300 or (400 <= status < 500 and isinstance(body, dict)
                                       and "errcode" in body)
    if expect == HTML4XX:
        return 400 <= status < 500
    if expect == ANY4XX:
        return 400 <= status < 500 and isinstance(body, dict) and "errcode" in body
    errcode = body.get("errcode") if isinstance(body, dict) else None
    return (status, errcode) in expect


@dataclass
class Outcome:
    requests: int = 0
    wrong: list[str] = field(default_factory=list)
    leaks: list[str] = field(default_factory=list)


def _check(out: Outcome, w: World, what: str, status: int, body: Any, expect: Expect,
           raw: bytes | str) -> None:
    out.requests += 1
    if not _matches(status, body, expect):
        out.wrong.append(f"{what}: {status} {body!r:.200} (expected {expect})")
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    for value in w.secrets:
        if value in text:
            out.leaks.append(f"{what} leaked {value}")


async def run_attacks(hs: RunningServer, w: World) -> Outcome:
    out = Outcome()
    media_bodies = {"/_matrix/media/v1/create", f"{MEDIA3}/upload"}
    downloads = ("/media/download/", "/media/v3/download/", "/thumbnail/")
    for method, template, params, body, query in attempts(w):
        if (method, template) in _LOGOUTS:
            continue
        path = _fill(template, params) + (f"?{query}" if query else "")
        token = w.mallory.access_token
        headers = None
        if template in media_bodies or template.endswith("/upload/{serverName}/{mediaId}"):
            body, headers = b"mallory's bytes", {"Content-Type": "text/plain"}
        r = await request(method, hs.client_url + path, body, headers=headers,
                          access_token=token)
        expect = ROUTES[(method, template)][1]
        if r.status == 401 and isinstance(body, dict) and "auth" in body:
            # Interactive auth: go round once more with the session the server handed out.
            session = json.loads(r.body).get("session")
            if session is not None and expect != deny((401, "M_FORBIDDEN")):
                body = {**body, "auth": {**body["auth"], "session": session}}
                r = await request(method, hs.client_url + path, body, access_token=token)
        try:
            parsed = json.loads(r.body) if r.body else None
        except ValueError:
            parsed = None
        # Media bytes are not JSON; alice's media, fetched by its mxc, is allowed by the spec.
        raw: bytes = b"" if any(d in template for d in downloads) else r.body
        if template.endswith("/mutual_rooms") and (w.private.encode() in r.body
                                                   or w.invite_only.encode() in r.body):
            out.leaks.append(f"{path} named alice's private rooms: {r.body!r}")
        _check(out, w, f"{method} {path}", r.status, parsed, expect, raw)
    for method, path, body in power_attempts(w):
        status, parsed = await _raw(hs, method, path, body, w.mallory.access_token)
        _check(out, w, f"{method} {path} (no power)", status, parsed, F403,
               json.dumps(parsed))
    status, parsed = await _raw(hs, "GET", f"{V3}/presence/{q(w.alice.user_id)}/status",
                                None, w.eve.access_token)
    _check(out, w, "GET presence (eve)", status, parsed, F403, json.dumps(parsed))
    # Mallory's own sessions end last; alice's sessions are untouched (the snapshot logs in).
    for method, template, token in ((*min(_LOGOUTS), w.mallory2.access_token),
                                    (*max(_LOGOUTS), w.mallory.access_token)):
        status, parsed = await _raw(hs, method, template, {}, token)
        _check(out, w, f"{method} {template}", status, parsed, ALLOW, json.dumps(parsed))
    return out


@pytest_twisted.ensureDeferred
async def test_mallory_cannot_touch_alices_data(hs: RunningServer) -> None:
    w = await build_world(hs)
    before = await snapshot(hs, w)
    # The snapshot shows alice's secrets: the leak check below is not vacuous.
    assert all(value in json.dumps(before) for value in w.secrets), w.secrets
    outcome = await run_attacks(hs, w)
    # Every route in the table was tried at least once.
    assert outcome.requests >= len(ROUTES)
    assert not outcome.wrong, "\n".join(outcome.wrong)
    assert not outcome.leaks, "\n".join(outcome.leaks)
    after = await snapshot(hs, w)
    changed = [k for k in before if before[k] != after[k]]
    assert not changed, {k: (before[k], after[k]) for k in changed}
    # Alice can still log in with her own password; her pending upload is still hers to fill.
    assert (await Client(hs.client_url).login("alice", "alice-pw")).status == 200
    _, pending_id = w.pending[len("mxc://"):].split("/", 1)
    r = await request("PUT", hs.client_url + f"{MEDIA3}/upload/test.local/{pending_id}",
                      b"alice's bytes", headers={"Content-Type": "text/plain"},
                      access_token=w.alice.access_token)
    assert r.status == 200, r.body
