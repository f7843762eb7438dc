"""A real Synapse on loopback, the peer of the interop tests and the benchmark.

Synapse lives in its own venv (``scripts/lib/synapse.sh``: ``.venv-synapse``, or
$HS_SYNAPSE_VENV). Tests call ``require_synapse()``: it skips when that venv is absent, except
under CI=true, where Synapse is part of the suite and its absence fails the test.

``SynapseProcess`` writes a config for one server (SQLite, or its own fresh PostgreSQL
database), starts it, waits until both listeners answer, registers users through the
shared-secret admin API, and stops it. Its server name is the IP literal of its federation
listener (``127.0.0.1:PORT``), so other servers reach it with no DNS or ``.well-known``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# No rate limit a test or a benchmark could reach (Synapse has no "off" switch for them).
_UNLIMITED = {"per_second": 100000, "burst_count": 100000}
_RATE_LIMITS: dict[str, Any] = {
    "rc_message": _UNLIMITED,
    "rc_registration": _UNLIMITED,
    "rc_registration_token_validity": _UNLIMITED,
    "rc_login": {"address": _UNLIMITED, "account": _UNLIMITED,
                 "failed_attempts": _UNLIMITED},
    "rc_admin_redaction": _UNLIMITED,
    "rc_joins": {"local": _UNLIMITED, "remote": _UNLIMITED},
    "rc_joins_per_room": _UNLIMITED,
    "rc_invites": {"per_room": _UNLIMITED, "per_user": _UNLIMITED, "per_issuer": _UNLIMITED},
    "rc_third_party_invite": _UNLIMITED,
    "rc_3pid_validation": _UNLIMITED,
    "rc_media_create": _UNLIMITED,
    "rc_key_requests": _UNLIMITED,
    "rc_presence": {"per_user": _UNLIMITED},
    "rc_delayed_event_mgmt": _UNLIMITED,
    "rc_reports": _UNLIMITED,
    "rc_room_creation": _UNLIMITED,
    "rc_profile": _UNLIMITED,
    "rc_user_directory": _UNLIMITED,
    "rc_federation": {"window_size": 1000, "sleep_limit": 10000, "sleep_delay": 0,
                      "reject_limit": 10000, "concurrent": 10000},
    "federation_rr_transactions_per_room_per_second": 10000,
}


def synapse_venv() -> str:
    return os.environ.get("HS_SYNAPSE_VENV") or os.path.join(ROOT, ".venv-synapse")


def synapse_unavailable_reason() -> str | None:
    """None when the Synapse venv is installed; otherwise why not."""
    venv = synapse_venv()
    if not os.path.exists(os.path.join(venv, ".installed")):
        return (f"Synapse is not installed at {venv} (run scripts/test, or "
                "`. scripts/lib/synapse.sh && ensure_synapse_venv`)")
    return None


def require_synapse() -> None:
    """Skip the calling test without Synapse; under CI=true its absence is a failure."""
    import pytest

    reason = synapse_unavailable_reason()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI=true requires it", pytrace=False)
    pytest.skip(reason)


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class SynapseUser:
    user_id: str
    access_token: str
    device_id: str
    password: str


@dataclass
class SynapseProcess:
    """One Synapse. ``postgres_dsn``: a PostgreSQL server to create its own database on
    (dropped by ``stop``); None runs it on SQLite. ``config_overrides`` go into
    homeserver.yaml last."""

    data_dir: str
    host: str = "127.0.0.1"
    postgres_dsn: str | None = None
    config_overrides: dict[str, Any] = field(default_factory=dict)
    client_port: int = 0
    federation_port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    registration_secret: str = field(default_factory=lambda: secrets.token_hex(16))
    # $HS_SYNAPSE_LOG_LEVEL=INFO (or DEBUG) when investigating a failure.
    log_level: str = field(
        default_factory=lambda: os.environ.get("HS_SYNAPSE_LOG_LEVEL", "WARNING"))
    _pg_database: str | None = None

    def __post_init__(self) -> None:
        self.client_port = self.client_port or _free_port(self.host)
        self.federation_port = self.federation_port or _free_port(self.host)

    @property
    def server_name(self) -> str:
        return f"{self.host}:{self.federation_port}"

    @property
    def client_url(self) -> str:
        return f"http://{self.host}:{self.client_port}"

    @property
    def federation_url(self) -> str:
        return f"https://{self.host}:{self.federation_port}"

    @property
    def config_path(self) -> str:
        return os.path.join(self.data_dir, "homeserver.yaml")

    @property
    def log_path(self) -> str:
        return os.path.join(self.data_dir, "synapse.log")

    # -- configuration -------------------------------------------------------------------

    def _database_section(self) -> dict[str, Any]:
        if self.postgres_dsn is None:
            return {"name": "sqlite3",
                    "args": {"database": os.path.join(self.data_dir, "homeserver.db")}}
        import psycopg
        from psycopg.conninfo import conninfo_to_dict

        # Synapse wants a database of its own with C collation (it refuses others).
        self._pg_database = f"synapse_{secrets.token_hex(6)}"
        with psycopg.connect(self.postgres_dsn, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {self._pg_database} TEMPLATE template0 "
                         "ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'")
        info = conninfo_to_dict(self.postgres_dsn)
        args = {k: v for k, v in info.items()
                if k in ("user", "password", "host", "port") and v is not None}
        return {"name": "psycopg2", "allow_unsafe_locale": True,
                "args": {**args, "database": self._pg_database, "cp_min": 1, "cp_max": 5}}

    def write_config(self) -> None:
        from signedjson.key import generate_signing_key, write_signing_keys

        from homeserver.tls import ensure_certificate

        os.makedirs(self.data_dir, exist_ok=True)
        key_path = os.path.join(self.data_dir, "signing.key")
        if not os.path.exists(key_path):
            with open(key_path, "w") as f:
                write_signing_keys(f, [generate_signing_key("a_" + secrets.token_hex(2))])
        cert, tls_key = (os.path.join(self.data_dir, n) for n in ("tls.crt", "tls.key"))
        ensure_certificate(cert, tls_key, self.server_name)
        log_config = os.path.join(self.data_dir, "log.yaml")
        with open(log_config, "w") as f:
            yaml.safe_dump({
                "version": 1,
                "formatters": {"plain": {"format": "%(asctime)s %(name)s %(levelname)s "
                                                   "%(message)s"}},
                "handlers": {"file": {"class": "logging.FileHandler", "formatter": "plain",
                                      "filename": self.log_path}},
                "root": {"level": self.log_level, "handlers": ["file"]},
                "disable_existing_loggers": False,
            }, f)
        listen = [self.host]
        config: dict[str, Any] = {
            "server_name": self.server_name,
            "public_baseurl": self.client_url + "/",
            "pid_file": os.path.join(self.data_dir, "homeserver.pid"),
            "report_stats": False,
            "listeners": [
                {"port": self.client_port, "bind_addresses": listen, "type": "http",
                 "tls": False, "x_forwarded": False,
                 "resources": [{"names": ["client", "media"], "compress": False}]},
                {"port": self.federation_port, "bind_addresses": listen, "type": "http",
                 "tls": True,
                 "resources": [{"names": ["federation", "keys", "media"], "compress": False}]},
            ],
            "tls_certificate_path": cert,
            "tls_private_key_path": tls_key,
            "signing_key_path": key_path,
            "log_config": log_config,
            "media_store_path": os.path.join(self.data_dir, "media"),
            "database": self._database_section(),
            "enable_registration": False,
            "registration_shared_secret": self.registration_secret,
            "macaroon_secret_key": secrets.token_hex(16),
            "form_secret": secrets.token_hex(16),
            "bcrypt_rounds": 4,
            "enable_metrics": False,
            "url_preview_enabled": False,
            # Loopback federation with self-signed certificates and IP-literal names: no
            # certificate checks, no notary, and no address blocklist (Synapse does not
            # consult its allowlist for IP-literal server names).
            "federation_verify_certificates": False,
            "trusted_key_servers": [],
            "suppress_key_server_warning": True,
            "ip_range_blacklist": [],
            "ip_range_whitelist": ["127.0.0.0/8"],
            "allow_public_rooms_over_federation": True,
            # Synapse lets no one publish to its room directory unless a rule allows it.
            "room_list_publication_rules": [{"action": "allow"}],
            "presence": {"enabled": True},
            # Tests poll /sync: a cached answer (2 minutes by default) would hide changes.
            "caches": {"sync_response_cache_duration": 0},
            **_RATE_LIMITS,
            **self.config_overrides,
        }
        with open(self.config_path, "w") as f:
            yaml.safe_dump(config, f)

    # -- process -------------------------------------------------------------------------

    def start(self, timeout: float = 120) -> None:
        python = os.path.join(synapse_venv(), "bin", "python")
        self.write_config()
        out = open(os.path.join(self.data_dir, "synapse.out"), "wb")
        self.proc = subprocess.Popen(
            [python, "-m", "synapse.app.homeserver", "--config-path", self.config_path],
            cwd=self.data_dir, stdout=out, stderr=subprocess.STDOUT,
        )
        out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Synapse exited at start:\n{self.log()}")
            if self._answers(f"{self.client_url}/health") and self._answers(
                    f"{self.federation_url}/_matrix/federation/v1/version"):
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"Synapse did not answer within {timeout}s:\n{self.log()}")

    @staticmethod
    def _answers(url: str) -> bool:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as r:
                return bool(r.status == 200)
        except (OSError, urllib.error.HTTPError):
            return False

    def log(self, tail: int = 20000) -> str:
        parts = []
        for name in ("synapse.out", "synapse.log"):
            path = os.path.join(self.data_dir, name)
            if os.path.exists(path):
                with open(path, errors="replace") as f:
                    parts.append(f"--- {name}\n" + f.read()[-tail:])
        return "\n".join(parts)

    def stop(self, timeout: float = 30) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        finally:
            if self._pg_database is not None and self.postgres_dsn is not None:
                import psycopg

                with psycopg.connect(self.postgres_dsn, autocommit=True) as conn:
                    conn.execute(f"DROP DATABASE IF EXISTS {self._pg_database} WITH (FORCE)")
                self._pg_database = None

    def __enter__(self) -> SynapseProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- users ---------------------------------------------------------------------------

    def registration_body(self, nonce: str, localpart: str, password: str,
                          admin: bool = False) -> dict[str, Any]:
        """The shared-secret registration request (HMAC-SHA1 over nonce, name, password,
        admin flag), for callers that bring their own HTTP client."""
        mac = hmac.new(self.registration_secret.encode(), digestmod=hashlib.sha1)
        mac.update(b"\x00".join([nonce.encode(), localpart.encode(), password.encode(),
                                 b"admin" if admin else b"notadmin"]))
        return {"nonce": nonce, "username": localpart, "password": password,
                "admin": admin, "mac": mac.hexdigest()}

    def register_user(self, localpart: str, password: str = "s3cret-pass",
                      admin: bool = False) -> SynapseUser:
        """Registers through /_synapse/admin/v1/register (blocking; it involves no other
        server, so it is safe to call from a test running a server in-process)."""
        url = f"{self.client_url}/_synapse/admin/v1/register"
        _, nonce = _http_json("GET", url)
        status, body = _http_json(
            "POST", url, self.registration_body(nonce["nonce"], localpart, password, admin))
        if status != 200:
            raise RuntimeError(f"Synapse registration of {localpart} failed: {status} {body}")
        return SynapseUser(body["user_id"], body["access_token"], body["device_id"], password)


def _http_json(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")
