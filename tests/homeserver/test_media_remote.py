"""Remote media through the fetcher interface the federation layer will implement, with a fake
fetcher: one fetch however many ask at once, the size cap, the concurrency cap, caching, and
404 while no fetcher is plugged in."""

from __future__ import annotations

import io
import os
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from homeserver.config import DatabaseConfig
from homeserver.http.errors import MatrixError
from homeserver.services.media import RemoteFile
from homeserver.services.media.remote import FetchLimiter, MediaSink, SingleFlight, SizeCappedSink
from tests.support.client import Client
from tests.support.media import CLIENT_MEDIA, MediaClient, open_image, png
from tests.support.server import RunningServer, start_server


async def _tick(seconds: float = 0.01) -> None:
    await task.deferLater(reactor, seconds, lambda: None)  # type: ignore[arg-type]


async def _until(check: Any, timeout: float = 10.0) -> None:
    """Wait for a condition (requests take a while to arrive on a busy machine)."""
    waited = 0.0
    while not check():
        assert waited < timeout, "condition not reached in time"
        await _tick(0.02)
        waited += 0.02


class FakeFetcher:
    """Serves files from a dict, each fetch held until ``release()``."""

    def __init__(self, files: dict[tuple[str, str], tuple[bytes, str | None, str | None]],
                 hold: bool = True) -> None:
        self.files = files
        self.calls: list[tuple[str, str]] = []
        self.running = 0
        self.max_running = 0
        self._gate: defer.Deferred[None] | None = defer.Deferred() if hold else None

    def release(self) -> None:
        if self._gate is not None and not self._gate.called:
            self._gate.callback(None)

    async def fetch(self, server_name: str, media_id: str, sink: MediaSink,
                    max_bytes: int) -> RemoteFile:
        self.calls.append((server_name, media_id))
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            if self._gate is not None:
                gate: defer.Deferred[None] = defer.Deferred()
                self._gate.addBoth(lambda r: (gate.callback(None), r)[1])
                await gate
            if (server_name, media_id) not in self.files:
                raise MatrixError(404, "M_NOT_FOUND", "Not found at the origin")
            data, media_type, name = self.files[(server_name, media_id)]
            for i in range(0, len(data), 1000):
                sink.write(data[i:i + 1000])
            return RemoteFile(media_type, name)
        finally:
            self.running -= 1


# -- the building blocks -----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_single_flight_runs_the_work_once() -> None:
    flight: SingleFlight[str, int] = SingleFlight()
    runs = 0
    gate: defer.Deferred[None] = defer.Deferred()

    async def work() -> int:
        nonlocal runs
        runs += 1
        await gate
        return 42

    callers = [defer.ensureDeferred(flight.run("k", work)) for _ in range(10)]
    assert flight.in_flight("k")
    # One caller giving up does not stop the others, nor the work.
    callers[0].cancel()
    callers[0].addErrback(lambda f: f.trap(defer.CancelledError))
    gate.callback(None)
    results = await defer.gatherResults(callers[1:])
    assert results == [42] * 9 and runs == 1
    assert not flight.in_flight("k")
    # Afterwards a new call runs the work again; failures reach every caller.
    assert await flight.run("k", work) == 42 and runs == 2

    async def boom() -> int:
        await _tick()
        raise ValueError("no")

    failing = [defer.ensureDeferred(flight.run("k", boom)) for _ in range(3)]
    for d in failing:
        with pytest.raises(ValueError):
            await d


@pytest_twisted.ensureDeferred
async def test_fetch_limiter_caps_concurrency() -> None:
    limiter = FetchLimiter(2)
    running = peak = 0

    async def work() -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await _tick(0.02)
        running -= 1

    await defer.gatherResults([defer.ensureDeferred(limiter.run(work)) for _ in range(7)])
    assert peak == 2 and limiter.running == 0


def test_size_capped_sink() -> None:
    out = io.BytesIO()
    sink = SizeCappedSink(out, 10)
    sink.write(b"0123456789")
    with pytest.raises(MatrixError) as e:
        sink.write(b"x")
    assert (e.value.status, e.value.errcode) == (502, "M_TOO_LARGE")
    assert out.getvalue() == b"0123456789"


# -- through the server ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_remote_media_fetched_once_and_cached(hs: RunningServer) -> None:
    token = (await Client(hs.client_url).register("alice")).access_token
    image = png(400, 300)
    fetcher = FakeFetcher({("remote.org", "pic"): (image, "image/png", "cat.png")})
    hs.hs.services.media.set_remote_fetcher(fetcher)
    m = MediaClient(hs.client_url)

    downloads = [defer.ensureDeferred(m.download("mxc://remote.org/pic", token))
                 for _ in range(6)]
    thumb = defer.ensureDeferred(m.thumbnail("mxc://remote.org/pic", token, 96, 96, "crop"))
    flight = hs.hs.services.media._remote_flight  # type: ignore[union-attr]
    await _until(lambda: flight.waiting(("remote.org", "pic")) == 7)
    fetcher.release()
    for r in await defer.gatherResults([*downloads, thumb]):
        assert r.status == 200, r.body
    assert fetcher.calls == [("remote.org", "pic")]
    r = await downloads[0]
    assert r.body == image
    assert r.header("Content-Disposition") == "inline; filename=cat.png"
    assert open_image((await thumb).body).size == (96, 96)

    # From the cache now: no new fetch.
    assert (await m.download("mxc://remote.org/pic", token)).body == image
    assert fetcher.calls == [("remote.org", "pic")]

    # What the origin does not have is 404; allow_remote=false does not fetch.
    r = await m.download("mxc://remote.org/missing", token)
    assert (r.status, r.json()["errcode"]) == (404, "M_NOT_FOUND")
    r = await m.get(f"{CLIENT_MEDIA}/download/remote.org/other", token, allow_remote="false")
    assert r.status == 404 and ("remote.org", "other") not in fetcher.calls

    # Unplugged: nothing new is fetched, the cache still serves.
    hs.hs.services.media.set_remote_fetcher(None)
    r = await m.download("mxc://remote.org/new", token)
    assert (r.status, r.json()["errcode"]) == (404, "M_NOT_FOUND")
    assert "federation" in r.json()["error"]
    assert (await m.download("mxc://remote.org/pic", token)).status == 200


@pytest_twisted.ensureDeferred
async def test_remote_size_and_concurrency_limits(db_config: DatabaseConfig,
                                                  tmp_path: Any) -> None:
    server = await start_server(str(tmp_path), db_config, media={
        "max_remote_bytes": 5000, "max_concurrent_remote_fetches": 2})
    try:
        token = (await Client(server.client_url).register("alice")).access_token
        files = {("r.org", f"m{i}"): (os.urandom(3000), None, None) for i in range(5)}
        files[("r.org", "big")] = (os.urandom(5001), "video/mp4", None)
        fetcher = FakeFetcher(files)
        server.hs.services.media.set_remote_fetcher(fetcher)
        m = MediaClient(server.client_url)

        pending = [defer.ensureDeferred(m.download(f"mxc://r.org/m{i}", token))
                   for i in range(5)]
        await _until(lambda: fetcher.running == 2)
        await _tick(0.1)
        assert fetcher.running == 2  # the others wait for a slot
        fetcher.release()
        results = await defer.gatherResults(pending)
        assert [r.body for r in results] == [files[("r.org", f"m{i}")][0] for i in range(5)]
        assert fetcher.max_running == 2 and len(fetcher.calls) == 5
        assert results[0].header("Content-Type") == "application/octet-stream"

        r = await m.download("mxc://r.org/big", token)
        assert (r.status, r.json()["errcode"]) == (502, "M_TOO_LARGE")
        # Nothing of it was kept; asking again asks the origin again.
        assert os.listdir(server.hs.services.media.files.tmp_dir) == []
        assert await server.hs.services.media.store.get("r.org", "big") is None
        r = await m.download("mxc://r.org/big", token)
        assert r.status == 502 and fetcher.calls.count(("r.org", "big")) == 2
    finally:
        await server.stop()
