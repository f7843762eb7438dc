"""The exception raised when an event fails the authorisation rules.

It lives in its own module so that ``power_levels`` and ``auth_rules`` can both raise it
without importing each other; import it from ``federation.auth_rules``.
"""

from __future__ import annotations


class AuthError(Exception):
    """The event is not allowed; ``reason`` is a human-readable explanation."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason
