"""Remote media: the interface the federation layer implements, and what every fetch goes
through here — one fetch per file however many clients ask at once, a cap on size, and a
cap on how many fetches run at the same time.

The federation side implements ``RemoteMediaFetcher`` (``/_matrix/federation/v1/media/
download/{mediaId}`` with its multipart answer, falling back to the legacy endpoint for old
servers) and hands it to ``MediaService.set_remote_fetcher``; until then remote media
answers 404.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar, runtime_checkable

from twisted.internet import defer
from twisted.python.failure import Failure

from homeserver.http.errors import Codes, MatrixError

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True)
class RemoteFile:
    """What the origin said about a file it sent."""

    media_type: str | None
    upload_name: str | None


class MediaSink(Protocol):
    def write(self, data: bytes, /) -> object: ...


class RemoteMediaFetcher(Protocol):
    async def fetch(
        self, server_name: str, media_id: str, sink: MediaSink, max_bytes: int
    ) -> RemoteFile:
        """Download ``mxc://server_name/media_id`` from its origin, writing the bytes to
        ``sink`` as they arrive. Stop (raising) once more than ``max_bytes`` arrive; the sink
        also refuses them. Raise ``MatrixError(404, M_NOT_FOUND)`` when the origin has no such
        media and ``MatrixError(502, …)`` when it cannot be reached or answers nonsense."""
        ...


@runtime_checkable
class RemoteThumbnailFetcher(Protocol):
    async def fetch_thumbnail(
        self, server_name: str, media_id: str, width: int, height: int, method: str,
        animated: bool, sink: MediaSink, max_bytes: int,
    ) -> RemoteFile:
        """The origin's thumbnail of ``mxc://server_name/media_id`` (used when the media
        itself is too large to fetch); errors as for ``fetch``."""
        ...


class SizeCappedSink:
    """Passes bytes on until more than ``max_bytes`` arrive, then raises 502 M_TOO_LARGE
    (the spec's answer for remote media too large to proxy)."""

    def __init__(self, sink: MediaSink, max_bytes: int) -> None:
        self._sink = sink
        self.max_bytes = max_bytes
        self.length = 0

    def write(self, data: bytes, /) -> int:
        self.length += len(data)
        if self.length > self.max_bytes:
            raise remote_too_large(self.max_bytes)
        self._sink.write(data)
        return len(data)


def remote_too_large(max_bytes: int) -> MatrixError:
    return MatrixError(
        502, Codes.TOO_LARGE, f"Remote media is larger than this server's limit ({max_bytes} bytes)"
    )


class SingleFlight(Generic[K, V]):
    """Concurrent calls for the same key share one run of the work.

    The work runs detached from any caller: one caller giving up (a client disconnecting
    cancels its request) neither cancels the work nor the others' wait.
    """

    def __init__(self) -> None:
        self._waiting: dict[K, list[defer.Deferred[V]]] = {}

    def in_flight(self, key: K) -> bool:
        return key in self._waiting

    def waiting(self, key: K) -> int:
        """How many callers wait for the work of ``key`` (0: none running)."""
        return len(self._waiting.get(key, []))

    async def run(self, key: K, work: Callable[[], Awaitable[V]]) -> V:
        d: defer.Deferred[V] = defer.Deferred()
        waiters = self._waiting.get(key)
        if waiters is not None:
            waiters.append(d)
        else:
            self._waiting[key] = [d]
            done = defer.ensureDeferred(_call(work))
            done.addBoth(self._finish, key)
        return await d

    def _finish(self, result: V | Failure, key: K) -> None:
        for d in self._waiting.pop(key, []):
            if d.called:  # that caller was cancelled
                continue
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)


async def _call(work: Callable[[], Awaitable[V]]) -> V:
    return await work()


class FetchLimiter:
    """At most ``max_concurrent`` fetches at once; the rest wait their turn."""

    def __init__(self, max_concurrent: int) -> None:
        self._semaphore = defer.DeferredSemaphore(max_concurrent)
        self.max_concurrent = max_concurrent
        self.running = 0

    async def run(self, work: Callable[[], Awaitable[V]]) -> V:
        await self._semaphore.acquire()
        self.running += 1
        try:
            return await work()
        finally:
            self.running -= 1
            self._semaphore.release()
