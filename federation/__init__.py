"""The Matrix protocol core: pure functions and data, no I/O except in transport modules.

This package never imports ``homeserver``.
"""
