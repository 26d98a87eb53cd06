"""The README's quick start on a bare clone: `vidx ingest samples`, then its spoken and visual query find the right moment."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import REPO
from test_cli import vidx

SAMPLES = REPO / "samples"
SPOKEN_QUERY = "my fellow americans"
VISUAL_QUERY = "a rabbit"


def _quick_start_queries() -> list[str]:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r'vidx search "([^"]+)"', section)


def _top(query: str, data_dir: Path) -> dict:
    proc = vidx("search", query, "--limit", "3", "--json", data_dir=data_dir)
    assert proc.returncode == 0, proc.stderr
    moments = json.loads(proc.stdout)
    assert moments, f"no answer for {query!r}"
    return moments[0]


def test_readme_quick_start_queries_are_the_ones_tested() -> None:
    assert _quick_start_queries() == [SPOKEN_QUERY, VISUAL_QUERY]
    assert "vidx ingest samples" in (REPO / "README.md").read_text(encoding="utf-8")


@pytest.mark.slow  # three real files through ASR and the backbone: about 20 s on 2 cores
def test_quick_start_on_the_samples(data_dir: Path) -> None:
    ingest = vidx("ingest", str(SAMPLES), "--json", data_dir=data_dir)
    assert ingest.returncode == 0, ingest.stderr
    results = {Path(r["path"]).name: r["status"] for r in map(json.loads, ingest.stdout.splitlines())}
    assert results == {
        "big_buck_bunny_clip.mp4": "indexed",
        "jfk_inaugural.opus": "indexed",
        "sense_and_sensibility_0890.opus": "indexed",
    }

    spoken = _top(SPOKEN_QUERY, data_dir)
    assert Path(spoken["media_path"]).name == "jfk_inaugural.opus"
    # "And so, my fellow Americans" is said in the first 3 s of the 11 s excerpt.
    assert 0.0 <= spoken["start"] < 3.0, spoken
    assert "americans" in spoken["text"].lower()

    visual = _top(VISUAL_QUERY, data_dir)
    assert Path(visual["media_path"]).name == "big_buck_bunny_clip.mp4"
    # The rabbit is on screen from 13 s to the end, save a cut to the rodents at about 17.8-19.3 s.
    assert 13.0 <= visual["start"] < 21.0, visual
