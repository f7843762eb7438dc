"""The documented YAML config that ``homeserver generate-config`` writes.

``config/homeserver.sample.yaml`` is this template rendered with the sample's arguments; a test
keeps the two equal and checks that every key the loader reads is documented here.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field


@dataclass
class TemplateArgs:
    server_name: str
    data_dir: str
    client_listen: tuple[str, int] = ("127.0.0.1", 8008)
    federation_listen: tuple[str, int] = ("127.0.0.1", 8448)
    database: str | None = None
    enable_registration: bool = False
    dev_federation: bool = False
    testing: bool = False
    app_services: list[str] = field(default_factory=list)
    # Server name -> "host:port" for federation.static_servers.
    static_servers: dict[str, str] = field(default_factory=dict)
    # Serve /metrics on a listener of its own instead of the client listener.
    metrics_listen: tuple[str, int] | None = None


_RESERVED = ", ".join(
    f'"{n}"'
    for n in ("admin", "administrator", "root", "support", "security", "abuse", "postmaster",
              "hostmaster", "webmaster", "noreply", "server", "notices")
)


def _q(value: str) -> str:
    # JSON strings are valid YAML scalars and escape whatever the operator typed.
    return json.dumps(value)


def _b(value: bool) -> str:
    return "true" if value else "false"


def _listeners(args: TemplateArgs) -> str:
    (chost, cport), (fhost, fport) = args.client_listen, args.federation_listen
    if (chost, cport) == (fhost, fport):
        return f"""\
  # One TLS listener serves every API, as conformance suites and some deployments expect.
  - bind: {_q(chost)}
    port: {cport}
    tls: true
    resources: [client, federation, keys, media, admin, metrics]
"""
    return f"""\
  # The client-server API (what apps talk to). Put a TLS reverse proxy in front of it,
  # or set tls: true to serve TLS here with the certificate below.
  - bind: {_q(chost)}
    port: {cport}
    tls: false
    resources: [client, media, admin{"" if args.metrics_listen else ", metrics"}]
    # Trust X-Forwarded-For from a reverse proxy for client addresses in logs and limits.
    x_forwarded: false
  # The server-server API (other homeservers) and the server key endpoints.
  - bind: {_q(fhost)}
    port: {fport}
    tls: true
    resources: [federation, keys, media]
{_metrics_listener(args)}"""


def _metrics_listener(args: TemplateArgs) -> str:
    if args.metrics_listen is None:
        return ""
    host, port = args.metrics_listen
    return f"""\
  # Prometheus metrics (and /health) only: keep it where only your scraper reaches it.
  - bind: {_q(host)}
    port: {port}
    tls: false
    resources: [metrics]
"""


def _json_map(value: dict[str, str]) -> str:
    return json.dumps(dict(sorted(value.items())), separators=(", ", ": "))


def render_config(args: TemplateArgs) -> str:
    data_dir = os.path.abspath(args.data_dir)
    database = args.database or f"sqlite://{os.path.join(data_dir, 'homeserver.db')}"
    app_services = " []\n"
    if args.app_services:
        app_services = "\n" + "".join(f"  - {_q(p)}\n" for p in args.app_services)
    return f"""\
# Homeserver configuration. Every key is documented here; keys left out take the default shown.
# A wrong or unknown key stops the server with a message naming it.

# The domain of this server's user IDs (@alice:<server_name>) and room aliases.
# It cannot change once users exist.
server_name: {_q(args.server_name)}

# Where the server keeps its database (SQLite), signing key, TLS certificate and media.
data_dir: {_q(data_dir)}

# The URL clients use to reach the client API. Default: the client listener's address.
# public_baseurl: "https://matrix.example.com/"

# The ed25519 key that signs this server's events and requests, in the spec's format
# "ed25519 <key_id> <unpadded base64 seed>". Generated on first start when missing.
# signing_key_path: "<data_dir>/signing.key"

# The room version of new rooms (1-12).
default_room_version: "12"

database:
  # sqlite:///absolute/path.db (embedded, no set-up) or a PostgreSQL DSN such as
  # postgresql://user:password@host:5432/dbname (production).
  url: {_q(database)}
  # PostgreSQL connection pool bounds. SQLite always uses a single writer connection.
  pool_min: 1
  pool_max: 10
  # Seconds to wait for a PostgreSQL connection before failing the request.
  connect_timeout: 10

# Each listener binds one address and serves the resources it names:
#   client (client-server API, /.well-known/matrix/client), federation (server-server API,
#   /.well-known/matrix/server), keys (/_matrix/key), media (content repository), metrics,
#   admin (operator API). /health is served on every listener.
listeners:
{_listeners(args)}
# The certificate and key for listeners with tls: true. When both files are missing, a
# self-signed certificate for server_name is generated there on first start.
tls:
  certificate_path: {_q(os.path.join(data_dir, "tls.crt"))}
  private_key_path: {_q(os.path.join(data_dir, "tls.key"))}

registration:
  # Let anyone register an account through the client API.
  enabled: {_b(args.enable_registration)}
  # With registration enabled: require a registration token (m.login.registration_token)
  # made by an admin, instead of no verification at all (m.login.dummy).
  require_token: false
  # The secret for shared-secret registration (/_synapse/admin/v1/register), which works
  # even with registration disabled. Unset: that endpoint is off.
  # shared_secret: "a long random string"
  # Localparts nobody may register through the client API (register-user still can).
  reserved_localparts: [{"" if args.testing else _RESERVED}]

rate_limiting:
  # Rate limits on login, registration and message sending. Off only for tests and benchmarks.
  enabled: {_b(not args.testing)}
  # Each limit: a sustained rate (per_second) and how many may come at once (burst).
  login_per_address:
    per_second: 0.17
    burst: 5
  login_failures_per_account:
    per_second: 0.17
    burst: 3
  registration_per_address:
    per_second: 0.17
    burst: 3
  messages_per_user:
    per_second: 0.2
    burst: 10
  # Media uploads (and /create reservations) per user.
  media_uploads_per_user:
    per_second: 1.0
    burst: 20

sessions:
  # Clients that ask for a refresh token get access tokens that expire after this long.
  refreshable_access_token_lifetime_ms: 300000
  # How long a refresh token stays valid; unset: until used or its device is removed.
  # refresh_token_lifetime_ms: 2592000000
  # Lifetime of the single-use tokens from /login/get_token (m.login.token).
  login_token_lifetime_ms: 120000

# Allow guest accounts.
guest_access: {_b(args.testing)}

room_directory:
  # Let any user publish rooms to the public room directory (otherwise: server admins only).
  publish_by_anyone: {_b(args.testing)}
  # Let other servers list our public rooms (GET/POST /_matrix/federation/v1/publicRooms).
  allow_public_rooms_over_federation: false

password_hashing:
  # bcrypt cost factor (4-31); 12 costs about 0.25 s a login. 4 is for tests only.
  bcrypt_rounds: {4 if args.testing else 12}

# Outbound requests: federation, push gateways, application services, URL previews.
# Both are for tests and demos only: never enable them on a server facing the internet.
outbound_requests:
  accept_self_signed: {_b(args.dev_federation)}
  allow_private_addresses: {_b(args.dev_federation)}

federation:
  # Server name -> host:port, bypassing discovery (tests and closed deployments).
  static_servers: {_json_map(args.static_servers)}
  # Serve /.well-known/matrix/server delegating federation to this host:port, if set.
  # well_known_server: "matrix.example.com:443"
  # Notary servers asked for another server's signing keys when that server cannot be
  # reached directly, each pinned to its own keys. An entry looks like
  #   {{server_name: "notary.example.com", verify_keys: {{"ed25519:auto": "<base64 key>"}}}}
  trusted_key_servers: []
  # Keys this server signed with in the past, still published so others can check old
  # events, by key ID:
  #   {{"ed25519:a_old": {{key: "<unpadded base64 verify key>", expired_ts: 1700000000000}}}}
  old_signing_keys: {{}}
  # Which servers to federate with, by server name or glob pattern ("*.example.com").
  # Requests from any other server are refused (403) and nothing is sent to it. Unset:
  # every server that is not blocked.
  # allowed_servers: ["example.org", "*.example.net"]
  blocked_servers: []
  # Every request to another server must complete (connect, headers, whole body) within
  # this many seconds, with a response body of at most max_response_bytes; a peer that is
  # slower or sends more is cut off and treated as failing (see docs/limits.md).
  request_timeout_seconds: 60
  max_response_bytes: 52428800
  # Requests in flight to one server at a time (transactions, fetches, media); more wait.
  max_concurrent_requests_per_destination: 16

limits:
  # The largest JSON request body accepted (413 M_TOO_LARGE beyond it).
  max_json_body_bytes: 10485760
  # Requests one access token may have in flight at once; more get 429 M_LIMIT_EXCEEDED.
  # Every bound is listed in docs/limits.md.
  max_concurrent_requests_per_client: 100
  # In-memory caches (events, room heads, state, push rules...): every default size is
  # multiplied by global_factor; sizes sets a cache by its name (as in the
  # homeserver_cache_size metric), e.g. {{events: 200000}}.
  # Undelivered to-device messages kept per device (the oldest go first): a device that
  # never syncs cannot fill the database.
  max_to_device_messages_per_device: 10000
  caches:
    global_factor: 1.0
    sizes: {{}}

# The media repository: uploads, downloads, thumbnails and URL previews.
media:
  # Where files and thumbnails are kept, each named by the SHA-256 of its bytes.
  # store_path: "<data_dir>/media"
  # The largest upload accepted (413 M_TOO_LARGE beyond it), in bytes.
  max_upload_bytes: 52428800
  # Images with more pixels than this get no thumbnails (decompression bombs).
  max_image_pixels: 32000000
  # Thumbnails made for every uploaded image (crop: exactly this size; scale: fits inside it,
  # keeping the aspect ratio). Clients asking for other sizes get the closest larger one.
  thumbnail_sizes:
    - width: 32
      height: 32
      method: crop
    - width: 96
      height: 96
      method: crop
    - width: 320
      height: 240
      method: scale
    - width: 640
      height: 480
      method: scale
    - width: 800
      height: 600
      method: scale
  # The unauthenticated /_matrix/media/v3 download and thumbnail endpoints (deprecated by the
  # spec). false freezes them: they serve only media stored while this was true; newer media
  # needs the authenticated /_matrix/client/v1/media endpoints.
  enable_legacy_unauthenticated_media: false
  # A media ID reserved with /_matrix/media/v1/create expires if nothing is uploaded in time.
  unused_upload_expiry_ms: 86400000
  # How many reserved but not yet uploaded media IDs one user may hold.
  max_pending_uploads_per_user: 5
  # The largest file fetched from another server, and how many fetches run at once.
  max_remote_bytes: 52428800
  max_concurrent_remote_fetches: 10
  # How many bytes of uploads one user may keep; unset: no quota.
  # max_storage_bytes_per_user: 10737418240
  url_preview:
    # Let the server fetch web pages that users link to, to show a preview.
    enabled: false
    # Private, loopback, link-local, multicast and reserved addresses are never fetched
    # (unless outbound_requests.allow_private_addresses is set); ranges listed here are
    # fetched anyway, e.g. an intranet site.
    allowed_ip_ranges: []
    # Further ranges never fetched.
    blocked_ip_ranges: []
    # Pages and images larger than this are not fetched, in bytes.
    max_page_bytes: 10485760
    # Give up on a page after this many seconds.
    timeout_seconds: 10

# Application service registration files (YAML), one per bridge or bot (docs/appservices.md).
# Their url must be a public address with a valid certificate unless outbound_requests allows
# self-signed certificates, and a private or loopback address unless allowed below (or by
# outbound_requests.allow_private_addresses, which opens it for federation too).
app_service_config_files:{app_services}
# Let application-service URLs be on loopback or private addresses (a bridge running beside
# this server, e.g. http://localhost:29319), without opening those to federation.
app_service_allow_private_addresses: false
# End-to-end encryption policy. Clients encrypt; the server only decides defaults.
encryption:
  # Which new rooms are created with encryption switched on: "all" rooms, "private" chats and
  # direct messages (every room not created as public), or "off" (clients choose).
  by_default: "private"
  # Refuse plaintext messages (m.room.message) from this server's users in encrypted rooms.
  require: false

# Presence (online, unavailable, offline) shared with everyone in a room with the user.
presence:
  # When off, the presence endpoints still answer, but nothing is stored or sent to anyone.
  enabled: true
  # An online user with no activity (sending events, setting presence) for this long is
  # shown as unavailable.
  idle_timeout_ms: 300000
  # A user with no /sync in flight for this long after their last one is shown as offline.
  offline_timeout_ms: 30000

# Push notifications: push rules, unread counts and pushers (push gateways).
push:
  # Send event content to push gateways (pushers asking for event_id_only never get it).
  include_content: true
  # Keep the mention rules that look at the message body (.m.rule.contains_display_name,
  # .m.rule.contains_user_name, .m.rule.roomnotif), removed from the spec in v1.17, for
  # clients that do not send m.mentions. They never apply to events that carry m.mentions.
  legacy_mention_rules: true
  # The badge count sent to push gateways: false counts unread notifications, true counts
  # rooms with unread notifications.
  group_unread_count_by_room: false
  # Notifications (GET /notifications, unread counts) older than this many days are deleted.
  notification_retention_days: 30

# Email: addresses on accounts (validation, password reset, login with an email) and email
# notifications (email pushers), sent through an SMTP server. Links in the emails point at
# public_baseurl.
email:
  enabled: false
  smtp_host: "localhost"
  smtp_port: 25
  # "starttls" (required), "tls" (implicit TLS, usually port 465) or "none".
  tls: "starttls"
  # smtp_user: "matrix"
  # smtp_password: "secret"
  # The sender of every email; default "Matrix <noreply@SERVER_NAME>".
  # from: "Example Chat <noreply@example.com>"
  # The name of the service in the emails.
  app_name: "Matrix"
  # How long a validation link stays valid.
  validation_token_lifetime: "1h"
  # The domains a client's next_link (where the validation page sends the user) may point
  # at; others are refused. Unset: any domain, but the page only shows the link instead of
  # redirecting to it.
  # next_link_domain_whitelist: ["chat.example.com"]
  # Email pushers: how long a notification waits unread before it is mailed (ms); the
  # notifications arriving meanwhile join the same email. Encrypted rooms' messages are
  # never quoted.
  enable_notifications: true
  notification_delay_ms: 600000

# Server notices (POST /_synapse/admin/v1/send_server_notice): messages from the server to a
# user, in a room of their own tagged m.server_notice. Off unless the sender is named.
server_notices:
  # The localpart of the user that sends them (created when first needed).
  # system_mxid_localpart: "notices"
  system_mxid_display_name: "Server Notices"
  # system_mxid_avatar_url: "mxc://example.com/abcdef"
  room_name: "Server Notices"

# Message retention: message events older than their room's max_lifetime (m.room.retention,
# else the default policy) are purged by a background job; state events and the newest
# events of each room are kept (docs/retention.md). Durations: 30d, 12h, 15m, or ms.
retention:
  enabled: false
  # The policy of rooms without m.room.retention. Unset: their messages are kept for ever.
  default_policy:
    # min_lifetime: 1d
    # max_lifetime: 1y
  # A room's max_lifetime outside these bounds is clamped to them.
  # allowed_lifetime_min: 1d
  # allowed_lifetime_max: 1y
  # How often the purge job runs.
  purge_interval: 12h

# Who users and other operators can reach about this server, served as
# /.well-known/matrix/support (404 while neither is set). Each contact has a role
# (m.role.admin, m.role.security or a namespaced one) and a matrix_id or email_address:
#   contacts:
#     - {{role: "m.role.admin", matrix_id: "@admin:example.com"}}
#     - {{role: "m.role.security", email_address: "security@example.com"}}
support:
  contacts: []
  # support_page: "https://example.com/support"

# TURN servers for voice and video calls, handed to clients by /voip/turnServer (an empty
# answer while turn_uris is empty). With turn_shared_secret (coturn's use-auth-secret) each
# user gets credentials valid for turn_user_lifetime_ms; otherwise turn_username and
# turn_password are given to everyone.
voip:
  turn_uris: []
  # turn_shared_secret: "a long random secret shared with the TURN server"
  # turn_username: "turnuser"
  # turn_password: "turnpassword"
  turn_user_lifetime_ms: 3600000
  turn_allow_guests: true

logging:
  # DEBUG, INFO, WARNING or ERROR.
  level: "INFO"
  # "text" (one line per record) or "json" (one JSON object per line, for log shippers).
  format: "text"
  # Write here instead of stderr (relative paths are in the data dir). The file is reopened
  # when log rotation renames or removes it (logrotate without copytruncate works).
  # file: "homeserver.log"
"""
