"""Remote media with a real Synapse on loopback, both ways: our user downloads (and gets a
thumbnail of) an image uploaded on Synapse, and a Synapse user downloads a file uploaded
here through Synapse's authenticated media API, which fetches it from our federation media
endpoint and parses our multipart answer. One Synapse (SQLite) serves the module."""

from __future__ import annotations

import os

import pytest_twisted

from tests.support.client import Client
from tests.support.http import request
from tests.support.interop import ours, synapse
from tests.support.media import MediaClient, open_image, png, split_mxc
from tests.support.server import RunningServer
from tests.support.synapse import SynapseProcess

__all__ = ["ours", "synapse"]  # the fixtures, shared with the other interop tests


@pytest_twisted.ensureDeferred
async def test_media_both_ways_with_synapse(synapse: SynapseProcess,
                                            ours: RunningServer) -> None:
    suffix = os.urandom(3).hex()
    syn_user = synapse.register_user(f"sam{suffix}")
    our_user = await Client(ours.client_url).register(f"olga{suffix}")
    m = MediaClient(ours.client_url)

    # Uploaded on Synapse, downloaded here (a federation fetch from Synapse).
    image = png(500, 400, (40, 90, 200))
    r = await request("POST", f"{synapse.client_url}/_matrix/media/v3/upload?filename=sky.png",
                      image, headers={"Content-Type": "image/png"},
                      access_token=syn_user.access_token)
    assert r.status == 200, r.body
    syn_uri = r.json()["content_uri"]
    assert split_mxc(syn_uri)[0] == synapse.server_name
    r = await m.download(syn_uri, our_user.access_token)
    assert r.status == 200, r.body
    assert r.body == image and r.header("Content-Type") == "image/png"
    assert r.header("Content-Disposition") == "inline; filename=sky.png"
    r = await m.thumbnail(syn_uri, our_user.access_token, 96, 96, "crop")
    assert r.status == 200, r.body
    assert open_image(r.body).size == (96, 96)
    r = await m.download(f"mxc://{synapse.server_name}/NoSuchMediaHere", our_user.access_token)
    assert (r.status, r.json()["errcode"]) == (404, "M_NOT_FOUND")

    # Uploaded here, downloaded through Synapse (Synapse parses our multipart answer).
    data = os.urandom(150_000)
    r = await m.upload(data, our_user.access_token, "application/pdf", "report.pdf")
    assert r.status == 200, r.body
    server, media_id = split_mxc(r.json()["content_uri"])
    base = f"{synapse.client_url}/_matrix/client/v1/media"
    r = await request("GET", f"{base}/download/{server}/{media_id}",
                      access_token=syn_user.access_token)
    assert r.status == 200, r.body[:300]
    assert r.body == data
    r = await m.upload(image, our_user.access_token, "image/png", "sky.png")
    server, media_id = split_mxc(r.json()["content_uri"])
    r = await request("GET", f"{base}/thumbnail/{server}/{media_id}?width=64&height=64"
                             "&method=crop", access_token=syn_user.access_token)
    assert r.status == 200, r.body[:300]
    # Synapse answers with the nearest larger crop it made (the spec allows larger).
    width, height = open_image(r.body).size
    assert width == height and width >= 64
