"""Logging to stderr, every line carrying the request id it was written for."""

from __future__ import annotations

import logging
import sys
from typing import Any

from twisted.logger import STDLibLogObserver, globalLogBeginner

from homeserver.http.context import RequestIdFilter

FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Twisted's own log messages go through the same handler.
    observer: Any = STDLibLogObserver()
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
