"""The validated config: YAML in, a typed ``Config`` out, or a ``ConfigError`` naming the key."""

from homeserver.config.errors import ConfigError
from homeserver.config.model import (
    Config,
    DatabaseConfig,
    ListenerConfig,
    load_config,
    parse_config,
)

__all__ = [
    "Config",
    "ConfigError",
    "DatabaseConfig",
    "ListenerConfig",
    "load_config",
    "parse_config",
]
