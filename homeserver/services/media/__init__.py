"""The media repository: files stored by content hash, thumbnails, remote media behind a
pluggable fetcher, URL previews."""

from homeserver.services.media.remote import RemoteFile, RemoteMediaFetcher
from homeserver.services.media.service import MediaService

__all__ = ["MediaService", "RemoteFile", "RemoteMediaFetcher"]
