"""``homeserver check-config`` / ``run --check-config``: load and validate a config, then check
what start-up would trip over on disk (signing key, TLS files, data, media and log
locations, application service registration files), without starting anything or touching
the database."""

from __future__ import annotations

import os

from federation.keys import InvalidKey, parse_signing_keys
from homeserver.config import Config, ConfigError, load_config


def _writable_dir(key: str, path: str) -> None:
    """``path`` is a directory we can write to, or can be created."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise ConfigError(f"{key}: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}: {probe} is not writable by this user")


def check_files(config: Config) -> None:
    _writable_dir("data_dir", config.data_dir)
    _writable_dir("media.store_path", config.media.store_path)
    if config.log_file is not None:
        _writable_dir("logging.file", os.path.dirname(config.log_file))
    if os.path.exists(config.signing_key_path):
        try:
            with open(config.signing_key_path, encoding="utf-8") as f:
                keys = parse_signing_keys(f.read())
        except (OSError, InvalidKey, UnicodeDecodeError) as e:
            raise ConfigError(f"signing_key_path: {config.signing_key_path}: {e}") from None
        if not keys:
            raise ConfigError(f"signing_key_path: {config.signing_key_path} holds no key")
    else:
        _writable_dir("signing_key_path", os.path.dirname(config.signing_key_path))
    if any(listener.tls for listener in config.listeners):
        cert, key = config.tls.certificate_path, config.tls.private_key_path
        if os.path.exists(cert) != os.path.exists(key):
            missing, which = (key, "private_key_path") if os.path.exists(cert) else (
                cert, "certificate_path")
            raise ConfigError(f"tls.{which}: {missing} is missing (its pair exists)")
        if os.path.exists(cert):
            from homeserver import tls

            try:
                tls.server_context(cert, key)
            except Exception as e:
                raise ConfigError(f"tls.certificate_path: {cert} with {key}: not a usable "
                                  f"certificate and key ({e})") from None


def check_config(path: str) -> Config:
    """The loaded config, or a ``ConfigError`` naming the key path at fault."""
    config = load_config(path)
    check_files(config)
    from homeserver.services.appservice.registration import load_registrations

    load_registrations(config.app_service_config_files, config.server_name,
                       allow_private=config.app_services_may_use_private_addresses)
    return config


def summary(config: Config) -> str:
    listeners = "; ".join(
        f"{'https' if lst.tls else 'http'}://{lst.bind}:{lst.port} ({', '.join(lst.resources)})"
        for lst in config.listeners
    )
    return (f"server_name {config.server_name}, database {config.database.engine}, "
            f"listeners: {listeners}")
