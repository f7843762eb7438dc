"""The operator's media API on both engines: quarantine (and release), deletion with the
file removed once nothing refers to it, a user's uploads with their total, admin-only."""

from __future__ import annotations

import os

import pytest_twisted

from tests.support.client import Client, User, q
from tests.support.http import request
from tests.support.media import MediaClient, png, split_mxc
from tests.support.server import RunningServer

ADMIN = "/_synapse/admin/v1"


async def _admin_and_user(hs: RunningServer) -> tuple[User, User]:
    c = Client(hs.client_url)
    admin, alice = await c.register("root"), await c.register("alice")
    await hs.hs.services.users.set_admin(admin.user_id, True)
    return admin, alice


async def _call(hs: RunningServer, method: str, path: str, token: str) -> tuple[int, dict]:
    r = await request(method, hs.client_url + path, {} if method == "POST" else None,
                      access_token=token)
    return r.status, r.json()


@pytest_twisted.ensureDeferred
async def test_quarantined_media_is_not_served(hs: RunningServer) -> None:
    admin, alice = await _admin_and_user(hs)
    m = MediaClient(hs.client_url)
    uri = (await m.upload(png(100, 100), alice.access_token, "image/png")).json()["content_uri"]
    server, media_id = split_mxc(uri)

    # Not for ordinary users.
    status, body = await _call(hs, "POST", f"{ADMIN}/media/quarantine/{server}/{media_id}",
                               alice.access_token)
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    assert (await m.download(uri, alice.access_token)).status == 200

    status, body = await _call(hs, "POST", f"{ADMIN}/media/quarantine/{server}/{media_id}",
                               admin.access_token)
    assert (status, body) == (200, {})
    for r in (await m.download(uri, alice.access_token),
              await m.download(uri, alice.access_token, "name.png"),
              await m.thumbnail(uri, alice.access_token, 32, 32, "crop")):
        assert (r.status, r.json()["errcode"]) == (404, "M_NOT_FOUND")

    # The listing says who quarantined it; releasing it serves it again.
    status, body = await _call(hs, "GET", f"{ADMIN}/users/{q(alice.user_id)}/media",
                               admin.access_token)
    assert body["media"][0]["quarantined_by"] == admin.user_id
    status, _ = await _call(hs, "POST", f"{ADMIN}/media/unquarantine/{server}/{media_id}",
                            admin.access_token)
    assert status == 200
    assert (await m.download(uri, alice.access_token)).status == 200

    # Unknown media.
    status, body = await _call(hs, "POST", f"{ADMIN}/media/quarantine/{server}/Nope",
                               admin.access_token)
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")


@pytest_twisted.ensureDeferred
async def test_quarantine_all_of_a_users_media(hs: RunningServer) -> None:
    admin, alice = await _admin_and_user(hs)
    m = MediaClient(hs.client_url)
    uris = [(await m.upload(os.urandom(100), alice.access_token)).json()["content_uri"]
            for _ in range(3)]
    status, body = await _call(hs, "POST", f"{ADMIN}/user/{q(alice.user_id)}/media/quarantine",
                               admin.access_token)
    assert (status, body) == (200, {"num_quarantined": 3})
    for uri in uris:
        assert (await m.download(uri, alice.access_token)).status == 404


@pytest_twisted.ensureDeferred
async def test_delete_media_removes_rows_and_unshared_files(hs: RunningServer) -> None:
    admin, alice = await _admin_and_user(hs)
    m = MediaClient(hs.client_url)
    image = png(300, 200)
    uri1 = (await m.upload(image, alice.access_token, "image/png")).json()["content_uri"]
    uri2 = (await m.upload(image, alice.access_token, "image/png")).json()["content_uri"]
    files = hs.hs.services.media.files
    content = os.path.join(files.root, "content")

    def stored() -> set[str]:
        return {f for _, _, names in os.walk(content) for f in names}

    before = stored()
    assert len(before) > 1  # the image and its thumbnails

    _, id1 = split_mxc(uri1)
    status, body = await _call(hs, "DELETE", f"{ADMIN}/media/test.local/{id1}",
                               alice.access_token)
    assert status == 403
    status, body = await _call(hs, "DELETE", f"{ADMIN}/media/test.local/{id1}",
                               admin.access_token)
    assert (status, body) == (200, {"deleted_media": [id1], "total": 1})
    assert (await m.download(uri1, alice.access_token)).status == 404
    # The second upload of the same bytes still has its file and its thumbnails.
    assert stored() == before
    assert (await m.download(uri2, alice.access_token)).body == image
    assert (await m.thumbnail(uri2, alice.access_token, 96, 96, "crop")).status == 200

    _, id2 = split_mxc(uri2)
    status, _ = await _call(hs, "DELETE", f"{ADMIN}/media/test.local/{id2}", admin.access_token)
    assert status == 200
    assert stored() == set()  # nothing refers to any file any more
    status, body = await _call(hs, "DELETE", f"{ADMIN}/media/test.local/{id2}",
                               admin.access_token)
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")


@pytest_twisted.ensureDeferred
async def test_user_media_listing_with_total(hs: RunningServer) -> None:
    admin, alice = await _admin_and_user(hs)
    m = MediaClient(hs.client_url)
    sizes = [10, 30, 20]
    ids = []
    for i, size in enumerate(sizes):
        r = await m.upload(os.urandom(size), alice.access_token, "application/x-test",
                           f"f{i}.bin")
        ids.append(split_mxc(r.json()["content_uri"])[1])
    # A reserved, never-uploaded ID is not listed.
    await request("POST", hs.client_url + "/_matrix/media/v1/create", {},
                  access_token=alice.access_token)
    path = f"{ADMIN}/users/{q(alice.user_id)}/media"

    status, body = await _call(hs, "GET", path, alice.access_token)
    assert status == 403
    status, body = await _call(hs, "GET", path, admin.access_token)
    assert status == 200 and body["total"] == 3 and "next_token" not in body
    assert [x["media_id"] for x in body["media"]] == ids  # oldest first
    first = body["media"][0]
    assert first["media_length"] == 10 and first["upload_name"] == "f0.bin"
    assert first["media_type"] == "application/x-test" and first["quarantined_by"] is None

    status, body = await _call(hs, "GET", f"{path}?limit=2", admin.access_token)
    assert (len(body["media"]), body["total"], body["next_token"]) == (2, 3, 2)
    status, body = await _call(hs, "GET", f"{path}?from=2&limit=2", admin.access_token)
    assert [x["media_id"] for x in body["media"]] == ids[2:] and "next_token" not in body
    status, body = await _call(hs, "GET", f"{path}?order_by=media_length&dir=b",
                               admin.access_token)
    assert [x["media_length"] for x in body["media"]] == [30, 20, 10]

    status, body = await _call(hs, "GET", f"{path}?order_by=password", admin.access_token)
    assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")
    status, body = await _call(hs, "GET", f"{ADMIN}/users/{q('@nobody:test.local')}/media",
                               admin.access_token)
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
    status, body = await _call(hs, "GET", f"{ADMIN}/users/{q('@x:elsewhere.org')}/media",
                               admin.access_token)
    assert status == 400

    # Deleting all of a user's media (the reserved ID too).
    status, body = await _call(hs, "DELETE", path, admin.access_token)
    assert status == 200 and set(ids) < set(body["deleted_media"]) and body["total"] == 4
    status, body = await _call(hs, "GET", path, admin.access_token)
    assert (body["total"], body["media"]) == (0, [])
