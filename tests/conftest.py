"""Shared fixtures: tiny generated media (ffmpeg lavfi, espeak-ng), the real media folder, both catalog databases."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_MEDIA = REPO.parent / "shared" / "media"
PG_ADMIN_URL = os.environ.get("VIDX_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def run_ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True, timeout=120)


def espeak(text: str, out: Path) -> Path:
    subprocess.run(["espeak-ng", "-s", "130", "-w", str(out), text], check=True, timeout=60)
    return out


@pytest.fixture(scope="session")
def shared_media() -> Path:
    if not SHARED_MEDIA.is_dir():
        pytest.skip(f"real media folder not found at {SHARED_MEDIA}")
    return SHARED_MEDIA


@pytest.fixture(scope="session")
def gen_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


SPOKEN = "the quick brown fox jumps over the lazy dog"


@pytest.fixture(scope="session")
def speech_wav(gen_dir: Path) -> Path:
    return espeak(SPOKEN, gen_dir / "speech.wav")


@pytest.fixture(scope="session")
def cut_video(gen_dir: Path, speech_wav: Path) -> Path:
    """6 s video: red, blue, then testsrc, 2 s each (hard cuts at 2 and 4 s), with speech on the audio."""
    out = gen_dir / "cuts.mp4"
    run_ffmpeg(
        "-f", "lavfi", "-i", "color=c=red:s=320x240:r=25:d=2",
        "-f", "lavfi", "-i", "color=c=blue:s=320x240:r=25:d=2",
        "-f", "lavfi", "-i", "testsrc=s=320x240:r=25:d=2",
        "-i", str(speech_wav),
        "-filter_complex", "[0:v][1:v][2:v]concat=n=3:v=1:a=0[v];[3:a]apad=whole_dur=6[a]",
        "-map", "[v]", "-map", "[a]", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-t", "6",
        str(out),
    )
    return out


@pytest.fixture(scope="session")
def silent_video(gen_dir: Path) -> Path:
    """3 s video with no audio stream at all."""
    out = gen_dir / "noaudio.mp4"
    run_ffmpeg("-f", "lavfi", "-i", "testsrc2=s=160x120:r=10:d=3", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(out))
    return out


@pytest.fixture()
def bad_files(tmp_path: Path, cut_video: Path) -> dict[str, Path]:
    """One of each kind of bad input a user throws at ingest."""
    files = {}
    files["empty"] = tmp_path / "empty.mp4"
    files["empty"].write_bytes(b"")
    files["text"] = tmp_path / "notes.mp4"
    files["text"].write_text("this is not a video\n" * 50)
    files["garbage"] = tmp_path / "garbage.mkv"
    files["garbage"].write_bytes(os.urandom(64 * 1024))
    files["truncated"] = tmp_path / "truncated.mp4"
    files["truncated"].write_bytes(cut_video.read_bytes()[:2048])
    files["missing"] = tmp_path / "does-not-exist.mp4"
    return files


def _postgres_url() -> Iterator[str]:
    import psycopg

    name = f"vidx_test_{uuid.uuid4().hex[:10]}"
    admin = PG_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://")
    try:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as e:
        pytest.fail(f"PostgreSQL is not reachable at {admin} (start it; .ci/run does): {e}")
    base = admin.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The same test against the embedded SQLite catalog and a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    else:
        yield from _postgres_url()


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "vidx-data"
    d.mkdir()
    return d


def have(binary: str) -> bool:
    return shutil.which(binary) is not None
