"""The homeserver application, built on the protocol core in ``federation``."""

__version__ = "0.1.0"
