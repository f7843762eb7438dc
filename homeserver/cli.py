"""The command line: generate-config, run, register-user. Operators and tools script these, so
their flags stay stable."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

from homeserver.config import ConfigError, load_config
from homeserver.config.template import TemplateArgs, render_config

logger = logging.getLogger("homeserver")


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host, int(port)


def _static_server(value: str) -> tuple[str, str]:
    name, sep, target = value.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=HOST:PORT, got {value!r}")
    _host_port(target)  # validates
    return name, target


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="homeserver", description="A Matrix homeserver.")
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate-config", help="write a complete, commented YAML config")
    g.add_argument("--server-name", required=True, help="the domain of this server's user IDs")
    g.add_argument("--data-dir", required=True, help="where the database, keys and media live")
    g.add_argument("--client-listen", type=_host_port, default=("127.0.0.1", 8008),
                   metavar="HOST:PORT", help="client API address (default 127.0.0.1:8008)")
    g.add_argument("--federation-listen", type=_host_port, default=("127.0.0.1", 8448),
                   metavar="HOST:PORT", help="federation API address (default 127.0.0.1:8448)")
    g.add_argument("--database", metavar="URL",
                   help="sqlite:///path or a postgresql:// DSN (default: SQLite in the data dir)")
    g.add_argument("--enable-registration", action="store_true",
                   help="open registration without verification (m.login.dummy)")
    g.add_argument("--dev-federation", action="store_true",
                   help="tests/demos: outbound requests accept self-signed certificates and "
                        "reach loopback or private addresses")
    g.add_argument("--testing", action="store_true",
                   help="tests/benchmarks: no rate limits, guest access, anyone may publish "
                        "rooms, cheapest password hashing")
    g.add_argument("--app-service", action="append", default=[], metavar="FILE",
                   help="register an application service from its registration YAML")
    g.add_argument("--metrics-listen", type=_host_port, metavar="HOST:PORT",
                   help="serve /metrics on a listener of its own (default: on the client one)")
    g.add_argument("--static-server", type=_static_server, action="append", default=[],
                   metavar="NAME=HOST:PORT",
                   help="reach this server name at HOST:PORT, bypassing discovery "
                        "(closed set-ups and demos; repeatable)")
    g.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")

    r = sub.add_parser("run", help="start the server")
    r.add_argument("--config", "-c", required=True, metavar="FILE")
    r.add_argument("--check-config", action="store_true",
                   help="only load and validate the config: exit 0 if it is good, else 1")

    cc = sub.add_parser("check-config",
                        help="load and validate a config: exit 0 if it is good, else 1 with "
                             "the key at fault")
    cc.add_argument("config", metavar="FILE")

    b = sub.add_parser("backup", help="a consistent backup of a (possibly running) server: "
                                      "database, signing key, media")
    b.add_argument("--config", "-c", required=True, metavar="FILE")
    b.add_argument("--output", "-o", required=True, metavar="DIR",
                   help="a new or empty directory to write the backup into")
    b.add_argument("--no-media", action="store_true", help="leave the media files out")

    u = sub.add_parser(
        "register-user",
        help="create an account (the server may be running: both share the database)",
    )
    u.add_argument("--config", "-c", required=True, metavar="FILE")
    u.add_argument("--user", required=True, help="the localpart or full user ID")
    u.add_argument("--password", required=True)
    u.add_argument("--admin", action="store_true", help="make the user a server admin")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "generate-config":
            return _generate_config(args)
        if args.command == "run":
            if args.check_config:
                return _check_config(args.config)
            return _run(args.config)
        if args.command == "check-config":
            return _check_config(args.config)
        if args.command == "backup":
            return _backup(args)
        if args.command == "register-user":
            return _register_user(args)
    except ConfigError as e:
        print(f"homeserver: config error: {e}", file=sys.stderr)
        return 2
    raise AssertionError(args.command)


def _generate_config(args: argparse.Namespace) -> int:
    from homeserver.config.model import parse_database_url

    if args.database:
        try:
            parse_database_url(args.database)
        except ValueError as e:
            print(f"homeserver: --database: {e}", file=sys.stderr)
            return 2
    text = render_config(
        TemplateArgs(
            server_name=args.server_name,
            data_dir=args.data_dir,
            client_listen=args.client_listen,
            federation_listen=args.federation_listen,
            database=args.database,
            enable_registration=args.enable_registration,
            dev_federation=args.dev_federation,
            testing=args.testing,
            app_services=args.app_service,
            static_servers=dict(args.static_server),
            metrics_listen=args.metrics_listen,
        )
    )
    # Validate what we write, so a bad --server-name fails here, not at first start.
    import yaml

    from homeserver.config import parse_config
    from homeserver.services.appservice.registration import load_registrations

    written = parse_config(yaml.safe_load(text))
    # The registration files too: a bad one is named now rather than at first start.
    load_registrations(written.app_service_config_files, written.server_name,
                       allow_private=written.app_services_may_use_private_addresses)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


def _check_config(path: str) -> int:
    from homeserver.config_check import check_config, summary

    try:
        config = check_config(path)
    except ConfigError as e:
        print(f"homeserver: config error: {e}", file=sys.stderr)
        return 1
    print(f"{path}: OK ({summary(config)})")
    return 0


def _backup(args: argparse.Namespace) -> int:
    from homeserver.backup import BackupError, backup

    config = load_config(args.config)
    try:
        manifest = backup(config, args.output, media=not args.no_media)
    except BackupError as e:
        print(f"homeserver: backup failed: {e}", file=sys.stderr)
        return 1
    print(f"backup of {config.server_name} written to {args.output}: "
          + ", ".join(manifest["contents"]))
    return 0


def _run(config_path: str) -> int:
    config = load_config(config_path)
    from twisted.internet import defer
    from twisted.internet import reactor as twisted_reactor

    reactor: Any = twisted_reactor

    from homeserver.app import HomeServer
    from homeserver.logging_setup import setup_logging

    setup_logging(config.log_level, config.log_file, config.log_format)
    hs = HomeServer(config, reactor)
    exit_code = [0]

    async def start() -> None:
        try:
            await hs.start()
        except Exception as e:
            if stopping[0]:
                return  # a signal arrived while starting: not a start-up failure
            logger.error("start-up failed: %s", e, exc_info=not isinstance(e, ConfigError))
            exit_code[0] = 1
            reactor.stop()
            return
        logger.info("homeserver %s is up", config.server_name)

    stopping = [False]

    def on_shutdown() -> defer.Deferred[None]:
        stopping[0] = True
        return defer.Deferred.fromCoroutine(hs.shutdown())

    reactor.addSystemEventTrigger("before", "shutdown", on_shutdown)
    reactor.callWhenRunning(lambda: defer.Deferred.fromCoroutine(start()))
    reactor.run()
    logger.info("stopped")
    return exit_code[0]


def _register_user(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    from federation.identifiers import is_valid_user_id

    user_id = args.user if args.user.startswith("@") else f"@{args.user}:{config.server_name}"
    if not is_valid_user_id(user_id, historical=False) or not user_id.endswith(
        ":" + config.server_name
    ):
        print(f"homeserver: {user_id} is not a valid user ID on {config.server_name}",
              file=sys.stderr)
        return 2
    from homeserver.offline import register_user_offline

    return register_user_offline(config, user_id, args.password, args.admin, time.time())
