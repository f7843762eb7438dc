"""Logging: every line carries the request id it was written for. To stderr by default (a
service manager or container runtime collects it); to a file when configured, through a
``WatchedFileHandler`` that reopens the file once log rotation has renamed or removed it, so
logrotate needs no copytruncate and no signal (SIGHUP reopens it too, and never stops the
server). Text lines or one JSON object per line."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from logging.handlers import WatchedFileHandler
from typing import Any

from twisted.logger import STDLibLogObserver, globalLogBeginner

from homeserver.http.context import RequestIdFilter

FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, request id, message,
    and the traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def make_handler(file: str | None, fmt: str) -> logging.Handler:
    if file:
        os.makedirs(os.path.dirname(os.path.abspath(file)), exist_ok=True)
    handler: logging.Handler = (
        WatchedFileHandler(file, encoding="utf-8") if file else logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(FORMAT))
    handler.addFilter(RequestIdFilter())
    return handler


def reopen_log_files() -> None:
    """Reopen every file handler's file (SIGHUP, as logrotate's postrotate often sends)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.acquire()
            try:
                if handler.stream is not None:
                    handler.stream.close()
                handler.stream = handler._open()
                if isinstance(handler, WatchedFileHandler):
                    handler._statstream()
            finally:
                handler.release()


def setup_logging(level: str, file: str | None = None, fmt: str = "text") -> None:
    root = logging.getLogger()
    root.handlers[:] = [make_handler(file, fmt)]
    root.setLevel(level)
    if hasattr(signal, "SIGHUP"):
        # Without a handler SIGHUP would end the process; operators send it after rotating.
        def on_hup(signum: int, frame: Any) -> None:
            reopen_log_files()
            logging.getLogger(__name__).info("SIGHUP: log file reopened")

        signal.signal(signal.SIGHUP, on_hup)
    # Twisted's own log messages go through the same handler.
    observer: Any = STDLibLogObserver()
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
