"""The HTTP API of `vidx serve` on real ingested tiny media: search, paging, ranges, moment clips, ingest, auth, confinement, delete."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from conftest import espeak, run_ffmpeg

TOKEN = "correct-horse-battery-staple-42"


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory, cut_video: Path, gen_dir: Path) -> dict[str, Path]:
    """A library root with a browser-playable MP4 (speech) and an AVI (MPEG-4 Part 2 + MP3) ingested."""
    root = tmp_path_factory.mktemp("library")
    data = tmp_path_factory.mktemp("data")
    mp4 = root / "cuts.mp4"
    mp4.write_bytes(cut_video.read_bytes())
    avi = root / "talk.avi"
    speech = espeak("a purple elephant walks through the snow", gen_dir / "elephant.wav")
    run_ffmpeg("-f", "lavfi", "-i", "testsrc=s=320x240:r=25:d=4", "-i", str(speech), "-map", "0:v", "-map", "1:a",
               "-c:v", "mpeg4", "-c:a", "libmp3lame", "-t", "4", str(avi))
    proc = subprocess.run([sys.executable, "-m", "vidx", "ingest", str(mp4), str(avi)], capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, VIDX_DATA_DIR=str(data)))
    assert proc.returncode == 0, proc.stderr
    return {"root": root, "data": data, "mp4": mp4, "avi": avi}


def _client(library: dict[str, Path], **settings: object) -> Iterator[TestClient]:
    from vidx.server.app import create_app
    from vidx.settings import Settings

    app = create_app(Settings(**{"data_dir": library["data"], "library_roots": str(library["root"]), **settings}))
    with TestClient(app) as client:
        yield client


@pytest.fixture(scope="module")
def client(library: dict[str, Path]) -> Iterator[TestClient]:
    yield from _client(library)


def _id(client: TestClient, name: str) -> int:
    return next(m["id"] for m in client.get("/api/v1/media").json()["items"] if m["name"] == name)


def test_search_answers_moments_with_urls_and_pages(client: TestClient, library: dict[str, Path]) -> None:
    r = client.get("/api/v1/search", params={"q": "quick brown fox"})
    assert r.status_code == 200, r.text
    body = r.json()
    first = body["results"][0]
    assert Path(first["media_path"]) == library["mp4"].resolve() and first["start"] < 3.0
    assert "fox" in [w.lower() for w in first["matched"]]
    assert first["play_url"] == f"/api/v1/media/{first['media_id']}/file" and first["play_offset"] == first["start"]
    assert first["page_url"].startswith(f"/#/watch/{first['media_id']}?t=")
    thumb = client.get(first["thumbnail_url"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg" and thumb.content[:2] == b"\xff\xd8"
    # The same moment objects as `vidx search --json`: every CLI key is there.
    cli = subprocess.run([sys.executable, "-m", "vidx", "search", "quick brown fox", "--json"], capture_output=True,
                         text=True, timeout=300, env=dict(os.environ, VIDX_DATA_DIR=str(library["data"])))
    import json

    assert set(json.loads(cli.stdout)[0]) <= set(first)
    # Paging: the second page starts where the first ended.
    both = client.get("/api/v1/search", params={"q": "elephant fox", "limit": 2, "per_media": 1}).json()["results"]
    one = client.get("/api/v1/search", params={"q": "elephant fox", "limit": 1}).json()
    two = client.get("/api/v1/search", params={"q": "elephant fox", "limit": 1, "offset": 1}).json()
    assert len(both) == 2 and one["has_more"] and [one["results"][0]["media_id"], two["results"][0]["media_id"]] == [m["media_id"] for m in both]
    # Filters as in the CLI.
    only = client.get("/api/v1/search", params={"q": "elephant fox", "media": "talk.avi"}).json()["results"]
    assert {Path(m["media_path"]).name for m in only} == {"talk.avi"}
    assert client.get("/api/v1/search", params={"q": "elephant", "min_duration": 100}).status_code == 400


def test_bad_queries_are_one_line_4xx(client: TestClient) -> None:
    for params in ({"q": ""}, {"q": "   "}, {"q": "x", "sources": "smell"}, {"q": "x", "fusion": "magic"},
                   {"q": "x", "limit": 0}, {"q": "x", "offset": -1}, {"q": "x", "media": "no-such.mp4"}, {}):
        r = client.get("/api/v1/search", params=params)
        assert 400 <= r.status_code < 500, (params, r.status_code)
        error = r.json()["error"]
        assert error and "\n" not in error and "Traceback" not in error, (params, error)
    assert client.get("/api/v1/media/999999").status_code == 404
    assert client.get("/api/v1/media/999999/file").status_code == 404
    assert client.get("/api/v1/media/not-a-number").status_code == 422


def test_the_file_is_served_with_byte_ranges(client: TestClient, library: dict[str, Path]) -> None:
    mp4_id = _id(client, "cuts.mp4")
    data = library["mp4"].read_bytes()
    whole = client.get(f"/api/v1/media/{mp4_id}/file")
    assert whole.status_code == 200 and whole.content == data and whole.headers["accept-ranges"] == "bytes"
    assert whole.headers["content-type"] == "video/mp4"
    part = client.get(f"/api/v1/media/{mp4_id}/file", headers={"Range": "bytes=100-1099"})
    assert part.status_code == 206 and part.content == data[100:1100]
    assert part.headers["content-range"] == f"bytes 100-1099/{len(data)}"
    tail = client.get(f"/api/v1/media/{mp4_id}/file", headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == data[-10:]
    past = client.get(f"/api/v1/media/{mp4_id}/file", headers={"Range": f"bytes={len(data) + 5}-"})
    assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{len(data)}"


def test_an_avi_plays_through_a_moment_clip(client: TestClient) -> None:
    from indexer.probe import probe

    r = client.get("/api/v1/search", params={"q": "purple elephant"}).json()["results"][0]
    assert r["media_name"] == "talk.avi"
    assert r["play_url"].startswith(f"/api/v1/media/{r['media_id']}/clip?") and r["play_offset"] == 0.0
    detail = client.get(f"/api/v1/media/{r['media_id']}").json()
    assert detail["playable"] is False and detail["segments"] and detail["clips"][0]["concepts"]
    clip = client.get(r["play_url"])
    assert clip.status_code == 200 and clip.headers["content-type"] == "video/mp4", clip.text[:200]
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"vidx-test-clip-{os.getpid()}.mp4"
    out.write_bytes(clip.content)
    try:
        info = probe(out)
        assert info.video_codec == "h264" and info.audio_codec == "aac"
        assert abs(info.duration - (r["end"] - r["start"])) < 1.0
    finally:
        out.unlink(missing_ok=True)
    assert client.get(f"/api/v1/media/{r['media_id']}/clip", params={"start": 3, "end": 1}).status_code == 400


def test_ingest_runs_in_the_background_and_search_sees_it_without_a_restart(
    client: TestClient, library: dict[str, Path], gen_dir: Path
) -> None:
    wav = library["root"] / "new" / "zebra.wav"
    wav.parent.mkdir()
    espeak("seven zebras crossed the wide river at dawn", wav)
    assert client.get("/api/v1/search", params={"q": "zebras river"}).json()["results"][0]["media_name"] != "zebra.wav"
    r = client.post("/api/v1/ingest", json={"paths": ["new"]})  # relative to the first library root
    assert r.status_code == 202, r.text
    [job] = r.json()["jobs"]
    assert job["path"] == str(wav.resolve())
    seen = set()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        state = client.get(f"/api/v1/jobs/{job['id']}").json()
        seen.add(state["state"])
        if state["state"] in ("done", "failed", "skipped"):
            break
        time.sleep(0.5)
    assert state["state"] == "done" and state["progress"] == 1.0, state
    assert "running" in seen or "queued" in seen
    listed = client.get("/api/v1/jobs", params={"batch": r.json()["batch"]}).json()["items"]
    assert [j["id"] for j in listed] == [job["id"]]
    # The child's sync published a new index generation; this long-lived server picks it up.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        hits = client.get("/api/v1/search", params={"q": "zebras river"}).json()["results"]
        if hits and hits[0]["media_name"] == "zebra.wav":
            break
        time.sleep(0.5)
    assert hits and hits[0]["media_name"] == "zebra.wav"


def test_ingest_paths_are_confined_to_the_library_roots(client: TestClient, library: dict[str, Path], tmp_path: Path) -> None:
    outside = tmp_path / "secret.wav"
    espeak("private", outside)
    link = library["root"] / "link.wav"
    link.symlink_to(outside)
    try:
        for paths, status in (
            ([str(outside)], 403), (["../" * 8 + str(outside).lstrip("/")], 403), ([str(link)], 403),
            (["/etc/passwd"], 403), (["no-such-file.mp4"], 400), ([], 422), ([str(library["mp4"]), str(outside)], 403),
        ):
            r = client.post("/api/v1/ingest", json={"paths": paths})
            assert r.status_code == status, (paths, r.status_code, r.text)
            assert "\n" not in r.json()["error"]
        # Nothing was queued by a refused request, not even its allowed paths.
        assert not any(j["path"] == str(outside) for j in client.get("/api/v1/jobs").json()["items"])
    finally:
        link.unlink()


def test_ingest_over_http_is_off_without_library_roots(library: dict[str, Path]) -> None:
    for c in _client(library, library_roots=""):
        r = c.post("/api/v1/ingest", json={"paths": [str(library["mp4"])]})
        assert r.status_code == 403 and "VIDX_LIBRARY_ROOTS" in r.json()["error"]


def test_bearer_token_and_session_cookie(library: dict[str, Path]) -> None:
    for c in _client(library, api_token=TOKEN):
        assert c.get("/healthz").status_code == 200  # no auth for health
        assert c.get("/api/v1/session").json() == {"auth_required": True, "authenticated": False}
        for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"}, {"Authorization": TOKEN}):
            r = c.get("/api/v1/media", headers=headers)
            assert r.status_code == 401 and r.json()["error"], headers
        assert c.get("/metrics").status_code == 401
        assert c.get("/api/v1/media", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert c.post("/api/v1/session", json={"token": "nope"}).status_code == 401
        opened = c.post("/api/v1/session", json={"token": TOKEN})
        assert opened.status_code == 204
        cookie = opened.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict") and TOKEN not in cookie
        # The cookie (kept by the client) now opens what <video> and <img> fetch.
        mp4_id = _id(c, "cuts.mp4")
        assert c.get(f"/api/v1/media/{mp4_id}/file", headers={"Range": "bytes=0-9"}).status_code == 206
        assert c.get("/api/v1/session").json()["authenticated"] is True
        c.delete("/api/v1/session")
        c.cookies.clear()
        assert c.get("/api/v1/media").status_code == 401


def test_serve_refuses_a_public_address_without_a_token(library: dict[str, Path]) -> None:
    proc = subprocess.run([sys.executable, "-m", "vidx", "serve", "--host", "0.0.0.0", "--port", "1"], capture_output=True,
                          text=True, timeout=60, env=dict(os.environ, VIDX_DATA_DIR=str(library["data"])))
    assert proc.returncode == 2 and "VIDX_API_TOKEN" in proc.stderr and "Traceback" not in proc.stderr


def test_pages_headers_health_and_metrics(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "script-src 'self'" in page.headers["content-security-policy"] and "access-control-allow-origin" not in page.headers
    assert client.get("/readyz").json()["status"] == "ready"
    client.get("/api/v1/search", params={"q": "fox"})
    text = client.get("/metrics").text
    assert "vidx_search_seconds_bucket" in text and 'vidx_searches_total{outcome="ok"}' in text and "vidx_jobs{" in text
    schema = client.get("/openapi.json").json()
    assert {"/api/v1/search", "/api/v1/media/{media_id}/file", "/api/v1/ingest", "/healthz"} <= set(schema["paths"])
    assert client.get("/docs").status_code == 200


def test_delete_removes_from_catalog_and_index_never_the_file(client: TestClient, library: dict[str, Path]) -> None:
    avi_id = _id(client, "talk.avi")
    assert client.delete(f"/api/v1/media/{avi_id}").status_code == 204
    assert library["avi"].is_file()
    assert client.get(f"/api/v1/media/{avi_id}").status_code == 404
    assert client.delete(f"/api/v1/media/{avi_id}").status_code == 404
    hits = client.get("/api/v1/search", params={"q": "purple elephant"}).json()["results"]
    assert all(h["media_id"] != avi_id for h in hits)


def test_an_empty_library_answers_empty_not_an_error(tmp_path: Path) -> None:
    from vidx.server.app import create_app
    from vidx.settings import Settings

    with TestClient(create_app(Settings(data_dir=tmp_path / "empty"))) as c:
        assert c.get("/readyz").json() == {"status": "ready", "media": 0}
        r = c.get("/api/v1/search", params={"q": "anything at all"})
        assert r.status_code == 200 and r.json()["results"] == []
        assert c.get("/api/v1/search", params={"q": "   "}).status_code == 400
        assert c.get("/api/v1/media").json()["total"] == 0


def test_batches_the_server_never_started_end_failed_not_queued_forever(tmp_path: Path) -> None:
    from indexer.jobs import create_jobs, list_jobs
    from vidx.app import App
    from vidx.server.ingest_runner import IngestRunner
    from vidx.settings import Settings

    vapp = App(Settings(data_dir=tmp_path / "d"))
    runner = IngestRunner(vapp)
    ids = create_jobs(vapp.catalog, [tmp_path / "a.mp4", tmp_path / "b.mp4"], batch="b-1")
    runner._work.put("b-1")  # queued behind a batch that is still running when the server stops
    runner.stop()
    jobs = list_jobs(vapp.catalog, ids=ids)
    assert [j.state for j in jobs] == ["failed", "failed"] and all("server stopped" in (j.reason or "") for j in jobs)
    vapp.catalog.dispose()


def test_ingest_with_a_broker_goes_on_the_queue(library: dict[str, Path]) -> None:
    """With VIDX_BROKER_URL the API only makes the jobs and publishes them; the workers do the rest."""
    import uuid

    from indexer.jobs import list_jobs
    from indexer.tasks import create_app as celery_app
    from indexer.tasks import purge

    prefix = f"test-api-{uuid.uuid4().hex[:8]}"
    for c in _client(library, broker_url="redis://127.0.0.1:6379/0", queue_prefix=prefix):
        r = c.post("/api/v1/ingest", json={"paths": [str(library["mp4"])]})
        assert r.status_code == 202, r.text
        [job] = r.json()["jobs"]
        vapp = c.app.state.vidx.vapp
        assert [j.state for j in list_jobs(vapp.catalog, ids=[job["id"]])] == ["queued"]  # no embedded child ran it
        try:
            assert purge(celery_app(vapp.queue_config())) == 1  # its first stage was published, once
        finally:
            import redis

            client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
            for key in list(client.scan_iter(f"*{prefix}*")):  # kombu's bindings of our queue names
                client.delete(key)
