"""Chapters, summaries, the library overview and exports through the CLI, on generated media of known structure."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import espeak, run_ffmpeg

COOKING = (
    "To bake bread, mix the flour with water, yeast and a little salt. Knead the dough for ten minutes "
    "until it is smooth. Let the dough rise in a warm kitchen for an hour. Shape the loaf, put it in the "
    "oven and bake the bread until the crust is brown. A good loaf of bread needs patience, flour and a hot oven. "
    "Bakers knead the dough by hand and let the yeast do the rest of the work. "
    "Rye flour makes a darker bread, and a sourdough starter replaces the yeast. "
    "When the loaf comes out of the oven, let the bread cool before you slice it."
)
ASTRONOMY = (
    "The planets orbit the sun in ellipses. Jupiter is the largest planet, and its moons were seen by "
    "Galileo through a telescope. At night, astronomers point telescopes at distant galaxies and stars. "
    "The light of a galaxy can travel for millions of years before it reaches the telescope. "
    "Saturn has rings of ice, and the moon of the earth shows its phases as it orbits the planet. "
    "Comets come from the cold edge of the solar system. "
    "A space telescope above the atmosphere sees galaxies that no telescope on the ground can see."
)


def vidx(*args: str, data_dir: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ, VIDX_DATA_DIR=str(data_dir), **(env or {}))
    return subprocess.run([sys.executable, "-m", "vidx", *args], capture_output=True, text=True, timeout=600, env=full_env)


def _two_topics(folder: Path) -> tuple[Path, float]:
    """Two spoken passages on different topics over two different scenes; returns the file and the join time."""
    a, b = espeak(COOKING, folder / "cooking.wav"), espeak(ASTRONOMY, folder / "astronomy.wav")
    durations = []
    for wav in (a, b):
        probe = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(wav)],
                               capture_output=True, text=True, check=True)
        durations.append(float(probe.stdout) + 1.0)
    out = folder / "two_topics.mp4"
    run_ffmpeg(
        "-f", "lavfi", "-i", f"testsrc=s=320x240:r=10:d={durations[0]:.2f}",
        "-f", "lavfi", "-i", f"mandelbrot=s=320x240:r=10,trim=duration={durations[1]:.2f}",
        "-i", str(a), "-i", str(b),
        "-filter_complex",
        f"[0:v][1:v]concat=n=2:v=1:a=0[v];[2:a]apad=whole_dur={durations[0]:.2f}[a0];[a0][3:a]concat=n=2:v=0:a=1[a]",
        "-map", "[v]", "-map", "[a]", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", str(out),
    )
    return out, durations[0]


def _scenes_without_speech(folder: Path) -> Path:
    """70 s of two scenes with a silent audio track: nothing to transcribe."""
    out = folder / "no_speech.mp4"
    run_ffmpeg(
        "-f", "lavfi", "-i", "testsrc2=s=320x240:r=10:d=35", "-f", "lavfi", "-i", "color=c=green:s=320x240:r=10:d=35",
        "-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono",
        "-filter_complex", "[0:v][1:v]concat=n=2:v=1:a=0[v]", "-map", "[v]", "-map", "2:a", "-t", "70",
        "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", str(out),
    )
    return out


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    folder = tmp_path_factory.mktemp("summaries")
    video, join = _two_topics(folder)
    quiet = _scenes_without_speech(folder)
    audio = espeak(COOKING, folder / "bread.wav")
    data_dir = folder / "data"
    proc = vidx("ingest", str(video), str(quiet), str(audio), data_dir=data_dir)
    assert proc.returncode == 0, proc.stderr
    return {"data_dir": data_dir, "video": video, "join": join, "quiet": quiet, "audio": audio}


def _chapters(library: dict[str, object], ref: str, env: dict[str, str] | None = None) -> list[dict[str, object]]:
    proc = vidx("chapters", ref, "--json", data_dir=library["data_dir"], env=env)  # type: ignore[arg-type]
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _transcript(library: dict[str, object], ref: str) -> str:
    proc = vidx("show", ref, "--json", data_dir=library["data_dir"])  # type: ignore[arg-type]
    assert proc.returncode == 0, proc.stderr
    return " ".join(s["text"] for s in json.loads(proc.stdout)["segments"])


def test_two_topics_split_at_the_join_with_titles_from_each_passage(library: dict[str, object]) -> None:
    found = _chapters(library, "two_topics.mp4")
    assert len(found) >= 2
    for key in ("start", "end", "title", "keywords", "summary"):
        assert all(key in c for c in found)
    assert found[0]["start"] == 0 and all(a["end"] == b["start"] for a, b in zip(found, found[1:]))
    join = float(library["join"])  # type: ignore[arg-type]
    assert any(abs(float(c["start"]) - join) <= 3.0 for c in found[1:]), [c["start"] for c in found]
    first = next(c for c in found if float(c["end"]) <= join + 3.0)
    last = found[-1]
    cooking = {"bread", "dough", "flour", "yeast", "loaf", "oven", "knead", "bake", "baking", "kitchen", "bakers"}
    astronomy = {"planet", "planets", "telescope", "telescopes", "galaxy", "galaxies", "jupiter", "saturn", "stars",
                 "astronomers", "orbit", "moons", "sun", "moon", "galileo"}

    def words(c: dict[str, object]) -> set[str]:
        return set(re.findall(r"[a-z]+", " ".join([str(c["title"]), *map(str, c["keywords"]), str(c["summary"])]).lower()))  # type: ignore[arg-type]

    assert words(first) & cooking and not words(first) & astronomy, first
    assert words(last) & astronomy and not words(last) & cooking, last


def test_summaries_are_transcript_sentences_with_their_times(library: dict[str, object]) -> None:
    transcript = " ".join(_transcript(library, "two_topics.mp4").split())
    proc = vidx("summarize", "two_topics.mp4", "--json", data_dir=library["data_dir"])  # type: ignore[arg-type]
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["sentences"] and summary["speech_share"] > 0.5
    for sentence in summary["sentences"] + [s for c in summary["chapters"] for s in c["sentences"]]:
        assert " ".join(sentence["text"].split()) in transcript, sentence
        assert 0 <= sentence["start"] < sentence["end"] <= summary["duration"] + 1
    assert summary["highlights"] and all(h["kind"] in ("central", "unusual") for h in summary["highlights"])


def test_an_edited_title_survives_recomputation(library: dict[str, object]) -> None:
    data_dir = library["data_dir"]
    proc = vidx("chapters", "two_topics.mp4", "--title", "1", "Making bread at home", "--json", data_dir=data_dir)  # type: ignore[arg-type]
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0]["title"] == "Making bread at home"
    recomputed = vidx("chapters", "--recompute", data_dir=data_dir)  # type: ignore[arg-type]
    assert recomputed.returncode == 0, recomputed.stderr
    found = _chapters(library, "two_topics.mp4")
    assert found[0]["title"] == "Making bread at home" and found[0]["edited"]
    assert found[0]["computed_title"] != "Making bread at home"
    bad = vidx("chapters", "two_topics.mp4", "--title", "99", "x", data_dir=data_dir)  # type: ignore[arg-type]
    assert bad.returncode == 2 and "expected a chapter number" in bad.stderr and "Traceback" not in bad.stderr


def test_a_chapter_setting_change_recomputes_from_stored_features(library: dict[str, object]) -> None:
    default = _chapters(library, "two_topics.mp4")
    one = _chapters(library, "two_topics.mp4", env={"VIDX_CHAPTER_MIN_SECONDS": "600", "VIDX_CHAPTER_MAX_SECONDS": "900"})
    assert len(one) == 1 and len(default) >= 2
    assert len(_chapters(library, "two_topics.mp4")) == len(default)


def test_a_file_without_speech_is_described_from_the_screen(library: dict[str, object]) -> None:
    found = _chapters(library, "no_speech.mp4")
    assert found and all(c["source"] in ("screen", "none") for c in found)
    assert any(c["source"] == "screen" for c in found)
    show = json.loads(vidx("show", "no_speech.mp4", "--json", data_dir=library["data_dir"]).stdout)  # type: ignore[arg-type]
    tags = {str(t[0]).lower() for clip in show["clips"] for t in clip["concepts"] or []}
    tag_words = {w for t in tags for w in re.findall(r"[a-z]+", t)}
    for c in found:
        if c["source"] == "screen":
            assert set(re.findall(r"[a-z]+", " ".join(map(str, c["keywords"])).lower())) <= tag_words, c
            assert c["thumbnail"] and Path(str(c["thumbnail"])).is_file()


def test_a_file_without_video_has_chapters_without_thumbnails(library: dict[str, object]) -> None:
    found = _chapters(library, "bread.wav")
    assert found and all(c["thumbnail"] is None for c in found)
    assert any(w in " ".join(map(str, found[0]["keywords"])).lower() for w in ("bread", "dough", "flour", "yeast", "loaf"))


def test_search_results_name_their_chapter(library: dict[str, object]) -> None:
    proc = vidx("search", "telescope galaxies", "--json", "--limit", "3", data_dir=library["data_dir"])  # type: ignore[arg-type]
    assert proc.returncode == 0, proc.stderr
    hits = json.loads(proc.stdout)
    top = hits[0]
    assert top["media_path"].endswith("two_topics.mp4")
    titles = {c["title"] for c in _chapters(library, "two_topics.mp4")}
    assert top["chapter"] in titles


def test_library_overview_and_exports(library: dict[str, object]) -> None:
    data_dir = library["data_dir"]
    proc = vidx("summarize", "--library", "--json", data_dir=data_dir)  # type: ignore[arg-type]
    assert proc.returncode == 0, proc.stderr
    overview = json.loads(proc.stdout)
    assert overview["files"] == 3 and overview["unsummarized"] == 0 and overview["languages"] == {"en": 2}
    assert 0 < overview["speech_hours"] < overview["hours"]
    topics = overview["topics"]
    assert topics and sum(t["chapters"] for t in topics) == sum(
        len(_chapters(library, ref)) for ref in ("two_topics.mp4", "no_speech.mp4", "bread.wav"))
    text = vidx("summarize", "--library", data_dir=data_dir)  # type: ignore[arg-type]
    assert text.returncode == 0 and "3 files" in text.stdout

    for fmt, marker in (("webvtt-chapters", "WEBVTT"), ("webvtt", "WEBVTT"), ("srt", "-->"), ("text", "00:00")):
        exported = vidx("export", "two_topics.mp4", "--format", fmt, data_dir=data_dir)  # type: ignore[arg-type]
        assert exported.returncode == 0, exported.stderr
        assert marker in exported.stdout
    target = Path(str(data_dir)).parent / "export.json"
    saved = vidx("export", "two_topics.mp4", "--format", "json", "-o", str(target), data_dir=data_dir)  # type: ignore[arg-type]
    assert saved.returncode == 0, saved.stderr
    document = json.loads(target.read_text())
    assert document["summary"]["chapters"] and document["segments"]
    wrong = vidx("export", "two_topics.mp4", "--format", "docx", data_dir=data_dir)  # type: ignore[arg-type]
    assert wrong.returncode == 2 and "expected --format" in wrong.stderr
    missing = vidx("chapters", "nope.mp4", data_dir=data_dir)  # type: ignore[arg-type]
    assert missing.returncode == 2 and "no indexed media" in missing.stderr
