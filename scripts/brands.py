"""The three-brand demo: photos.test, messenger.test and chat.test, three homeservers on this
machine, each with its own data dir, SQLite database and signing key, federating over loopback
TLS. One user per brand; an end-to-end encrypted DM across two brands and an encrypted group
room across all three, with real Olm/Megolm (matrix-nio); then what each user sees and what
each server stored (ciphertext only). Run it through ``scripts/brands``.

This drives the servers from outside only: the ``homeserver`` command line, the client-server
API and each server's SQLite file, read-only."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEGOLM = "m.megolm.v1.aes-sha2"


@dataclass
class Brand:
    server_name: str
    localpart: str
    display_name: str
    client_port: int
    federation_port: int
    data_dir: str = ""
    proc: subprocess.Popen[bytes] | None = None
    client: Any = None
    # room_id -> [(sender, body)] as this brand's user decrypted them
    seen: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    undecrypted: list[Any] = field(default_factory=list)

    @property
    def user_id(self) -> str:
        return f"@{self.localpart}:{self.server_name}"

    @property
    def password(self) -> str:
        return f"{self.localpart}-brands-demo"

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def config_path(self) -> str:
        return os.path.join(self.data_dir, "homeserver.yaml")

    @property
    def database_path(self) -> str:
        return os.path.join(self.data_dir, "homeserver.db")


def default_brands() -> list[Brand]:
    return [
        Brand("photos.test", "alice", "Alice (photos)", 8101, 8441),
        Brand("messenger.test", "bob", "Bob (messenger)", 8102, 8442),
        Brand("chat.test", "carol", "Carol (chat)", 8103, 8443),
    ]


def generate_config_args(brand: Brand, brands: list[Brand], data_dir: str) -> list[str]:
    """The ``homeserver generate-config`` arguments of one brand: open registration (the demo
    registers its users through the API), dev federation (self-signed certificates, loopback
    peers) and the other brands in the static server map."""
    args = [
        "generate-config", "--server-name", brand.server_name, "--data-dir", data_dir,
        "--client-listen", f"127.0.0.1:{brand.client_port}",
        "--federation-listen", f"127.0.0.1:{brand.federation_port}",
        "--database", "sqlite://" + os.path.join(os.path.abspath(data_dir), "homeserver.db"),
        "--enable-registration", "--dev-federation",
    ]
    for other in brands:
        if other is not brand:
            args += ["--static-server", f"{other.server_name}=127.0.0.1:{other.federation_port}"]
    return args


def homeserver_cli(*args: str) -> None:
    result = subprocess.run([sys.executable, "-m", "homeserver", *args], cwd=ROOT,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"brands: homeserver {args[0]} failed:\n{result.stderr}")


def write_examples(out_dir: str) -> None:
    """config/brands/*.yaml: each brand's config as the demo generates it, with data under
    /var/lib/brands/<server name>."""
    brands = default_brands()
    os.makedirs(out_dir, exist_ok=True)
    for b in brands:
        path = os.path.join(os.path.abspath(out_dir), f"{b.server_name}.yaml")
        homeserver_cli(*generate_config_args(b, brands, f"/var/lib/brands/{b.server_name}"),
                       "-o", path)
        print(f"wrote {path}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _die_with_parent() -> None:
    # Linux: the servers get SIGTERM when this script dies, even by SIGKILL, so a killed
    # demo leaves no server behind.
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def start_server(brand: Brand) -> None:
    log = open(os.path.join(brand.data_dir, "server.log"), "wb")
    brand.proc = subprocess.Popen(
        [sys.executable, "-m", "homeserver", "run", "--config", brand.config_path],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
    )
    log.close()


def wait_healthy(brand: Brand, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert brand.proc is not None
        if brand.proc.poll() is not None:
            raise SystemExit(f"brands: {brand.server_name} exited at start; see "
                             f"{brand.data_dir}/server.log")
        try:
            with urllib.request.urlopen(f"{brand.client_url}/health", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"brands: {brand.server_name} did not answer within {timeout:.0f}s")


def stop_servers(brands: list[Brand]) -> None:
    for b in brands:
        if b.proc is not None and b.proc.poll() is None:
            b.proc.send_signal(signal.SIGTERM)
    for b in brands:
        if b.proc is not None:
            try:
                b.proc.wait(30)
            except subprocess.TimeoutExpired:
                b.proc.kill()
                b.proc.wait()


# --- the clients (matrix-nio with its e2e extra: Olm/Megolm through vodozemac) ---------------

def _nio() -> Any:
    try:
        import nio
    except ImportError:
        raise SystemExit("brands: needs matrix-nio[e2e]; run it through scripts/brands, which "
                         "installs the project's demo extra") from None
    if not getattr(nio.crypto, "ENCRYPTION_ENABLED", False):
        raise SystemExit("brands: matrix-nio was installed without its e2e extra")
    return nio


async def sign_up(brand: Brand) -> None:
    nio = _nio()
    # The device's own store (its Olm/Megolm keys) sits beside the servers' data dirs.
    store = os.path.join(os.path.dirname(brand.data_dir), "clients", brand.localpart)
    os.makedirs(store, exist_ok=True)
    config = nio.AsyncClientConfig(encryption_enabled=True, store_sync_tokens=True)
    client = nio.AsyncClient(brand.client_url, brand.localpart, store_path=store, config=config)
    resp = await client.register(brand.localpart, brand.password)
    if not isinstance(resp, nio.RegisterResponse):
        raise SystemExit(f"brands: registering {brand.user_id} failed: {resp}")
    await client.logout()  # nio opens its crypto store on login: sign in again
    resp = await client.login(brand.password, device_name=f"{brand.display_name} demo device")
    if not isinstance(resp, nio.LoginResponse):
        raise SystemExit(f"brands: login of {brand.user_id} failed: {resp}")
    await client.set_displayname(brand.display_name)
    brand.client = client


async def sync(brand: Brand) -> Any:
    """One sync: keys uploaded and queried as nio asks, new messages decrypted and noted,
    messages that arrived before their room key retried."""
    nio = _nio()
    client = brand.client
    resp = await client.sync(timeout=300, full_state=client.next_batch is None)
    if not isinstance(resp, nio.SyncResponse):
        raise SystemExit(f"brands: sync of {brand.user_id} failed: {resp}")
    if client.should_upload_keys:
        await client.keys_upload()
    if client.should_query_keys:
        await client.keys_query()
    for room_id, room in resp.rooms.join.items():
        for event in room.timeline.events:
            _note(brand, room_id, event)
    pending, brand.undecrypted = brand.undecrypted, []
    for room_id, event in pending:
        try:
            _note(brand, room_id, client.decrypt_event(event))
        except Exception:
            brand.undecrypted.append((room_id, event))
    return resp


def _note(brand: Brand, room_id: str, event: Any) -> None:
    nio = _nio()
    if isinstance(event, nio.RoomMessageText):
        brand.seen.setdefault(room_id, []).append((event.sender, event.body))
    elif isinstance(event, nio.MegolmEvent):
        brand.undecrypted.append((room_id, event))


async def settle(brands: list[Brand], rounds: int = 2) -> None:
    for _ in range(rounds):
        for b in brands:
            await sync(b)


async def join_via(brand: Brand, room_id: str, server: str) -> None:
    """Join a room another brand's server holds, through that server (make_join/send_join)."""
    import aiohttp

    url = (f"{brand.client_url}/_matrix/client/v3/join/{quote(room_id, safe='')}"
           f"?server_name={quote(server, safe='')}")
    headers = {"Authorization": f"Bearer {brand.client.access_token}"}
    async with aiohttp.ClientSession() as session:
        for attempt in range(5):
            async with session.post(url, json={}, headers=headers) as r:
                body = await r.json()
                if r.status == 200:
                    return
            await asyncio.sleep(0.5 * (attempt + 1))
    raise SystemExit(f"brands: {brand.user_id} could not join {room_id} via {server}: {body}")


async def invited(brand: Brand, room_id: str, timeout: float = 10) -> bool:
    """Whether the invite reached the invitee's own server (federation /invite) and showed up
    in their sync."""
    deadline = time.monotonic() + timeout
    while room_id not in brand.client.invited_rooms:
        if time.monotonic() > deadline:
            return False
        await sync(brand)
    return True


async def accept_invite(brand: Brand, room_id: str) -> None:
    """Join as a client accepting an invite does: the server knows whose room it is."""
    nio = _nio()
    resp = await brand.client.join(room_id)
    if not isinstance(resp, nio.JoinResponse):
        raise SystemExit(f"brands: {brand.user_id} could not accept the invite to {room_id}: "
                         f"{resp}")


async def create_room(owner: Brand, invitees: list[Brand], **kwargs: Any) -> str:
    nio = _nio()
    resp = await owner.client.room_create(
        invite=[b.user_id for b in invitees],
        initial_state=[{"type": "m.room.encryption", "state_key": "",
                        "content": {"algorithm": MEGOLM}}],
        **kwargs,
    )
    if not isinstance(resp, nio.RoomCreateResponse):
        raise SystemExit(f"brands: {owner.user_id} could not create a room: {resp}")
    return str(resp.room_id)


async def send(brand: Brand, room_id: str, body: str) -> None:
    nio = _nio()
    await sync(brand)
    resp = await brand.client.room_send(room_id, "m.room.message",
                                        {"msgtype": "m.text", "body": body},
                                        ignore_unverified_devices=True)
    if not isinstance(resp, nio.RoomSendResponse):
        raise SystemExit(f"brands: {brand.user_id} could not send to {room_id}: {resp}")


async def wait_for_messages(brands: list[Brand], expected: dict[str, dict[str, list[str]]],
                            timeout: float) -> bool:
    """Sync everyone until each brand's user has decrypted every expected body."""
    deadline = time.monotonic() + timeout

    def missing() -> bool:
        for b in brands:
            for room_id, bodies in expected[b.server_name].items():
                got = {body for _, body in b.seen.get(room_id, [])}
                if not set(bodies) <= got:
                    return True
        return False

    while missing() and time.monotonic() < deadline:
        for b in brands:
            await sync(b)
    return not missing()


# --- what each server stored ----------------------------------------------------------------

def stored_report(brand: Brand, encrypted_rooms: list[str], secrets: list[str]) -> dict[str, Any]:
    """Read the brand's SQLite file (read-only): users, events by type in each encrypted room,
    and whether any message body is in any file of its data dir, byte for byte."""
    conn = sqlite3.connect(f"file:{brand.database_path}?mode=ro", uri=True)
    try:
        users = [u for (u,) in conn.execute("SELECT user_id FROM users ORDER BY user_id")]
        rooms: dict[str, dict[str, int]] = {}
        for room_id in encrypted_rooms:
            rows = conn.execute(
                "SELECT type, count(*) FROM events WHERE room_id = ? GROUP BY type ORDER BY type",
                (room_id,),
            ).fetchall()
            if rows:
                rooms[room_id] = {t: n for t, n in rows}
        sample_row = conn.execute(
            "SELECT json FROM events WHERE type = 'm.room.encrypted' LIMIT 1").fetchone()
        events_json = "\n".join(j for (j,) in conn.execute("SELECT json FROM events"))
        total = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    finally:
        conn.close()
    # Byte for byte through every file the server wrote: the database with its WAL, the log,
    # media, keys.
    blobs = [events_json.encode()]
    for directory, _, names in os.walk(brand.data_dir):
        for name in names:
            with open(os.path.join(directory, name), "rb") as f:
                blobs.append(f.read())
    found = [s for s in secrets if any(s.encode() in blob for blob in blobs)]
    return {
        "data_dir": brand.data_dir,
        "database": brand.database_path,
        "signing_key": os.path.join(brand.data_dir, "signing.key"),
        "media": os.path.join(brand.data_dir, "media"),
        "users": users,
        "events_total": total,
        "encrypted_rooms": rooms,
        "plaintext_found": found,
        "sample_encrypted_content": _abridged(json.loads(sample_row[0])["content"])
        if sample_row else None,
    }


def _abridged(content: dict[str, Any]) -> dict[str, Any]:
    return {k: (v[:40] + "..." if isinstance(v, str) and len(v) > 40 else v)
            for k, v in content.items()}


# --- the demo -------------------------------------------------------------------------------

async def demo(brands: list[Brand], timeout: float) -> dict[str, Any]:
    alice, bob, carol = brands
    for b in brands:
        await sign_up(b)
    await settle(brands, 1)

    notes: list[str] = []
    invites: dict[str, dict[str, bool]] = {}
    dm = await create_room(alice, [bob], is_direct=True,
                           preset=_nio().RoomPreset.trusted_private_chat)
    group = await create_room(carol, [alice, bob], name="Three brands",
                              topic="photos.test + messenger.test + chat.test",
                              preset=_nio().RoomPreset.private_chat)
    for b, room_id, server in ((bob, dm, alice.server_name), (alice, group, carol.server_name),
                               (bob, group, carol.server_name)):
        got_invite = await invited(b, room_id)
        invites.setdefault(b.user_id, {})[room_id] = got_invite
        if got_invite:
            notes.append(f"{b.user_id} got the invite to {room_id} from {server} over "
                         "federation and accepted it")
            await accept_invite(b, room_id)
        else:
            notes.append(f"{b.user_id} saw no invite to {room_id}; joined through {server}")
            await join_via(b, room_id, server)
    await settle(brands, 2)

    script = [
        (alice, dm, "Hi Bob, Alice from photos.test here. Only our devices can read this."),
        (bob, dm, "Hi Alice! Bob on messenger.test. Encrypted on my phone, stored as ciphertext."),
        (carol, group, "Welcome to the three-brand room, hosted on chat.test."),
        (alice, group, "Hello from photos.test!"),
        (bob, group, "And hello from messenger.test."),
    ]
    for sender, room_id, body in script:
        await send(sender, room_id, body)

    expected: dict[str, dict[str, list[str]]] = {b.server_name: {} for b in brands}
    for b in brands:
        for _, room_id, body in script:
            if room_id == group or b in (alice, bob):
                expected[b.server_name].setdefault(room_id, []).append(body)
    delivered = await wait_for_messages(brands, expected, timeout)

    secrets = [body for _, _, body in script]
    report: dict[str, Any] = {
        "rooms": {"dm": dm, "group": group},
        "notes": notes,
        "invites_over_federation": invites,
        "delivered": delivered,
        "users": {},
        "servers": {},
    }
    for b in brands:
        room_view = {}
        for room_id, room in b.client.rooms.items():
            room_view[room_id] = {
                "name": room.display_name,
                "encrypted": room.encrypted,
                "members": sorted(room.users),
                "messages": [{"sender": s, "body": t} for s, t in b.seen.get(room_id, [])],
            }
        report["users"][b.user_id] = {
            "server": b.server_name, "client_url": b.client_url, "password": b.password,
            "device_id": b.client.device_id, "rooms": room_view,
            "expected": expected[b.server_name],
        }
        report["servers"][b.server_name] = stored_report(b, [dm, group], secrets)
    return report


def print_report(report: dict[str, Any]) -> None:
    dm, group = report["rooms"]["dm"], report["rooms"]["group"]
    label = {dm: "encrypted DM", group: "encrypted group room"}
    print("\n== How each user got into the rooms")
    for note in report["notes"]:
        print(f"  {note}")
    print("\n== What each user sees (decrypted on their own device)")
    for user_id, u in report["users"].items():
        print(f"\n{user_id}  on {u['server']}")
        for room_id, room in u["rooms"].items():
            kind = label.get(room_id, "room")
            print(f"  {room['name']!r} ({kind}, {room_id}), encrypted={room['encrypted']}")
            print(f"    members: {', '.join(room['members'])}")
            for m in room["messages"]:
                print(f"    {m['sender']}: {m['body']}")
    print("\n== What each server stored")
    for name, s in report["servers"].items():
        print(f"\n{name}")
        print(f"  data dir:    {s['data_dir']}")
        print(f"  database:    {s['database']} ({s['events_total']} events)")
        print(f"  signing key: {s['signing_key']}")
        print(f"  media:       {s['media']}")
        print(f"  users:       {', '.join(s['users'])}")
        for room_id, types in s["encrypted_rooms"].items():
            counts = ", ".join(f"{t} x{n}" for t, n in types.items())
            print(f"  {label[room_id]} {room_id}: {counts}")
        if s["sample_encrypted_content"]:
            print(f"  a stored message's content: {json.dumps(s['sample_encrypted_content'])}")
        verdict = ("none: message events are m.room.encrypted ciphertext"
                   if not s["plaintext_found"] else f"FOUND {s['plaintext_found']}")
        print(f"  plaintext of any message in the server's files: {verdict}")


def print_connect_help(brands: list[Brand]) -> None:
    print("\n== The servers keep running; connect any Matrix client:")
    for b in brands:
        print(f"  {b.server_name:15} homeserver URL {b.client_url}   user {b.user_id}   "
              f"password {b.password}   (federation: https://127.0.0.1:{b.federation_port})")
    print("A client you sign in with is a new device: it reads messages sent from now on "
          "(the demo's devices kept their room keys to themselves).")
    print("Logs: <data dir>/server.log. Press Ctrl-C to stop the three servers.")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scripts/brands",
        description="Start photos.test, messenger.test and chat.test on this machine, federating "
                    "over loopback TLS; chat across them with end-to-end encryption; show what "
                    "each user sees and each server stored.",
    )
    p.add_argument("--once", action="store_true",
                   help="stop the servers after the demo (exit 1 if a check failed)")
    p.add_argument("--dir", default=os.path.join(ROOT, "data", "brands"),
                   help="where the brands' data dirs go; each brand's is recreated on every run "
                        "(default: data/brands)")
    p.add_argument("--free-ports", action="store_true",
                   help="listen on ports the OS picks instead of 8101-8103 (client) and "
                        "8441-8443 (federation)")
    p.add_argument("--timeout", type=float, default=120,
                   help="seconds to wait for the messages to arrive everywhere")
    p.add_argument("--report", metavar="FILE", help="also write the report as JSON here")
    p.add_argument("--write-examples", metavar="DIR",
                   help="only write each brand's example config into DIR (config/brands)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.write_examples:
        write_examples(args.write_examples)
        return 0
    _nio()
    brands = default_brands()
    for b in brands:
        if args.free_ports:
            b.client_port, b.federation_port = free_port(), free_port()
        else:
            for port in (b.client_port, b.federation_port):
                if port_in_use(port):
                    raise SystemExit(f"brands: port {port} is in use; stop what uses it or "
                                     "pass --free-ports")
    for b in brands:
        b.data_dir = os.path.join(os.path.abspath(args.dir), b.server_name)
        shutil.rmtree(b.data_dir, ignore_errors=True)
        shutil.rmtree(os.path.join(os.path.abspath(args.dir), "clients", b.localpart),
                      ignore_errors=True)
        os.makedirs(b.data_dir)
        homeserver_cli(*generate_config_args(b, brands, b.data_dir), "-o", b.config_path)

    started = time.monotonic()
    try:
        for b in brands:
            start_server(b)
        for b in brands:
            wait_healthy(b)
        print(f"brands: three homeservers up in {time.monotonic() - started:.1f}s")
        report = asyncio.run(_run_demo(brands, args.timeout))
        report["seconds"] = round(time.monotonic() - started, 1)
        print_report(report)
        if args.report:
            with open(args.report, "w", encoding="utf-8") as f:
                json.dump(report, f, indent=2)
        leaked = [n for n, s in report["servers"].items() if s["plaintext_found"]]
        ok = report["delivered"] and not leaked
        print("\nbrands: " + ("every message delivered and decrypted" if report["delivered"]
                              else "SOME MESSAGES DID NOT ARRIVE") + "; "
              + (f"PLAINTEXT STORED ON {', '.join(leaked)}" if leaked
                 else "no server stored plaintext") + f" ({report['seconds']}s)")
        if args.once:
            return 0 if ok else 1
        print_connect_help(brands)
        stop = {signal.SIGINT, signal.SIGTERM}
        signal.pthread_sigmask(signal.SIG_BLOCK, stop)
        signal.sigwait(stop)
        print("\nbrands: stopping the servers")
        return 0
    finally:
        stop_servers(brands)


async def _run_demo(brands: list[Brand], timeout: float) -> dict[str, Any]:
    try:
        return await demo(brands, timeout)
    finally:
        for b in brands:
            if b.client is not None:
                await b.client.close()


if __name__ == "__main__":
    sys.exit(main())
