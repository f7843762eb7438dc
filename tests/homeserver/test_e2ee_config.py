"""The encryption: section of the config (the rooms service applies it)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from homeserver.config import ConfigError, parse_config
from homeserver.config.template import TemplateArgs, render_config


def _config(encryption: Any) -> Any:
    data = yaml.safe_load(render_config(TemplateArgs(server_name="ex.org", data_dir="/tmp/d")))
    if encryption is not None:
        data["encryption"] = encryption
    else:
        del data["encryption"]
    return parse_config(data)


def test_defaults() -> None:
    for enc in (None, {}):
        config = _config(enc)
        assert (config.encryption.by_default, config.encryption.require) == ("private", False)


@pytest.mark.parametrize("text, expected", [
    ("by_default: all", "all"), ("by_default: private", "private"),
    ("by_default: \"off\"", "off"), ("by_default: off", "off"),  # bare off is YAML false
])
def test_by_default(text: str, expected: str) -> None:
    assert _config(yaml.safe_load(text)).encryption.by_default == expected


def test_require() -> None:
    assert _config({"require": True}).encryption.require is True


@pytest.mark.parametrize("enc, message", [
    ({"by_default": "public"}, "encryption.by_default: expected one of all, private, off"),
    ({"by_default": True}, "encryption.by_default"),
    ({"require": "yes"}, "encryption.require: expected true or false"),
    ({"required": True}, "encryption.required"),
])
def test_bad_values_name_the_key(enc: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        _config(enc)
