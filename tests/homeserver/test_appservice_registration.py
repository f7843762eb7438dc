"""Registration files: what is accepted, what is refused with a message naming the file and the
field, namespace overlap across services, and a real server process that refuses to start on a
malformed file."""

from __future__ import annotations

import os
import re
from typing import Any

import pytest
import yaml

from homeserver.config.errors import ConfigError
from homeserver.services.appservice.namespaces import Namespace, may_overlap
from homeserver.services.appservice.registration import (
    check_together,
    load_registration,
    load_registrations,
    parse_registration,
)
from tests.support.process import cli, write_config

SERVER = "example.org"


def _reg(**over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": "instagram", "url": "https://bridge.example.net:29330",
        "as_token": "as-secret", "hs_token": "hs-secret", "sender_localpart": "instagrambot",
        "rate_limited": False,
        "namespaces": {"users": [{"regex": r"^@instagram_.*:example\.org$", "exclusive": True}],
                       "aliases": [], "rooms": []},
    }
    data.update(over)
    return {k: v for k, v in data.items() if v is not ...}


def _write(tmp_path: Any, name: str, data: Any) -> str:
    path = os.path.join(str(tmp_path), name)
    with open(path, "w") as f:
        f.write(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def test_a_mautrix_style_registration() -> None:
    data = _reg(**{"de.sorunome.msc2409.push_ephemeral": True, "receive_ephemeral": True,
                   "org.matrix.msc3202": True, "io.element.msc4190": True,
                   "protocols": ["instagram"]})
    svc = parse_registration(data, "ig.yaml", SERVER)
    assert svc.sender == "@instagrambot:example.org"
    assert svc.receive_ephemeral and svc.receive_to_device and not svc.rate_limited
    assert svc.may_act_as("@instagram_123:example.org")
    assert svc.may_act_as("@instagrambot:example.org")
    assert not svc.may_act_as("@alice:example.org")
    assert not svc.may_act_as("@instagram_1:elsewhere.org")
    assert svc.protocols == ("instagram",)
    # url: null means no traffic; defaults.
    quiet = parse_registration(_reg(url=None, rate_limited=...), "q.yaml", SERVER)
    assert quiet.url is None and quiet.rate_limited and not quiet.receive_ephemeral


@pytest.mark.parametrize(("over", "message"), [
    ({"id": ...}, r"^application service file ig\.yaml: id: required key is missing$"),
    ({"as_token": ""}, r"ig\.yaml: as_token: expected a non-empty string"),
    ({"hs_token": 5}, r"ig\.yaml: hs_token: expected a non-empty string"),
    ({"url": ...}, r"ig\.yaml: url: required key is missing"),
    ({"url": "ftp://x"}, r"ig\.yaml: url: .* must be an http or https URL"),
    ({"url": "http://127.0.0.1:9000"}, r"ig\.yaml: url: .*loopback.*--dev-federation"),
    ({"url": "http://localhost:9000"}, r"ig\.yaml: url: .*loopback"),
    ({"sender_localpart": "Bad Bot"}, r"ig\.yaml: sender_localpart: 'Bad Bot' is not a valid"),
    ({"namespaces": ...}, r"ig\.yaml: namespaces: required key is missing"),
    ({"namespaces": {"users": [{"regex": "[unclosed", "exclusive": True}]}},
     r"ig\.yaml: namespaces\.users\[0\]\.regex: not a valid regular expression"),
    ({"namespaces": {"users": [{"exclusive": True}]}},
     r"ig\.yaml: namespaces\.users\[0\]\.regex: expected a regular expression"),
    ({"namespaces": {"users": [{"regex": ".*", "exclusive": "yes"}]}},
     r"ig\.yaml: namespaces\.users\[0\]\.exclusive: expected true or false"),
    ({"namespaces": {"people": []}}, r"ig\.yaml: namespaces\.people: unknown namespace"),
    ({"rate_limited": "no"}, r"ig\.yaml: rate_limited: expected true or false"),
    ({"receive_ephemeral": 1}, r"ig\.yaml: receive_ephemeral: expected true or false"),
    ({"protocols": "irc"}, r"ig\.yaml: protocols: expected a list"),
])
def test_malformed_fields_are_named(over: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_registration(_reg(**over), "ig.yaml", SERVER)


def test_dev_federation_allows_loopback() -> None:
    svc = parse_registration(_reg(url="http://127.0.0.1:9000/"), "ig.yaml", SERVER,
                             allow_private=True)
    assert svc.url == "http://127.0.0.1:9000"


def test_files_that_cannot_be_read(tmp_path: Any) -> None:
    with pytest.raises(ConfigError, match=r"application service file .*missing\.yaml: cannot"):
        load_registration(os.path.join(str(tmp_path), "missing.yaml"), SERVER,
                          allow_private=False)
    bad = _write(tmp_path, "bad.yaml", "id: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML"):
        load_registration(bad, SERVER, allow_private=False)
    listy = _write(tmp_path, "list.yaml", "- 1\n")
    with pytest.raises(ConfigError, match=r"list\.yaml: expected a mapping"):
        load_registration(listy, SERVER, allow_private=False)


def test_services_together(tmp_path: Any) -> None:
    ig = _write(tmp_path, "ig.yaml", _reg())
    wa = _write(tmp_path, "wa.yaml", _reg(
        id="whatsapp", as_token="as2", hs_token="hs2", sender_localpart="whatsappbot",
        namespaces={"users": [{"regex": r"^@whatsapp_.*:example\.org$", "exclusive": True}]}))
    assert [s.id for s in load_registrations([ig, wa], SERVER, allow_private=False)] == [
        "instagram", "whatsapp"]

    def clash(**over: Any) -> str:
        other = parse_registration(_reg(**{
            "id": "other", "as_token": "as3", "hs_token": "hs3", "sender_localpart": "otherbot",
            **over}), "other.yaml", SERVER)
        with pytest.raises(ConfigError) as e:
            check_together([parse_registration(_reg(), "ig.yaml", SERVER), other])
        return str(e.value)

    assert "both use the same id" in clash(id="instagram")
    assert "both use the same as_token" in clash(as_token="as-secret")
    assert "both use the same hs_token" in clash(hs_token="hs-secret")
    msg = clash(namespaces={"users": [{"regex": r"^@instagram_.*", "exclusive": True}]})
    assert re.search(r"ig\.yaml and other\.yaml: exclusive namespaces\.users overlap", msg)
    # Everything-matching regexes overlap with anything exclusive.
    assert "overlap" in clash(namespaces={"users": [{"regex": "@.*", "exclusive": True}]})
    # The other service's sender inside our exclusive namespace.
    assert "is in an exclusive user namespace" in clash(sender_localpart="instagram_bot",
                                                       namespaces={"users": []})
    # A non-exclusive namespace may cover others, exclusive or not: mautrix's double-puppet
    # registration (no URL, every user) next to a bridge.
    doublepuppet = parse_registration(_reg(
        id="doublepuppet", url=None, as_token="as4", hs_token="hs4", sender_localpart="dpbot",
        namespaces={"users": [{"regex": r"@.*:example\.org", "exclusive": False}]}),
        "dp.yaml", SERVER)
    check_together([doublepuppet, parse_registration(_reg(), "ig.yaml", SERVER)])
    assert doublepuppet.may_act_as("@alice:example.org")


def _ns(regex: str) -> Namespace:
    return Namespace(regex, True, re.compile(regex))


@pytest.mark.parametrize(("a", "b", "overlap"), [
    (r"^@telegram_.*:example\.org$", r"^@whatsapp_.*:example\.org$", False),
    (r"^@telegram_.*:example\.org$", r"^@telegram_bot.*", True),
    (r"^@.*:a\.org$", r"^@foo.*:b\.org$", False),
    (r"^@.*:a\.org$", r"^@foo.*:a\.org$", True),
    (r"^@bot:example\.org$", r"^@b.*", True),
    (r"^@bot:example\.org$", r"^@c.*", False),
    (r"@irc_(a|b).*", r"@slack_.*", True),  # an alternative: nothing can be told apart
])
def test_overlap_heuristic(a: str, b: str, overlap: bool) -> None:
    assert (may_overlap(_ns(a), _ns(b)) is not None) is overlap


def test_malformed_registration_stops_the_server(tmp_path: Any) -> None:
    """A real server process with a bad registration file exits at start-up, saying which
    file and which field."""
    bad = _write(tmp_path, "bridge.yaml", _reg(url="http://127.0.0.1:1"))
    server = write_config(str(tmp_path), f"sqlite:///{tmp_path}/hs.db", "--dev-federation",
                          "--app-service", bad)
    # The bridge's file goes bad after the config was written.
    _write(tmp_path, "bridge.yaml", _reg(
        url="http://127.0.0.1:1",
        namespaces={"users": [{"regex": "@ig_(", "exclusive": True}]}))
    with pytest.raises(RuntimeError, match=r"server exited at start") as e:
        server.start(timeout=60)
    assert re.search(r"application service file .*bridge\.yaml: namespaces\.users\[0\]\.regex: "
                     r"not a valid regular expression", str(e.value)), str(e.value)
    assert server.proc is not None and server.proc.returncode == 1
    # generate-config checks the file too, and names it in the config it writes.
    refused = cli("generate-config", "--server-name", "x.org", "--data-dir", str(tmp_path),
                  "--dev-federation", "--app-service", bad, check=False)
    assert refused.returncode == 2
    assert "bridge.yaml: namespaces.users[0].regex" in refused.stderr
    good = _write(tmp_path, "good.yaml", _reg())
    assert good in cli("generate-config", "--server-name", "example.org", "--data-dir",
                       str(tmp_path), "--app-service", good).stdout
