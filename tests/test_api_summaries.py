"""Chapters, summaries, exports and the library overview over HTTP, on real ingested media: shapes, edits, errors, auth."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from conftest import espeak, run_ffmpeg
from test_api import _client  # a TestClient over library["data"], library["root"] and settings

TOKEN = "summaries-token-5e1d"
API = "/api/v1"
GARDEN = (
    "In the garden, we plant tomato seeds in spring. Good soil needs compost, and compost is made from leaves and "
    "kitchen scraps. Water the tomato plants every morning, and pull the weeds before they grow tall. A gardener "
    "ties each tomato plant to a wooden stake, so the heavy fruit does not break the stem. By late summer the garden "
    "is full of red tomatoes, green beans and sweet peppers, and the soil is ready for more compost."
)
RAILWAY = (
    "The railway station opens at six o'clock. The first train leaves from platform two, and the locomotive pulls "
    "eight carriages along the tracks. Passengers buy tickets at the station and wait on the platform. The engine "
    "driver checks the signals before the train departs. Steam locomotives once burned coal, but modern trains run "
    "on electric power from overhead wires. The night train crosses the mountains and reaches the city at dawn."
)


def two_topic_video(folder: Path) -> tuple[Path, float]:
    """Over a minute of two spoken passages (gardening, then railways) over two scenes; the file and the join time."""
    parts = []
    for name, text in (("garden", GARDEN), ("railway", RAILWAY)):
        wav = espeak(text, folder / f"{name}.wav")
        probe = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(wav)],
                               capture_output=True, text=True, check=True)
        parts.append((wav, float(probe.stdout) + 1.0))
    (first, d1), (second, d2) = parts
    assert d1 + d2 > 64, "the passages must make a file past the one-chapter length (60 s)"
    out = folder / "two_topics.mp4"
    run_ffmpeg(
        "-f", "lavfi", "-i", f"smptebars=s=320x240:r=10:d={d1:.2f}", "-f", "lavfi", "-i", f"testsrc2=s=320x240:r=10:d={d2:.2f}",
        "-i", str(first), "-i", str(second), "-filter_complex",
        f"[0:v][1:v]concat=n=2:v=1:a=0[v];[2:a]apad=whole_dur={d1:.2f}[a0];[a0][3:a]concat=n=2:v=0:a=1[a]",
        "-map", "[v]", "-map", "[a]", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", str(out),
    )
    return out, d1


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory, cut_video: Path, speech_wav: Path) -> dict[str, object]:
    """Three files ingested: two spoken topics (several chapters), a 6 s clip (one chapter), a WAV left without chapters."""
    from sqlalchemy import delete

    from store.catalog import Chapter, FileSummary
    from store.queries import resolve_media
    from vidx.app import App
    from vidx.settings import Settings

    root = tmp_path_factory.mktemp("summaries-library")
    data = tmp_path_factory.mktemp("summaries-data")
    video, join = two_topic_video(root)
    short = root / "cuts.mp4"
    short.write_bytes(cut_video.read_bytes())
    bare = root / "fox.wav"
    bare.write_bytes(speech_wav.read_bytes())
    proc = subprocess.run([sys.executable, "-m", "vidx", "ingest", str(video), str(short), str(bare)], capture_output=True,
                          text=True, timeout=600, env=dict(os.environ, VIDX_DATA_DIR=str(data)))
    assert proc.returncode == 0, proc.stderr
    vapp = App(Settings(data_dir=data))
    report = vapp.summarize()  # what ingest already did (then nothing is stale), or does it now
    assert not report.errors, report.errors
    # One indexed file as a library from before chapters existed: nothing stored for it.
    bare_id = resolve_media(vapp.catalog, str(bare)).id
    with vapp.catalog.session() as session:
        session.execute(delete(Chapter).where(Chapter.media_id == bare_id))
        session.execute(delete(FileSummary).where(FileSummary.media_id == bare_id))
    ids = {p.name: resolve_media(vapp.catalog, str(p)).id for p in (video, short, bare)}
    return {"root": root, "data": data, "video": video, "join": join, "ids": ids, "vapp": vapp}


@pytest.fixture(scope="module")
def client(library: dict[str, object]) -> Iterator[TestClient]:
    yield from _client(library)


def _id(library: dict[str, object], name: str) -> int:
    return library["ids"][name]  # type: ignore[index]


def _one_line_error(r, status: int) -> str:  # type: ignore[no-untyped-def]
    assert r.status_code == status, (r.status_code, r.text)
    error = r.json()["error"]
    assert error and "\n" not in error and "Traceback" not in error, error
    return error


def test_chapters_cover_the_file_with_picture_urls_not_server_paths(client: TestClient, library: dict[str, object]) -> None:
    from search.summaries import ChapterOut, chapters
    from vidx.server.schemas import ChapterItem

    vid = _id(library, "two_topics.mp4")
    r = client.get(f"{API}/media/{vid}/chapters")
    assert r.status_code == 200, r.text
    found = r.json()
    duration = client.get(f"{API}/media/{vid}").json()["duration"]
    assert len(found) >= 2 and [c["index"] for c in found] == list(range(1, len(found) + 1))
    assert found[0]["start"] == 0 and all(a["end"] == b["start"] for a, b in zip(found, found[1:]))
    assert abs(found[-1]["end"] - duration) < 1.0
    # The picture is a URL of the clip-thumbnail route; the data dir never shows.
    assert str(library["data"]) not in r.text and all("thumbnail" not in c for c in found)
    for c in found:
        assert c["thumbnail_url"] == f"{API}/media/{vid}/clips/{c['thumb_clip']}/thumbnail"
        image = client.get(c["thumbnail_url"])
        assert image.status_code == 200 and image.content[:2] == b"\xff\xd8"
    # Everything else is what `vidx chapters --json` says, and nothing of ChapterOut is dropped but its path.
    assert set(ChapterItem.model_fields) == set(ChapterOut.model_fields) - {"thumbnail"} | {"thumbnail_url"}
    cli = [c.model_dump(exclude={"thumbnail"}) for c in chapters(library["vapp"].catalog, vid)]  # type: ignore[union-attr]
    assert [{k: v for k, v in c.items() if k != "thumbnail_url"} for c in found] == json.loads(json.dumps(cli))

    one = client.get(f"{API}/media/{_id(library, 'cuts.mp4')}/chapters").json()
    assert len(one) == 1 and one[0]["start"] == 0 and one[0]["title"]
    # An indexed file whose chapters were never computed: an empty list, not an error, and nothing computed now.
    assert client.get(f"{API}/media/{_id(library, 'fox.wav')}/chapters").json() == []


def test_the_summary_is_transcript_sentences_with_chapters_highlights_and_speech(client: TestClient, library: dict[str, object]) -> None:
    vid = _id(library, "two_topics.mp4")
    detail = client.get(f"{API}/media/{vid}").json()
    transcript = " ".join(" ".join(s["text"] for s in detail["segments"]).split())
    r = client.get(f"{API}/media/{vid}/summary")
    assert r.status_code == 200, r.text
    summary = r.json()
    assert summary["media_id"] == vid and summary["name"] == "two_topics.mp4"
    assert summary["sentences"] and all(" ".join(s["text"].split()) in transcript for s in summary["sentences"])
    assert summary["chapters"] == client.get(f"{API}/media/{vid}/chapters").json()
    assert summary["highlights"] and all(h["kind"] in ("central", "unusual") for h in summary["highlights"])
    assert all(0 <= h["start"] < h["end"] <= summary["duration"] + 1 for h in summary["highlights"])
    assert 0.5 < summary["speech_share"] <= 1.0 and 0 < summary["speech_seconds"] <= summary["duration"]
    assert summary["concepts"] and all(len(c) == 2 and 0 < c[1] <= 1 for c in summary["concepts"])
    assert str(library["data"]) not in r.text

    error = _one_line_error(client.get(f"{API}/media/{_id(library, 'fox.wav')}/summary"), 404)
    assert "vidx chapters --recompute" in error
    _one_line_error(client.get(f"{API}/media/999999/summary"), 404)


def test_exports_have_their_types_names_and_parse_back(client: TestClient, library: dict[str, object]) -> None:
    import webvtt

    vid = _id(library, "two_topics.mp4")
    chapters = client.get(f"{API}/media/{vid}/chapters").json()
    url = f"{API}/media/{vid}/export"

    track = client.get(url, params={"format": "webvtt-chapters"})
    assert track.status_code == 200 and track.headers["content-type"] == "text/vtt; charset=utf-8"
    assert track.headers["content-disposition"].startswith('attachment; filename="two_topics.chapters.vtt"')
    cues = webvtt.from_buffer(io.StringIO(track.text)).captions
    assert [c.text for c in cues] == [c["title"] for c in chapters]
    assert all(0 <= c["start"] - cue.start_in_seconds < 1 for cue, c in zip(cues, chapters))  # whole seconds in webvtt-py

    captions = client.get(url, params={"format": "webvtt"})
    assert captions.status_code == 200 and captions.headers["content-type"] == "text/vtt; charset=utf-8"
    said = " ".join(c.text for c in webvtt.from_buffer(io.StringIO(captions.text)).captions)
    assert "locomotive" in said.lower() and "compost" in said.lower()

    srt = client.get(url, params={"format": "srt"})
    assert srt.status_code == 200 and srt.headers["content-type"] == "application/x-subrip; charset=utf-8"
    assert 'filename="two_topics.srt"' in srt.headers["content-disposition"]
    srt_cues = webvtt.from_buffer(io.StringIO(srt.text), format="srt").captions
    assert srt_cues and " ".join(c.text for c in srt_cues) == said

    text = client.get(url, params={"format": "text"})
    assert text.status_code == 200 and text.headers["content-type"] == "text/plain; charset=utf-8"
    # The list to paste under a video first, then the transcript under the chapters' headings.
    lines = text.text.split("\n\n")[0].splitlines()
    assert lines[0].startswith("00:00 ") and len(lines) == len(chapters)
    assert 'filename="two_topics.txt"' in text.headers["content-disposition"] and "locomotive" in text.text.lower()
    assert [line.split(" ", 1)[1] for line in lines] == [c["title"] for c in chapters]

    document = client.get(url, params={"format": "json"})
    assert document.status_code == 200 and document.headers["content-type"] == "application/json"
    body = document.json()
    assert body["media_id"] == vid and [c["title"] for c in body["summary"]["chapters"]] == [c["title"] for c in chapters]
    assert body["segments"] and all("words" in s for s in body["segments"])

    for bad in ({"format": "docx"}, {"format": ""}, {}):
        assert "format" in _one_line_error(client.get(url, params=bad), 422)
    _one_line_error(client.get(f"{API}/media/999999/export", params={"format": "srt"}), 404)
    _one_line_error(client.get(f"{API}/media/not-a-number/export", params={"format": "srt"}), 422)
    # Without chapters: no chapter track (never computed in a request), but captions from the transcript still.
    bare = f"{API}/media/{_id(library, 'fox.wav')}/export"
    assert "vidx chapters --recompute" in _one_line_error(client.get(bare, params={"format": "webvtt-chapters"}), 404)
    for fmt in ("srt", "webvtt", "text"):
        fox = client.get(bare, params={"format": fmt})
        assert fox.status_code == 200 and "fox" in fox.text.lower(), (fmt, fox.text)
    assert client.get(bare, params={"format": "json"}).json()["summary"] is None


def test_a_title_edit_persists_shows_in_search_and_survives_recomputation(client: TestClient, library: dict[str, object]) -> None:
    vid = _id(library, "two_topics.mp4")
    last = client.get(f"{API}/media/{vid}/chapters").json()[-1]
    computed = last["title"]
    r = client.patch(f"{API}/media/{vid}/chapters/{last['index']}", json={"title": "  Trains   and stations "})
    assert r.status_code == 200, r.text
    edited = r.json()
    assert edited["title"] == "Trains and stations" and edited["edited"] and edited["computed_title"] == computed
    assert edited["index"] == last["index"] and edited["start"] == last["start"]
    # Stored, not kept in the server: a fresh server (a page reload elsewhere) sees it, and so does search.
    for fresh in _client(library):
        assert fresh.get(f"{API}/media/{vid}/chapters").json()[-1]["title"] == "Trains and stations"
    hit = client.get(f"{API}/search", params={"q": "electric trains overhead wires", "media": "two_topics.mp4"}).json()["results"][0]
    assert hit["start"] >= last["start"] - 1.0 and hit["chapter"] == "Trains and stations"
    assert "Trains and stations" in client.get(f"{API}/media/{vid}/export", params={"format": "text"}).text

    library["vapp"].summarize([vid], force=True)  # type: ignore[union-attr]
    assert client.get(f"{API}/media/{vid}/chapters").json()[-1]["title"] == "Trains and stations"

    for restore in (None, "", "   "):
        back = client.patch(f"{API}/media/{vid}/chapters/{last['index']}", json={"title": restore})
        assert back.status_code == 200 and back.json()["title"] == computed and not back.json()["edited"], back.text
        folded = client.patch(f"{API}/media/{vid}/chapters/{last['index']}", json={"title": "once\nmore\tagain"})
        assert folded.json()["title"] == "once more again", folded.text
    client.patch(f"{API}/media/{vid}/chapters/{last['index']}", json={"title": None})


def test_bad_title_edits_are_one_line_4xx_and_change_nothing(client: TestClient, library: dict[str, object]) -> None:
    vid = _id(library, "two_topics.mp4")
    before = client.get(f"{API}/media/{vid}/chapters").json()
    url = f"{API}/media/{vid}/chapters"
    assert "no chapter 99" in _one_line_error(client.patch(f"{url}/99", json={"title": "x"}), 404)
    _one_line_error(client.patch(f"{url}/0", json={"title": "x"}), 422)
    _one_line_error(client.patch(f"{url}/-1", json={"title": "x"}), 422)
    _one_line_error(client.patch(f"{url}/one", json={"title": "x"}), 422)
    _one_line_error(client.patch(f"{url}/1", json={"title": "x" * 201}), 422)
    _one_line_error(client.patch(f"{url}/1", json={"title": "bad\x00title"}), 422)
    _one_line_error(client.patch(f"{url}/1", json={}), 422)
    _one_line_error(client.patch(f"{url}/1", json={"title": 7}), 422)
    _one_line_error(client.patch(f"{url}/1", content=b"not json", headers={"content-type": "application/json"}), 422)
    _one_line_error(client.patch(f"{API}/media/999999/chapters/1", json={"title": "x"}), 404)
    assert "vidx chapters --recompute" in _one_line_error(
        client.patch(f"{API}/media/{_id(library, 'fox.wav')}/chapters/1", json={"title": "x"}), 404)
    assert client.get(f"{API}/media/{vid}/chapters").json() == before
    _one_line_error(client.get(f"{API}/media/999999/chapters"), 404)
    _one_line_error(client.get(f"{API}/media/{2**63}/chapters"), 422)


def test_search_hits_name_the_chapter_they_fall_in(client: TestClient, library: dict[str, object]) -> None:
    vid = _id(library, "two_topics.mp4")
    chapters = client.get(f"{API}/media/{vid}/chapters").json()
    for query in ("tomato seeds compost", "locomotive carriages platform"):
        hit = client.get(f"{API}/search", params={"q": query, "media": "two_topics.mp4"}).json()["results"][0]
        middle = (hit["start"] + hit["end"]) / 2
        inside = next(c for c in chapters if c["start"] <= middle < c["end"] or c is chapters[-1])
        assert hit["chapter"] == inside["title"], (query, hit["start"], hit["end"], chapters)
    # A file without chapters: its hits name none.
    fox = client.get(f"{API}/search", params={"q": "quick brown fox", "media": "fox.wav"}).json()["results"]
    assert fox and fox[0]["chapter"] is None


def test_the_library_overview_has_totals_topics_and_moments_that_open_the_page(client: TestClient, library: dict[str, object]) -> None:
    r = client.get(f"{API}/library/overview")
    assert r.status_code == 200, r.text
    overview = r.json()
    media = client.get(f"{API}/media").json()["items"]
    assert overview["files"] == 3 and overview["unsummarized"] == 1
    assert abs(overview["hours"] * 3600 - sum(m["duration"] for m in media)) < 1.0
    assert 0 < overview["speech_hours"] < overview["hours"] and overview["languages"].get("en", 0) >= 2
    topics = overview["topics"]
    total = sum(len(client.get(f"{API}/media/{m['id']}/chapters").json()) for m in media)
    assert topics and sum(t["chapters"] for t in topics) == total
    for topic in topics:
        assert topic["name"] and topic["moments"] and topic["media"]
        for m in topic["moments"]:
            assert m["media_name"] == Path(m["media_path"]).name
            assert m["page_url"] == f"/#/watch/{m['media_id']}?t={m['start']:.2f}&e={m['end']:.2f}"
    assert str(library["data"]) not in r.text


def test_every_summary_route_wants_the_token_when_one_is_set(library: dict[str, object]) -> None:
    vid = _id(library, "two_topics.mp4")
    routes = [("get", f"{API}/media/{vid}/chapters", None), ("get", f"{API}/media/{vid}/summary", None),
              ("get", f"{API}/media/{vid}/export?format=srt", None), ("get", f"{API}/library/overview", None),
              ("patch", f"{API}/media/{vid}/chapters/1", {"title": "intruder"})]
    for client in _client(library, api_token=TOKEN):
        for method, url, body in routes:
            kwargs = {"json": body} if body is not None else {}
            refused = client.request(method, url, **kwargs)
            assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer", (url, refused.text)
            wrong = client.request(method, url, headers={"Authorization": "Bearer nope"}, **kwargs)
            assert wrong.status_code == 401, url
        assert client.get(f"{API}/media/{vid}/chapters", headers={"Authorization": f"Bearer {TOKEN}"}).json()[0]["title"] != "intruder"
        ok = {"Authorization": f"Bearer {TOKEN}"}
        for method, url, body in routes:
            kwargs = {"json": {"title": None}} if body is not None else {}
            assert client.request(method, url, headers=ok, **kwargs).status_code == 200, url


def test_the_openapi_schema_documents_the_routes(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path, method in ((f"{API}/media/{{media_id}}/chapters", "get"), (f"{API}/media/{{media_id}}/chapters/{{number}}", "patch"),
                         (f"{API}/media/{{media_id}}/summary", "get"), (f"{API}/media/{{media_id}}/export", "get"),
                         (f"{API}/library/overview", "get")):
        assert method in paths[path], path
        assert "404" in paths[path][method]["responses"] or path.endswith("overview")
    formats = next(p for p in paths[f"{API}/media/{{media_id}}/export"]["get"]["parameters"] if p["name"] == "format")
    schema = json.dumps(formats["schema"])
    assert all(re.search(rf'"{f}"', schema) for f in ("webvtt-chapters", "webvtt", "srt", "text", "json"))
