"""Per-user upload limits on both engines: the upload rate limit (429 M_LIMIT_EXCEEDED with
retry_after_ms, shared by uploads and reservations) and the storage quota (403 M_FORBIDDEN,
for direct and reserved-then-uploaded media; nothing of a refused upload is kept)."""

from __future__ import annotations

import os
from typing import Any

import pytest_twisted

from homeserver.config import DatabaseConfig
from tests.support.client import Client
from tests.support.http import request
from tests.support.media import MediaClient, split_mxc
from tests.support.server import start_server

QUOTA = 10_000


@pytest_twisted.ensureDeferred
async def test_upload_rate_limit_and_storage_quota(db_config: DatabaseConfig,
                                                   tmp_path: Any) -> None:
    hs = await start_server(
        str(tmp_path), db_config,
        rate_limiting={"enabled": True,
                       "media_uploads_per_user": {"per_second": 0.01, "burst": 5}},
        media={"max_storage_bytes_per_user": QUOTA},
    )
    try:
        c, m = Client(hs.client_url), MediaClient(hs.client_url)
        alice = (await c.register("alice")).access_token
        bob = (await c.register("bob")).access_token

        # Quota: what fits is stored, what would go past it is refused whole.
        first, second = os.urandom(6000), os.urandom(4000)
        r = await m.upload(first, alice)
        assert r.status == 200, r.body
        r = await m.upload(os.urandom(5000), alice)
        assert (r.status, r.json()["errcode"]) == (403, "M_FORBIDDEN")
        r = await m.upload(second, alice)
        assert r.status == 200, r.body
        uri = r.json()["content_uri"]
        assert (await m.download(uri, alice)).body == second
        # At the quota: even a byte is refused, and so is an upload to a reserved ID.
        r = await m.upload(b"x", alice)
        assert (r.status, r.json()["errcode"]) == (403, "M_FORBIDDEN")
        r = await m.upload(b"", alice, path="/_matrix/media/v1/create")
        assert r.status == 200, r.body
        server, media_id = split_mxc(r.json()["content_uri"])
        r = await m.upload(b"y", alice, path=f"/_matrix/media/v3/upload/{server}/{media_id}",
                           method="PUT")
        assert (r.status, r.json()["errcode"]) == (403, "M_FORBIDDEN")
        # Files of refused uploads are not kept: only the two stored ones are on disk.
        content_dir = os.path.join(hs.hs.config.media.store_path, "content")
        files = [f for _, _, names in os.walk(content_dir) for f in names]
        assert len(files) == 2

        # Rate limit: alice has used her burst of 5; bob has his own.
        r = await m.upload(b"z", alice)
        assert (r.status, r.json()["errcode"]) == (429, "M_LIMIT_EXCEEDED")
        assert r.json()["retry_after_ms"] > 0
        for i in range(5):
            r = await m.upload(f"{i}".encode(), bob)
            assert r.status == 200, r.body
        r = await m.upload(b"late", bob)
        assert (r.status, r.json()["errcode"]) == (429, "M_LIMIT_EXCEEDED")
        assert r.header("Retry-After") is not None
        # Downloads are not limited by it.
        r = await request("GET", f"{hs.client_url}/_matrix/client/v1/media/download/"
                                 f"{split_mxc(uri)[0]}/{split_mxc(uri)[1]}", access_token=bob)
        assert r.status == 200
    finally:
        await hs.stop()
