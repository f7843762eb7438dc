"""The media repository: uploads (direct and reserved-then-uploaded), downloads that wait for
reserved uploads, thumbnails, remote media through a pluggable fetcher, URL previews, and the
operator's quarantine, deletion and usage listing.

Bytes go to disk as they arrive (twisted spools large request bodies to a temporary file; we
copy and hash that off the reactor thread), are stored once per distinct content, and are
served by streaming from the file.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import string
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, BinaryIO, TypeVar

from twisted.internet import defer, threads

from federation.identifiers import is_valid_server_name
from homeserver.clock import Clock
from homeserver.config import Config
from homeserver.config.model import ThumbnailSize
from homeserver.http.errors import Codes, MatrixError
from homeserver.services.media import thumbnailer
from homeserver.services.media.files import FileStore, StagedFile, TooLarge, discard
from homeserver.services.media.preview import UrlPreviewer
from homeserver.services.media.remote import (
    FetchLimiter,
    RemoteMediaFetcher,
    RemoteThumbnailFetcher,
    SingleFlight,
    SizeCappedSink,
    remote_too_large,
)
from homeserver.storage.media import Media, MediaStore, Thumbnail

logger = logging.getLogger(__name__)
R = TypeVar("R")

MEDIA_ID = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
_MEDIA_ID_CHARS = string.ascii_letters
_MEDIA_TYPE = re.compile(r"^[A-Za-z0-9!#$&^_.+-]{1,127}/[A-Za-z0-9!#$&^_.+-]{1,127}$")
_TOKEN = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$")
MAX_UPLOAD_NAME_CHARS = 1024

# How long a download may wait for a reserved ID to be uploaded to.
DEFAULT_WAIT_MS = 20_000
MAX_WAIT_MS = 60_000
# last_access_ts is written at most this often per media.
_TOUCH_INTERVAL_S = 600.0
# Expired reservations are swept at most this often (on /create).
_SWEEP_INTERVAL_MS = 10 * 60 * 1000
# Thumbnail generation runs at most this many at once (it is CPU work).
_THUMBNAIL_CONCURRENCY = 2
# Sizes made on request, beyond the configured ones, per media; and their largest side.
MAX_ON_DEMAND_THUMBNAILS = 10
MAX_ON_DEMAND_SIDE = 2000


def new_media_id() -> str:
    return "".join(secrets.choice(_MEDIA_ID_CHARS) for _ in range(24))


def clean_media_type(value: str | None) -> str | None:
    """A syntactically valid ``type/subtype`` (lower-cased), keeping only a charset
    parameter; None for anything else (it will be served as application/octet-stream)."""
    if not value:
        return None
    main, _, params = value.partition(";")
    main = main.strip().lower()
    if not _MEDIA_TYPE.match(main):
        return None
    for param in params.split(";"):
        key, sep, val = param.partition("=")
        val = val.strip().strip('"')
        if sep and key.strip().lower() == "charset" and _TOKEN.match(val):
            return f"{main}; charset={val.lower()}"
    return main


def check_upload_name(name: str | None) -> str | None:
    if name is None or name == "":
        return None
    if len(name) > MAX_UPLOAD_NAME_CHARS or any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise MatrixError(
            400, Codes.INVALID_PARAM, "filename is too long or has control characters"
        )
    return name


def check_media_ref(server_name: str, media_id: str) -> None:
    """Path segments naming media: a server name by the spec's grammar and a media ID of
    ``A-Za-z0-9_-`` only (so no traversal, however encoded)."""
    # The grammar admits empty DNS labels ("..", ".x"); no real server has them.
    if not is_valid_server_name(server_name) or server_name.startswith(".") or ".." in server_name:
        raise MatrixError(400, Codes.INVALID_PARAM, "Invalid server name")
    if not MEDIA_ID.match(media_id):
        raise MatrixError(400, Codes.INVALID_PARAM, "Invalid media ID")


def not_found() -> MatrixError:
    return MatrixError(404, Codes.NOT_FOUND, "Media not found")


class _KeyedLock:
    """One DeferredLock per key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[defer.DeferredLock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (defer.DeferredLock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            await lock.acquire()
            try:
                yield
            finally:
                lock.release()
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class MediaService:
    def __init__(
        self, config: Config, store: MediaStore, clock: Clock, reactor: Any = None
    ) -> None:
        self.config = config
        self.media_config = config.media
        self.server_name = config.server_name
        self.store = store
        self.clock = clock
        self.files = FileStore(config.media.store_path)
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.reactor = reactor
        self._file_locks = _KeyedLock()
        self._upload_waiters: dict[str, list[defer.Deferred[None]]] = {}
        self._remote_fetcher: RemoteMediaFetcher | None = None
        self._remote_flight: SingleFlight[tuple[str, str], Media] = SingleFlight()
        self.remote_limiter = FetchLimiter(config.media.max_concurrent_remote_fetches)
        self._thumbnail_flight: SingleFlight[tuple[str, str], None] = SingleFlight()
        self._on_demand_flight: SingleFlight[tuple[str, str, int, int, str], None] = (
            SingleFlight()
        )
        self._origin_thumbnail_flight: SingleFlight[
            tuple[str, str, int, int, str, bool], None] = SingleFlight()
        self._thumbnail_slots = defer.DeferredSemaphore(_THUMBNAIL_CONCURRENCY)
        self._last_sweep_ms = 0
        self._touched: dict[tuple[str, str], float] = {}
        self.previewer = UrlPreviewer(
            config.media.url_preview,
            config.outbound.allow_private_addresses,
            reactor,
            self._store_preview_image,
        )

    # -- configuration seen by clients ---------------------------------------------------------

    @property
    def max_upload_bytes(self) -> int:
        return self.media_config.max_upload_bytes

    def set_remote_fetcher(self, fetcher: RemoteMediaFetcher | None) -> None:
        """Plug in remote media (the federation layer's fetcher); None turns it off."""
        self._remote_fetcher = fetcher

    def _new_media_authenticated(self) -> bool:
        # Stored while the legacy endpoints are frozen: those never serve it, even if they
        # are later turned back on (as Synapse does).
        return not self.media_config.enable_legacy_unauthenticated_media

    # -- uploads -------------------------------------------------------------------------------

    async def upload(
        self, user_id: str, content: BinaryIO, media_type: str | None, upload_name: str | None
    ) -> str:
        upload_name = check_upload_name(upload_name)
        await self._check_quota(user_id)
        staged = await self._stage(content)
        media_id = new_media_id()
        now = self.clock.time_ms()
        media = Media(
            origin=self.server_name, media_id=media_id, user_id=user_id, created_ts=now,
            sha256=staged.sha256, media_length=staged.length,
            media_type=clean_media_type(media_type), upload_name=upload_name,
            unused_expires_ts=None, authenticated=self._new_media_authenticated(),
            quarantined_by=None, last_access_ts=now, thumbnail_state=None,
        )
        stored = True

        async def record() -> None:
            nonlocal stored
            stored = await self.store.insert(media, self.media_config.max_storage_bytes_per_user)

        await self._commit(staged, record)
        if not stored:
            await self._release(staged.sha256)
            raise over_quota()
        await self._make_thumbnails(media)
        return f"mxc://{self.server_name}/{media_id}"

    async def create(self, user_id: str) -> tuple[str, int]:
        """Reserve a media ID to upload to later: (mxc URI, expiry in ms since the epoch)."""
        now = self.clock.time_ms()
        if now - self._last_sweep_ms > _SWEEP_INTERVAL_MS:
            self._last_sweep_ms = now
            swept = await self.store.delete_expired_reservations(now)
            if swept:
                logger.info("removed %d expired unused media IDs", swept)
        expires = now + self.media_config.unused_upload_expiry_ms
        media_id = new_media_id()
        reserved = Media(
            origin=self.server_name, media_id=media_id, user_id=user_id, created_ts=now,
            sha256=None, media_length=None, media_type=None, upload_name=None,
            unused_expires_ts=expires, authenticated=self._new_media_authenticated(),
            quarantined_by=None, last_access_ts=None, thumbnail_state=None,
        )
        max_pending = self.media_config.max_pending_uploads_per_user
        if not await self.store.reserve(reserved, now, max_pending):
            raise MatrixError(
                429, Codes.LIMIT_EXCEEDED,
                "Too many media IDs reserved and not yet uploaded to; upload to those first",
            )
        return f"mxc://{self.server_name}/{media_id}", expires

    async def upload_to(
        self,
        user_id: str,
        server_name: str,
        media_id: str,
        content: BinaryIO,
        media_type: str | None,
        upload_name: str | None,
    ) -> None:
        """Upload to an ID reserved with ``create``: only by its creator, only once."""
        check_media_ref(server_name, media_id)
        upload_name = check_upload_name(upload_name)
        if server_name != self.server_name:
            raise MatrixError(404, Codes.NOT_FOUND, "Unknown media ID")
        # Check before taking in the bytes; the update below checks again, atomically.
        existing = await self.store.get(server_name, media_id)
        _check_fill(self._fill_refusal(existing, user_id))
        await self._check_quota(user_id)
        staged = await self._stage(content)
        now = self.clock.time_ms()

        outcome = ""

        async def fill() -> None:
            nonlocal outcome
            outcome = await self.store.fill_reserved(
                server_name, media_id, user_id, now, staged.sha256, staged.length,
                clean_media_type(media_type), upload_name,
                self.media_config.max_storage_bytes_per_user,
            )

        await self._commit(staged, fill)
        if outcome != "ok":
            await self._release(staged.sha256)
            _check_fill(outcome)
        self._notify_uploaded(media_id)
        media = await self.store.get(server_name, media_id)
        if media is not None:
            await self._make_thumbnails(media)

    def _fill_refusal(self, media: Media | None, user_id: str) -> str:
        if media is None or media.user_id is None or media.expired(self.clock.time_ms()):
            return "not_found"
        if media.user_id != user_id:
            return "forbidden"
        if media.uploaded:
            return "exists"
        return "ok"

    async def _check_quota(self, user_id: str) -> None:
        """Refuse before reading the bytes when the user is already at the quota (the
        store checks again, with the upload's size, when recording it)."""
        quota = self.media_config.max_storage_bytes_per_user
        if quota is not None and await self.store.usage(user_id) >= quota:
            raise over_quota()

    async def _stage(self, content: BinaryIO) -> StagedFile:
        content.seek(0)
        limit = self.media_config.max_upload_bytes
        try:
            return await threads.deferToThread(self.files.stage_stream, content, limit)
        except TooLarge:
            raise MatrixError(
                413, Codes.TOO_LARGE, f"Uploads are limited to {limit} bytes"
            ) from None

    async def _commit(self, staged: StagedFile, record: Callable[[], Awaitable[object]]) -> None:
        """Put a staged file in the store and record who refers to it, as one step as far as
        deletion is concerned (deletion takes the same per-file lock)."""
        async with self._file_locks.hold(staged.sha256):
            try:
                await threads.deferToThread(self.files.commit, staged)
                await record()
            except BaseException:
                discard(staged)
                if not await self.store.is_referenced(staged.sha256):
                    await threads.deferToThread(self.files.remove, staged.sha256)
                raise

    async def _release(self, sha256: str) -> None:
        """Remove a file nothing refers to any more."""
        async with self._file_locks.hold(sha256):
            if not await self.store.is_referenced(sha256):
                await threads.deferToThread(self.files.remove, sha256)

    # -- downloads -----------------------------------------------------------------------------

    async def get_media(
        self,
        server_name: str,
        media_id: str,
        *,
        legacy: bool = False,
        allow_remote: bool = True,
        timeout_ms: int | None = None,
    ) -> Media:
        """Media that may be served: uploaded, not quarantined, and for the legacy
        unauthenticated endpoints, stored before they were frozen."""
        check_media_ref(server_name, media_id)
        if server_name == self.server_name:
            media = await self._local(media_id, timeout_ms)
        else:
            if not allow_remote:
                raise MatrixError(
                    404, Codes.NOT_FOUND, "Remote media not fetched: allow_remote=false"
                )
            media = await self._remote(server_name, media_id)
        if media.quarantined_by is not None:
            raise not_found()
        if legacy and media.authenticated:
            raise MatrixError(
                404, Codes.NOT_FOUND,
                "This media is only served by the authenticated /_matrix/client/v1/media API",
            )
        self._touch(media)
        return media

    async def _local(self, media_id: str, timeout_ms: int | None) -> Media:
        wait_s = min(DEFAULT_WAIT_MS if timeout_ms is None else timeout_ms, MAX_WAIT_MS) / 1000
        deadline = time.monotonic() + wait_s
        while True:
            media = await self.store.get(self.server_name, media_id)
            if media is None or media.expired(self.clock.time_ms()):
                raise not_found()
            if media.uploaded:
                return media
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise MatrixError(504, "M_NOT_YET_UPLOADED", "Content has not yet been uploaded")
            await self._wait_for_upload(media_id, remaining)

    async def _wait_for_upload(self, media_id: str, seconds: float) -> None:
        d: defer.Deferred[None] = defer.Deferred()
        waiters = self._upload_waiters.setdefault(media_id, [])
        waiters.append(d)
        d.addTimeout(seconds, self.reactor, onTimeoutCancel=lambda _r, _t: None)
        try:
            await d
        finally:
            if d in waiters:
                waiters.remove(d)
            if not waiters:
                self._upload_waiters.pop(media_id, None)

    def _notify_uploaded(self, media_id: str) -> None:
        for d in self._upload_waiters.pop(media_id, []):
            if not d.called:
                d.callback(None)

    def _touch(self, media: Media) -> None:
        key = (media.origin, media.media_id)
        now = time.monotonic()
        last = self._touched.get(key)
        if last is not None and now - last < _TOUCH_INTERVAL_S:
            return
        if len(self._touched) > 10_000:
            self._touched.clear()
        self._touched[key] = now
        now_ms = self.clock.time_ms()
        d = defer.ensureDeferred(self.store.touch(media.origin, media.media_id, now_ms))
        d.addErrback(lambda f: logger.warning("could not record media access: %s", f.value))

    def open(self, sha256: str) -> tuple[BinaryIO, int]:
        """An open file and its length (a small blocking call, like a stat)."""
        try:
            f = self.files.open(sha256)
        except FileNotFoundError:
            logger.error("media file %s is missing from the store", sha256)
            raise not_found() from None
        return f, os.fstat(f.fileno()).st_size

    # -- remote media --------------------------------------------------------------------------

    async def _remote(self, origin: str, media_id: str) -> Media:
        cached = await self.store.get(origin, media_id)
        if cached is not None and (cached.uploaded or cached.quarantined_by is not None):
            return cached
        if self._remote_fetcher is None:
            raise MatrixError(
                404, Codes.NOT_FOUND,
                f"Media from other servers ({origin}) is not available: fetching remote media "
                "over federation is turned off",
            )
        fetcher = self._remote_fetcher

        async def fetch() -> Media:
            return await self.remote_limiter.run(
                lambda: self._fetch_remote(fetcher, origin, media_id)
            )

        return await self._remote_flight.run((origin, media_id), fetch)

    async def _fetch_remote(self, fetcher: RemoteMediaFetcher, origin: str, media_id: str) -> Media:
        limit = self.media_config.max_remote_bytes
        writer = self.files.open_writer()
        try:
            info = await fetcher.fetch(origin, media_id, SizeCappedSink(writer, limit), limit)
            staged = await threads.deferToThread(writer.finish)
        except BaseException:
            writer.abort()
            raise
        now = self.clock.time_ms()
        media = Media(
            origin=origin, media_id=media_id, user_id=None, created_ts=now,
            sha256=staged.sha256, media_length=staged.length,
            media_type=clean_media_type(info.media_type),
            upload_name=check_upload_name_lenient(info.upload_name),
            unused_expires_ts=None, authenticated=self._new_media_authenticated(),
            quarantined_by=None, last_access_ts=now, thumbnail_state=None,
        )
        await self._commit(staged, lambda: self.store.store_remote(media))
        return media

    # -- thumbnails ----------------------------------------------------------------------------

    async def get_thumbnail(
        self,
        server_name: str,
        media_id: str,
        width: int,
        height: int,
        method: str,
        animated: bool,
        *,
        legacy: bool = False,
        allow_remote: bool = True,
        timeout_ms: int | None = None,
    ) -> Thumbnail:
        check_media_ref(server_name, media_id)
        remote = server_name != self.server_name and allow_remote and not legacy
        if remote:
            cached = await self.store.get(server_name, media_id)
            if cached is not None and _too_large_placeholder(cached):
                return await self._origin_thumbnail(
                    server_name, media_id, width, height, method, animated, None)
        try:
            media = await self.get_media(server_name, media_id, legacy=legacy,
                                         allow_remote=allow_remote, timeout_ms=timeout_ms)
        except MatrixError as e:
            if not remote or e.errcode != Codes.TOO_LARGE:
                raise
            # Too large to fetch whole: the origin's own thumbnail will do.
            return await self._origin_thumbnail(
                server_name, media_id, width, height, method, animated, e)
        thumbnails = await self.store.thumbnails(media.origin, media.media_id)
        if not thumbnails and media.thumbnail_state is None:
            # Made on upload; remote media (and uploads from before) get them on first use.
            await self._make_thumbnails(media)
            thumbnails = await self.store.thumbnails(media.origin, media.media_id)
        choice = thumbnailer.select(thumbnails, width, height, method, animated)
        if choice is not None and not _good_enough(choice, width, height, method):
            choice = await self._on_demand(media, thumbnails, choice, width, height, method,
                                           animated)
        if choice is None:
            latest = await self.store.get(media.origin, media.media_id)
            if latest is not None and latest.thumbnail_state == "too_large":
                status = 413 if media.origin == self.server_name else 502
                raise MatrixError(status, Codes.TOO_LARGE, "Content is too large to thumbnail")
            raise MatrixError(
                400, Codes.UNKNOWN, "Cannot generate thumbnails for the requested content"
            )
        return choice

    async def _origin_thumbnail(
        self, origin: str, media_id: str, width: int, height: int, method: str,
        animated: bool, error: MatrixError | None,
    ) -> Thumbnail:
        """A thumbnail of remote media too large to fetch, from its origin's
        ``/thumbnail``: kept (on a placeholder row) and reused like ours; at most as many
        sizes per media as on-demand ones. ``error`` is what to answer when there is none."""
        refusal = error or remote_too_large(self.media_config.max_remote_bytes)
        thumbnails = await self.store.thumbnails(origin, media_id)
        choice = thumbnailer.select(thumbnails, width, height, method, animated)
        if choice is not None and _good_enough(choice, width, height, method):
            return choice
        fetcher = self._remote_fetcher
        room = len(thumbnails) < len(self.media_config.thumbnail_sizes) + MAX_ON_DEMAND_THUMBNAILS
        if not isinstance(fetcher, RemoteThumbnailFetcher) or not room:
            if choice is not None:
                return choice
            raise refusal
        key = (origin, media_id, width, height, method, animated)
        try:
            await self._origin_thumbnail_flight.run(key, lambda: self.remote_limiter.run(
                lambda: self._fetch_origin_thumbnail(fetcher, origin, media_id, width, height,
                                                     method, animated)))
        except MatrixError:
            if choice is not None:
                return choice
            raise
        fresh = await self.store.thumbnails(origin, media_id)
        choice = thumbnailer.select(fresh, width, height, method, animated) or choice
        if choice is None:
            raise refusal
        return choice

    async def _fetch_origin_thumbnail(
        self, fetcher: RemoteThumbnailFetcher, origin: str, media_id: str, width: int,
        height: int, method: str, animated: bool,
    ) -> None:
        limit = self.media_config.max_remote_bytes
        writer = self.files.open_writer()
        try:
            await fetcher.fetch_thumbnail(origin, media_id, width, height, method, animated,
                                          SizeCappedSink(writer, limit), limit)
            staged = await threads.deferToThread(writer.finish)
        except BaseException:
            writer.abort()
            raise
        try:
            info = await threads.deferToThread(thumbnailer.probe, staged.tmp_path)
        except (thumbnailer.NotAnImage, thumbnailer.ImageTooLarge):
            discard(staged)
            raise MatrixError(
                502, Codes.UNKNOWN, "The origin's thumbnail is not an image") from None
        await self.store.ensure_placeholder(origin, media_id, self.clock.time_ms(),
                                            self._new_media_authenticated())
        row = Thumbnail(info.width, info.height, method, info.animated, info.media_type,
                        staged.sha256, staged.length)
        added = True

        async def record() -> None:
            nonlocal added
            added = await self.store.add_thumbnails(origin, media_id, [row], "origin")

        await self._commit(staged, record)
        if not added:  # the placeholder was deleted meanwhile
            await self._release(staged.sha256)

    async def _on_demand(
        self, media: Media, thumbnails: list[Thumbnail], choice: Thumbnail, width: int,
        height: int, method: str, animated: bool,
    ) -> Thumbnail:
        """A thumbnail of the size asked for when no stored one answers it (a crop of
        another size or shape, or a scale smaller than the box while the image is larger).
        At most ``MAX_ON_DEMAND_THUMBNAILS`` sizes per media beyond the configured ones, so
        requests cannot fill the disk; past that, the best stored one is served."""
        if media.sha256 is None or not thumbnails:
            return choice
        sizes = {(t.width, t.height, t.method) for t in thumbnails if not t.animated}
        if len(sizes) >= len(self.media_config.thumbnail_sizes) + MAX_ON_DEMAND_THUMBNAILS:
            return choice
        path = self.files.path(media.sha256)
        spec = ThumbnailSize(min(width, MAX_ON_DEMAND_SIDE), min(height, MAX_ON_DEMAND_SIDE),
                             method)
        try:
            info = await threads.deferToThread(thumbnailer.probe, path)
        except (thumbnailer.NotAnImage, thumbnailer.ImageTooLarge, OSError):
            return choice
        expected = thumbnailer.output_size(info.width, info.height, spec)
        if (choice.width, choice.height, choice.method) == (*expected, method):
            return choice  # the image is smaller than the box: this is the best there is
        key = (media.origin, media.media_id, spec.width, spec.height, method)
        try:
            await self._on_demand_flight.run(key, lambda: self._generate(media, [spec]))
        except defer.CancelledError:
            raise
        except Exception:
            logger.exception("thumbnailing %s/%s on demand failed", media.origin,
                             media.media_id)
            return choice
        fresh = await self.store.thumbnails(media.origin, media.media_id)
        return thumbnailer.select(fresh, width, height, method, animated) or choice

    async def _make_thumbnails(self, media: Media) -> None:
        if media.sha256 is None:
            return
        key = (media.origin, media.media_id)
        try:
            await self._thumbnail_flight.run(key, lambda: self._generate(media))
        except defer.CancelledError:
            raise
        except Exception:
            logger.exception("thumbnailing %s/%s failed", media.origin, media.media_id)

    async def _generate(
        self, media: Media, sizes: Sequence[ThumbnailSize] | None = None
    ) -> None:
        """Thumbnails of the configured sizes (or of ``sizes``, on demand)."""
        assert media.sha256 is not None
        on_demand = sizes is not None
        sizes = self.media_config.thumbnail_sizes if sizes is None else sizes
        is_image = (media.media_type or "").startswith("image/")
        if not is_image or not sizes:
            await self.store.set_thumbnail_state(media.origin, media.media_id, "unsupported")
            return
        path = self.files.path(media.sha256)
        await self._thumbnail_slots.acquire()
        try:
            generated = await threads.deferToThread(
                thumbnailer.generate, path, sizes, self.media_config.max_image_pixels,
            )
        except thumbnailer.NotAnImage:
            if on_demand:
                return
            await self.store.set_thumbnail_state(media.origin, media.media_id, "unsupported")
            return
        except thumbnailer.ImageTooLarge:
            if on_demand:
                return
            await self.store.set_thumbnail_state(media.origin, media.media_id, "too_large")
            return
        except Exception:
            # A decoder failing on hostile or broken input: no thumbnails, and no retrying.
            logger.exception("thumbnailing %s/%s failed", media.origin, media.media_id)
            if not on_demand:
                await self.store.set_thumbnail_state(media.origin, media.media_id,
                                                     "unsupported")
            return
        finally:
            self._thumbnail_slots.release()
        for g in generated:
            staged = await threads.deferToThread(self.files.stage_bytes, g.data)
            row = Thumbnail(g.width, g.height, g.method, g.animated, g.media_type,
                            staged.sha256, staged.length)
            added = True

            async def record(row: Thumbnail = row) -> None:
                nonlocal added
                added = await self.store.add_thumbnails(media.origin, media.media_id, [row], "ok")

            await self._commit(staged, record)
            if not added:  # the media was deleted meanwhile
                await self._release(staged.sha256)
                return
        await self.store.set_thumbnail_state(media.origin, media.media_id, "ok")

    # -- URL previews --------------------------------------------------------------------------

    async def preview_url(self, url: str, user_id: str) -> dict[str, Any]:
        return await self.previewer.preview(url, user_id)

    async def _store_preview_image(
        self, data: bytes, media_type: str | None, user_id: str
    ) -> tuple[str, int | None, int | None]:
        staged = await threads.deferToThread(self.files.stage_bytes, data)
        now = self.clock.time_ms()
        media = Media(
            origin=self.server_name, media_id=new_media_id(), user_id=user_id, created_ts=now,
            sha256=staged.sha256, media_length=staged.length,
            media_type=clean_media_type(media_type), upload_name=None, unused_expires_ts=None,
            authenticated=self._new_media_authenticated(), quarantined_by=None,
            last_access_ts=now, thumbnail_state=None,
        )
        await self._commit(staged, lambda: self.store.insert(media))
        width = height = None
        try:
            info = await threads.deferToThread(thumbnailer.probe, self.files.path(staged.sha256))
            width, height = info.width, info.height
        except (thumbnailer.NotAnImage, thumbnailer.ImageTooLarge):
            pass
        await self._make_thumbnails(media)
        return f"mxc://{self.server_name}/{media.media_id}", width, height

    # -- operators -----------------------------------------------------------------------------

    async def quarantine(self, server_name: str, media_id: str, by: str | None) -> None:
        """Quarantine (or with ``by=None`` release) one media: quarantined media is never
        served."""
        check_media_ref(server_name, media_id)
        if not await self.store.set_quarantine(server_name, media_id, by):
            raise not_found()

    async def quarantine_user_media(self, user_id: str, by: str) -> int:
        return await self.store.quarantine_user_media(user_id, by)

    async def delete(self, server_name: str, media_id: str) -> bool:
        """Forget a media ID and its thumbnails; files nothing else refers to are removed."""
        check_media_ref(server_name, media_id)
        existed, hashes = await self.store.delete(server_name, media_id)
        for sha256 in hashes:
            await self._release(sha256)
        self._touched.pop((server_name, media_id), None)
        return existed

    async def delete_user_media(self, user_id: str) -> list[str]:
        deleted = []
        for origin, media_id in await self.store.user_media_ids(user_id):
            if await self.delete(origin, media_id):
                deleted.append(media_id)
        return deleted

    async def purge_remote_cache(self, before_ts: int) -> int:
        count = 0
        for origin, media_id in await self.store.remote_media_before(self.server_name, before_ts):
            if await self.delete(origin, media_id):
                count += 1
        return count


def _too_large_placeholder(media: Media) -> bool:
    """The row kept for remote media too large to fetch (it holds the origin's thumbnails)."""
    return (media.user_id is None and not media.uploaded and media.thumbnail_state == "origin"
            and media.quarantined_by is None)


def _good_enough(t: Thumbnail, width: int, height: int, method: str) -> bool:
    """Whether a stored thumbnail answers a request without making one (the spec allows
    larger ones): a crop of the box's shape at least as large, or a scale reaching the box
    on one side."""
    if method == "crop":
        return t.method == "crop" and t.width * height == t.height * width and t.width >= width
    return t.method == "scale" and (t.width >= width or t.height >= height)


def check_upload_name_lenient(name: str | None) -> str | None:
    """A remote server's file name, dropped (not refused) when unusable."""
    try:
        return check_upload_name(name)
    except MatrixError:
        return None


def over_quota() -> MatrixError:
    # The spec's answer to an upload over the user's quota.
    return MatrixError(403, Codes.FORBIDDEN, "You have reached your quota for uploaded media")


def _check_fill(outcome: str) -> None:
    if outcome == "not_found":
        raise MatrixError(404, Codes.NOT_FOUND, "Unknown media ID (never created, or expired)")
    if outcome == "forbidden":
        raise MatrixError(403, Codes.FORBIDDEN, "Only the creator of a media ID can upload to it")
    if outcome == "exists":
        raise MatrixError(409, "M_CANNOT_OVERWRITE_MEDIA", "Media already uploaded")
    if outcome == "quota":
        raise over_quota()
