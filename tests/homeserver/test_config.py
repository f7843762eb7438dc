"""Config validation: every mistake stops start-up with a message naming the key."""

from __future__ import annotations

import copy
import os
import re
from typing import Any

import pytest
import yaml

from homeserver.config import ConfigError, load_config, parse_config
from homeserver.config.template import TemplateArgs, render_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SAMPLE = os.path.join(ROOT, "config", "homeserver.sample.yaml")
SAMPLE_ARGS = TemplateArgs(server_name="example.com", data_dir="/var/lib/homeserver")


def _base() -> dict[str, Any]:
    return yaml.safe_load(render_config(TemplateArgs(server_name="ex.org", data_dir="/tmp/d")))


def _set(data: dict[str, Any], path: str, value: Any) -> None:
    keys = path.split(".")
    target: Any = data
    for k in keys[:-1]:
        target = target[int(k)] if isinstance(target, list) else target[k]
    last = keys[-1]
    if isinstance(target, list):
        target[int(last)] = value
    elif value is _DELETE:
        del target[last]
    else:
        target[last] = value


_DELETE = object()


@pytest.mark.parametrize(
    "path, value, message",
    [
        ("server_name", _DELETE, r"^server_name: required key is missing"),
        ("server_name", "not a name!", r"^server_name: expected a DNS name"),
        ("server_name", 42, r"^server_name: expected a non-empty string, got 42"),
        ("data_dir", "", r"^data_dir: expected a non-empty string"),
        ("default_room_version", "99", r"^default_room_version: expected one of 1, 2"),
        ("database.url", "mysql://x", r"^database.url: expected a sqlite:/// URL"),
        ("database.pool_max", 0, r"^database.pool_max: expected an integer from 1 to 200"),
        ("database.pool_min", "two", r"^database.pool_min: expected an integer, got 'two'"),
        ("database.colour", "blue", r"^database.colour: unknown key"),
        ("listeners", [], r"^listeners: expected at least one listener"),
        ("listeners", "8008", r"^listeners: expected a list"),
        ("listeners.0.port", 70000, r"^listeners\[0\].port: expected an integer from 0 to 65535"),
        ("listeners.0.port", _DELETE, r"^listeners\[0\].port: required key is missing"),
        ("listeners.0.tls", "yes", r"^listeners\[0\].tls: expected true or false, got 'yes'"),
        ("listeners.1.resources", ["client", "chat"],
         r"^listeners\[1\].resources\[1\]: expected one of client, federation"),
        ("listeners.0.resources", [], r"^listeners\[0\].resources: expected at least one"),
        ("registration.enabled", "true", r"^registration.enabled: expected true or false"),
        ("password_hashing.bcrypt_rounds", 2,
         r"^password_hashing.bcrypt_rounds: expected an integer from 4 to 31"),
        ("federation.static_servers", {"b.org": "nohost"},
         r"^federation.static_servers.b.org: expected HOST:PORT"),
        ("limits.max_json_body_bytes", 10, r"^limits.max_json_body_bytes: expected an integer"),
        ("logging.level", "LOUD", r"^logging.level: expected one of DEBUG, INFO"),
        ("app_service_config_files", [""], r"^app_service_config_files\[0\]: expected a non-emp"),
        ("registraton", {"enabled": True}, r"^registraton: unknown key"),
        ("tls", "on", r"^tls: expected a mapping of keys, got 'on'"),
    ],
)
def test_config_errors_name_the_key(path: str, value: Any, message: str) -> None:
    data = _base()
    _set(data, path, value)
    with pytest.raises(ConfigError) as e:
        parse_config(data)
    assert re.search(message, str(e.value)), str(e.value)


def test_two_listeners_on_one_address_is_an_error() -> None:
    data = _base()
    data["listeners"][1]["bind"] = data["listeners"][0]["bind"]
    data["listeners"][1]["port"] = data["listeners"][0]["port"]
    with pytest.raises(ConfigError, match=r"^listeners\[1\]: 127.0.0.1:8008 is used by two"):
        parse_config(data)


def test_not_a_mapping_and_not_yaml(tmp_path: Any) -> None:
    with pytest.raises(ConfigError, match=r"^config: expected a mapping"):
        parse_config(["a", "list"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("server_name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(bad))
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(str(tmp_path / "missing.yaml"))


def test_defaults() -> None:
    config = parse_config(_base())
    assert config.server_name == "ex.org"
    assert config.database.engine == "sqlite"
    assert config.database.target == "/tmp/d/homeserver.db"
    assert config.default_room_version == "12"
    assert config.registration.enabled is False
    assert config.rate_limiting.enabled is True
    assert config.bcrypt_rounds == 12
    assert config.public_baseurl == "http://127.0.0.1:8008/"
    assert config.signing_key_path == "/tmp/d/signing.key"
    assert [(lst.port, lst.tls) for lst in config.listeners] == [(8008, False), (8448, True)]


def test_flags_of_generate_config() -> None:
    args = TemplateArgs(server_name="ex.org", data_dir="/tmp/d", enable_registration=True,
                        testing=True, dev_federation=True,
                        database="postgresql://u@db.internal:5432/hs",
                        app_services=["/etc/hs/bridge.yaml"])
    config = parse_config(yaml.safe_load(render_config(args)))
    assert config.registration.enabled
    assert not config.rate_limiting.enabled
    assert config.guest_access and config.room_directory_publish_by_anyone
    assert config.bcrypt_rounds == 4
    assert config.outbound.accept_self_signed and config.outbound.allow_private_addresses
    assert (config.database.engine, config.database.target) == (
        "postgres", "postgresql://u@db.internal:5432/hs")
    assert config.app_service_config_files == ("/etc/hs/bridge.yaml",)


def test_same_address_gives_one_tls_listener_for_everything() -> None:
    args = TemplateArgs(server_name="ex.org", data_dir="/tmp/d",
                        client_listen=("127.0.0.1", 8448), federation_listen=("127.0.0.1", 8448))
    config = parse_config(yaml.safe_load(render_config(args)))
    assert len(config.listeners) == 1
    listener = config.listeners[0]
    assert listener.tls
    assert {"client", "federation", "keys", "media"} <= set(listener.resources)


@pytest.mark.parametrize(
    "url, engine, target",
    [
        ("sqlite:///var/lib/hs/db.sqlite", "sqlite", "/var/lib/hs/db.sqlite"),
        ("sqlite:////var/lib/hs/db.sqlite", "sqlite", "/var/lib/hs/db.sqlite"),
        ("postgresql://postgres@127.0.0.1/hs", "postgres", "postgresql://postgres@127.0.0.1/hs"),
    ],
)
def test_database_urls(url: str, engine: str, target: str) -> None:
    data = _base()
    data["database"]["url"] = url
    config = parse_config(data)
    assert (config.database.engine, config.database.target) == (engine, target)


def test_sample_is_the_rendered_template() -> None:
    with open(SAMPLE, encoding="utf-8") as f:
        assert f.read() == render_config(SAMPLE_ARGS), (
            "config/homeserver.sample.yaml is stale: regenerate it with "
            "homeserver generate-config --server-name example.com "
            "--data-dir /var/lib/homeserver -o config/homeserver.sample.yaml"
        )


def test_sample_documents_every_key() -> None:
    with open(SAMPLE, encoding="utf-8") as f:
        text = f.read()
    config = load_config(SAMPLE)
    undocumented = []
    for key_path in sorted(config.known_keys):
        leaf = key_path.rsplit(".", 1)[-1]
        leaf = re.sub(r"\[\d+\]$", "", leaf)
        if not re.search(rf"^\s*#?\s*-?\s*{re.escape(leaf)}:", text, re.M):
            undocumented.append(key_path)
    assert not undocumented
    # Every documented key is one the loader knows (uncommenting it must not fail).
    known_leaves = {re.sub(r"\[\d+\]", "", k).rsplit(".", 1)[-1] for k in config.known_keys}
    for m in re.finditer(r"^\s*#\s*([a-z_]+): ", text, re.M):
        assert m.group(1) in known_leaves, m.group(1)


def test_sample_loads_with_every_commented_key_uncommented() -> None:
    with open(SAMPLE, encoding="utf-8") as f:
        text = f.read()
    uncommented = re.sub(r"^(\s*)# ([a-z_]+: \S.*)$", r"\1\2", text, flags=re.M)
    config = parse_config(yaml.safe_load(uncommented.replace("<data_dir>", "/var/lib/hs")))
    assert config.federation.well_known_server == "matrix.example.com:443"
    assert config.public_baseurl == "https://matrix.example.com/"
    data = copy.deepcopy(yaml.safe_load(text))
    assert parse_config(data).server_name == "example.com"
