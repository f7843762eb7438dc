"""A strict reader over a YAML mapping: typed getters that name the key path in every error,
and a check that no unknown key slipped in (a typo must not be silently ignored)."""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from typing import Any, TypeVar

from homeserver.config.errors import ConfigError

T = TypeVar("T")
_REQUIRED: Any = object()


class Section:
    def __init__(self, path: str, data: Any, known: set[str] | None = None) -> None:
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"{path or 'config'}: expected a mapping of keys, got {_show(data)}")
        self.path = path
        self.data = data
        self._seen: set[str] = set()
        # Every key path any section was asked for, for the sample-completeness test.
        self.known = known if known is not None else set()

    def _key(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def _raw(self, key: str, default: Any) -> Any:
        self._seen.add(key)
        self.known.add(self._key(key))
        if key not in self.data or self.data[key] is None:
            if default is _REQUIRED:
                raise ConfigError(f"{self._key(key)}: required key is missing")
            return default
        return self.data[key]

    def string(self, key: str, default: Any = _REQUIRED) -> Any:
        v = self._raw(key, default)
        if v is default:
            return v
        if not isinstance(v, str) or not v:
            raise ConfigError(f"{self._key(key)}: expected a non-empty string, got {_show(v)}")
        return v

    def boolean(self, key: str, default: Any = _REQUIRED) -> Any:
        v = self._raw(key, default)
        if not isinstance(v, bool):
            raise ConfigError(f"{self._key(key)}: expected true or false, got {_show(v)}")
        return v

    def integer(self, key: str, default: Any = _REQUIRED, *, min: int | None = None,
            max: int | None = None) -> Any:
        v = self._raw(key, default)
        if v is default and v is None:
            return v
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{self._key(key)}: expected an integer, got {_show(v)}")
        if (min is not None and v < min) or (max is not None and v > max):
            raise ConfigError(
                f"{self._key(key)}: expected an integer from {min} to {max}, got {v}"
            )
        return v

    def choice(self, key: str, choices: tuple[str, ...], default: Any = _REQUIRED) -> Any:
        v = self._raw(key, default)
        if v not in choices:
            raise ConfigError(
                f"{self._key(key)}: expected one of {', '.join(choices)}, got {_show(v)}"
            )
        return v

    def items(self, key: str, default: Any = _REQUIRED) -> builtins.list[Any]:
        v = self._raw(key, default)
        if not isinstance(v, list):
            raise ConfigError(f"{self._key(key)}: expected a list, got {_show(v)}")
        return v

    def str_list(self, key: str, default: Any = _REQUIRED) -> builtins.list[str]:
        items = self.items(key, default)
        for i, item in enumerate(items):
            if not isinstance(item, str) or not item:
                raise ConfigError(
                    f"{self._key(key)}[{i}]: expected a non-empty string, got {_show(item)}"
                )
        return items

    def str_map(self, key: str) -> dict[str, str]:
        v = self._raw(key, {})
        if not isinstance(v, Mapping):
            raise ConfigError(f"{self._key(key)}: expected a mapping, got {_show(v)}")
        for k, item in v.items():
            if not isinstance(k, str) or not isinstance(item, str):
                raise ConfigError(
                    f"{self._key(key)}.{k}: expected a string value, got {_show(item)}"
                )
        return dict(v)

    def section(self, key: str) -> Section:
        return Section(self._key(key), self._raw(key, {}), self.known)

    def sections(self, key: str, default: Any = _REQUIRED) -> builtins.list[Section]:
        items = self.items(key, default)
        return [Section(f"{self._key(key)}[{i}]", item, self.known) for i, item in enumerate(items)]

    def done(self) -> None:
        """Reject keys nobody asked for: they are typos or options this version lacks."""
        for key in self.data:
            if key not in self._seen:
                raise ConfigError(f"{self._key(str(key))}: unknown key")

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self._key(key)}: {message}")


def _show(v: Any) -> str:
    if v is None:
        return "nothing"
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."
