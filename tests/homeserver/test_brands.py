"""scripts/brands --once: three real homeserver processes federating over loopback TLS, real
Olm/Megolm clients (matrix-nio). The cross-brand messages must arrive and decrypt, and no
server may store a message's plaintext anywhere in its SQLite files."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from typing import Any

import pytest
import yaml

from homeserver.config import parse_config
from tests.support.process import ROOT

pytestmark = pytest.mark.slow
pytest.importorskip("nio")

DM_TEXTS = ("Hi Bob, Alice from photos.test", "Hi Alice! Bob on messenger.test")
GROUP_TEXTS = ("Welcome to the three-brand room", "Hello from photos.test!",
               "And hello from messenger.test.")


def _command() -> list[str]:
    """scripts/brands as written when this venv is what it would prepare (as in CI, after
    scripts/test), else its Python part directly, so a stale stamp never reinstalls here."""
    stamp = os.path.join(sys.prefix, ".installed")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        import hashlib

        want = hashlib.sha256(f.read()).hexdigest()[:16]
    if os.path.exists(stamp) and open(stamp).read().startswith(want):
        return [os.path.join(ROOT, "scripts", "brands")]
    return [sys.executable, os.path.join(ROOT, "scripts", "brands.py")]


@pytest.fixture(scope="module")
def run(tmp_path_factory: Any) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("brands")
    report_path = tmp / "report.json"
    result = subprocess.run(
        [*_command(), "--once", "--free-ports", "--dir", str(tmp / "data"),
         "--report", str(report_path), "--timeout", "90"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "HS_VENV": sys.prefix},
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    with open(report_path, encoding="utf-8") as f:
        report: dict[str, Any] = json.load(f)
    report["stdout"] = result.stdout
    return report


def _seen(report: dict[str, Any], user_id: str, room_id: str) -> list[tuple[str, str]]:
    room = report["users"][user_id]["rooms"].get(room_id, {"messages": []})
    return [(m["sender"], m["body"]) for m in room["messages"]]


def test_cross_brand_messages_arrive_decrypted(run: dict[str, Any]) -> None:
    dm, group = run["rooms"]["dm"], run["rooms"]["group"]
    alice, bob, carol = "@alice:photos.test", "@bob:messenger.test", "@carol:chat.test"
    # The DM across photos.test and messenger.test, both ways.
    assert any(s == alice and b.startswith(DM_TEXTS[0]) for s, b in _seen(run, bob, dm))
    assert any(s == bob and b.startswith(DM_TEXTS[1]) for s, b in _seen(run, alice, dm))
    # The group room: everyone reads everyone, from each of the three servers.
    for user in (alice, bob, carol):
        bodies = [b for _, b in _seen(run, user, group)]
        for text in GROUP_TEXTS:
            assert any(b.startswith(text) for b in bodies), (user, bodies)
        room = run["users"][user]["rooms"][group]
        assert room["encrypted"] and room["members"] == [alice, bob, carol]
    assert dm not in run["users"][carol]["rooms"]
    # Each invitee's own server received the invite over federation, and they accepted it.
    assert run["invites_over_federation"] == {bob: {dm: True, group: True},
                                              alice: {group: True}}
    assert "What each user sees" in run["stdout"]


def test_encrypted_rooms_store_only_ciphertext(run: dict[str, Any]) -> None:
    # Read every server's database ourselves rather than trusting the script's own check.
    rooms = set(run["rooms"].values())
    texts = [*DM_TEXTS, *GROUP_TEXTS]
    for name, server in run["servers"].items():
        conn = sqlite3.connect(f"file:{server['database']}?mode=ro", uri=True)
        try:
            rows = conn.execute("SELECT room_id, type, json FROM events").fetchall()
        finally:
            conn.close()
        in_rooms = [(r, t, j) for r, t, j in rows if r in rooms]
        assert sum(t == "m.room.encrypted" for _, t, _ in in_rooms) >= 3, name
        assert not [t for _, t, _ in in_rooms if t == "m.room.message"], name
        blobs = [j.encode() for _, _, j in rows]
        for path in (server["database"], server["database"] + "-wal"):
            if os.path.exists(path):
                with open(path, "rb") as f:
                    blobs.append(f.read())
        for text in texts:
            assert not any(text.encode() in blob for blob in blobs), (name, text)
        assert server["plaintext_found"] == []
        assert os.path.exists(server["signing_key"])


def _brand_part(path: str) -> dict[str, Any]:
    """What makes a brand's config its own (the rest is the shared template)."""
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    return {"server_name": data["server_name"], "data_dir": data["data_dir"],
            "database": data["database"]["url"], "listeners": data["listeners"],
            "static_servers": data["federation"]["static_servers"],
            "registration": data["registration"]["enabled"],
            "outbound_requests": data["outbound_requests"]}


def test_brand_config_examples_are_current(tmp_path: Any) -> None:
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "brands.py"),
                    "--write-examples", str(tmp_path)], cwd=ROOT, check=True, timeout=120,
                   capture_output=True)
    names = sorted(os.listdir(tmp_path))
    assert names == ["chat.test.yaml", "messenger.test.yaml", "photos.test.yaml"]
    for name in names:
        example = os.path.join(ROOT, "config", "brands", name)
        # Each example is a valid config on its own...
        with open(example, encoding="utf-8") as f:
            parse_config(yaml.safe_load(f))
        # ...and the one the demo would write (regenerate: scripts/brands --write-examples
        # config/brands).
        assert _brand_part(example) == _brand_part(str(tmp_path / name)), name
    photos = _brand_part(os.path.join(ROOT, "config", "brands", "photos.test.yaml"))
    assert photos["static_servers"] == {"chat.test": "127.0.0.1:8443",
                                        "messenger.test": "127.0.0.1:8442"}
