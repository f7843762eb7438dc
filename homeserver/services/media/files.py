"""Media files on disk, named by the SHA-256 of their bytes: never by anything a request
says. Identical uploads share one file; the database says who refers to it.

Layout under the store path: ``content/ab/cd/abcd…`` (the full hex digest) and ``tmp/`` for
files being written. All of it is blocking file I/O: callers run it off the reactor thread.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass
from typing import BinaryIO

logger = logging.getLogger(__name__)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 64 * 1024
# Temporary files older than this at start-up were left by a crash.
_STALE_TMP_SECONDS = 3600


class TooLarge(Exception):
    """More bytes than allowed arrived."""


@dataclass(frozen=True)
class StagedFile:
    """Bytes written to a temporary file and hashed, not yet in the store."""

    tmp_path: str
    sha256: str
    length: int


class FileStore:
    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.tmp_dir = os.path.join(self.root, "tmp")
        self._ready = False

    def ensure_ready(self) -> None:
        if self._ready:
            return
        os.makedirs(os.path.join(self.root, "content"), exist_ok=True)
        os.makedirs(self.tmp_dir, exist_ok=True)
        cutoff = time.time() - _STALE_TMP_SECONDS
        for name in os.listdir(self.tmp_dir):
            path = os.path.join(self.tmp_dir, name)
            try:
                if os.stat(path).st_mtime < cutoff:
                    os.unlink(path)
            except OSError:
                pass
        self._ready = True

    def path(self, sha256: str) -> str:
        if not _SHA256.match(sha256):
            raise ValueError("not a SHA-256 hex digest")
        return os.path.join(self.root, "content", sha256[:2], sha256[2:4], sha256)

    def open_writer(self) -> HashingWriter:
        self.ensure_ready()
        return HashingWriter(self.tmp_dir)

    def stage_stream(self, src: BinaryIO, max_bytes: int | None = None) -> StagedFile:
        """Copy a stream to a temporary file, hashing it on the way."""
        with self.open_writer() as writer:
            while True:
                chunk = src.read(_CHUNK)
                if not chunk:
                    break
                writer.write(chunk)
                if max_bytes is not None and writer.length > max_bytes:
                    raise TooLarge()
            return writer.finish()

    def stage_bytes(self, data: bytes) -> StagedFile:
        with self.open_writer() as writer:
            writer.write(data)
            return writer.finish()

    def commit(self, staged: StagedFile) -> str:
        """Move a staged file to its place in the store (or drop it: the same bytes are
        already there). Returns the path."""
        final = self.path(staged.sha256)
        if os.path.exists(final):
            discard(staged)
            return final
        os.makedirs(os.path.dirname(final), exist_ok=True)
        os.replace(staged.tmp_path, final)
        return final

    def exists(self, sha256: str) -> bool:
        return os.path.exists(self.path(sha256))

    def remove(self, sha256: str) -> None:
        try:
            os.unlink(self.path(sha256))
        except FileNotFoundError:
            pass

    def open(self, sha256: str) -> BinaryIO:
        return open(self.path(sha256), "rb")

    def read(self, sha256: str) -> bytes:
        with self.open(sha256) as f:
            return f.read()


def discard(staged: StagedFile) -> None:
    try:
        os.unlink(staged.tmp_path)
    except FileNotFoundError:
        pass


class HashingWriter:
    """A temporary file in the store that hashes what is written; removed unless finished."""

    def __init__(self, tmp_dir: str) -> None:
        self.tmp_path = os.path.join(tmp_dir, secrets.token_hex(16))
        self._file = open(self.tmp_path, "xb")
        self._hash = hashlib.sha256()
        self.length = 0
        self._finished = False

    def write(self, data: bytes) -> int:
        self._file.write(data)
        self._hash.update(data)
        self.length += len(data)
        return len(data)

    def finish(self) -> StagedFile:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._finished = True
        return StagedFile(self.tmp_path, self._hash.hexdigest(), self.length)

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        if not self._finished:
            try:
                os.unlink(self.tmp_path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> HashingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._finished:
            self.abort()
