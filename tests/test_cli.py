"""The `vidx` command line as a user runs it: exit codes, one-line errors, ls and show."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path



def vidx(*args: str, data_dir: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ, VIDX_DATA_DIR=str(data_dir), **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "vidx", *args], capture_output=True, text=True, timeout=300, env=full_env
    )


def test_ingest_batch_with_bad_files_then_ls_and_show(data_dir: Path, cut_video: Path, bad_files: dict[str, Path]) -> None:
    proc = vidx("ingest", str(bad_files["empty"]), str(cut_video), str(bad_files["missing"]), str(bad_files["text"]), "--json", data_dir=data_dir)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["status"] for r in results] == ["failed", "indexed", "failed", "failed"]
    failed_lines = [line for line in proc.stderr.splitlines() if line.startswith("failed ")]
    assert len(failed_lines) == 3
    assert any("no such file" in line for line in failed_lines)

    listing = vidx("ls", "--json", data_dir=data_dir)
    assert listing.returncode == 0, listing.stderr
    items = {Path(m["path"]).name: m for m in json.loads(listing.stdout)}
    assert items["cuts.mp4"]["status"] == "indexed" and items["cuts.mp4"]["clips"] >= 3
    assert items["empty.mp4"]["status"] == "failed" and items["empty.mp4"]["error"]
    table = vidx("ls", data_dir=data_dir)
    assert "cuts.mp4" in table.stdout and "indexed" in table.stdout

    shown = vidx("show", "cuts.mp4", data_dir=data_dir)
    assert shown.returncode == 0, shown.stderr
    assert "transcript" in shown.stdout and "fox" in shown.stdout.lower()
    assert "shot" in shown.stdout
    as_json = json.loads(vidx("show", str(items["cuts.mp4"]["id"]), "--json", data_dir=data_dir).stdout)
    assert as_json["segments"] and as_json["clips"][0]["concepts"]
    assert Path(as_json["clips"][0]["thumbnail"]).is_file()

    # Re-running the same batch re-indexes nothing that was indexed.
    again = vidx("ingest", str(cut_video), "--json", data_dir=data_dir)
    assert again.returncode == 0 and json.loads(again.stdout)["status"] == "skipped"


def test_user_errors_are_one_line(data_dir: Path, tmp_path: Path) -> None:
    unknown = vidx("show", "nothing-here.mp4", data_dir=data_dir)
    assert unknown.returncode == 1 and "no media matches" in unknown.stderr and "Traceback" not in unknown.stderr
    empty_dir = tmp_path / "empty-folder"
    empty_dir.mkdir()
    nothing = vidx("ingest", str(empty_dir), data_dir=data_dir)
    assert nothing.returncode == 1 and "no media files" in nothing.stderr
    bad_setting = vidx("ls", data_dir=data_dir, env={"VIDX_CLIP_SECONDS": "-3"})
    assert bad_setting.returncode == 2 and "VIDX_" in bad_setting.stderr and "Traceback" not in bad_setting.stderr
    empty = vidx("ls", data_dir=data_dir)
    assert empty.returncode == 0 and "catalog is empty" in empty.stderr


def test_ingest_with_database_url(data_dir: Path, silent_video: Path, database_url: str) -> None:
    proc = vidx("ingest", str(silent_video), "--json", data_dir=data_dir, env={"VIDX_DATABASE_URL": database_url})
    assert proc.returncode == 0, proc.stderr
    listing = json.loads(vidx("ls", "--json", data_dir=data_dir, env={"VIDX_DATABASE_URL": database_url}).stdout)
    assert [m["status"] for m in listing] == ["indexed"]


def test_ingest_killed_mid_file_does_not_lock_the_file(data_dir: Path, cut_video: Path) -> None:
    """A `vidx ingest` SIGKILLed mid-file leaves its job running; the next `vidx ingest` of the file indexes it."""
    script = (
        "import os, signal, sys; from pathlib import Path; import migrations; "
        "from indexer import pipeline; from indexer.analyse import IngestOptions; from store.catalog import Catalog; from store.features import FeatureStore; "
        "d = Path(sys.argv[1]); c = Catalog(f'sqlite:///{d / \"catalog.sqlite\"}'); migrations.upgrade(c.engine); "
        "pipeline.analyse_stage = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL); "
        "pipeline.ingest_file(Path(sys.argv[2]), c, FeatureStore(d / 'features'), IngestOptions(cache_dir=d / 'cache'))"
    )
    killed = subprocess.run([sys.executable, "-c", script, str(data_dir), str(cut_video)], capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr
    proc = vidx("ingest", str(cut_video), "--json", data_dir=data_dir)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[0])["status"] == "indexed"
    jobs = json.loads(vidx("jobs", "--json", data_dir=data_dir).stdout)
    assert [(j["state"], j["reason"] is not None and "interrupted" in j["reason"]) for j in jobs] == [("done", False), ("failed", True)]
    found = vidx("search", "quick brown fox", "--json", data_dir=data_dir)
    assert found.returncode == 0, found.stderr
    assert any(Path(m["media_path"]) == cut_video.resolve() for m in json.loads(found.stdout))


def test_jobs_retry_checks_every_id_first_and_wait_on_unknown_batch(data_dir: Path) -> None:
    import migrations
    from indexer.jobs import create_jobs, finish_job
    from store.catalog import Catalog

    catalog = Catalog(f"sqlite:///{data_dir / 'catalog.sqlite'}")
    migrations.upgrade(catalog.engine)
    [failed, running] = create_jobs(catalog, [data_dir / "a.mp4", data_dir / "b.mp4"], batch="b1")
    finish_job(catalog, failed, "failed", "boom")
    from indexer.jobs import begin_stage, worker_id

    assert begin_stage(catalog, running, "probe", worker_id()) == "run"  # this (live) process owns it
    broker = {"VIDX_BROKER_URL": "redis://127.0.0.1:1/0"}  # never reached: nothing is valid to publish
    proc = vidx("jobs", "retry", str(failed), "999999", data_dir=data_dir, env=broker)
    assert proc.returncode == 1 and "no job 999999" in proc.stdout + proc.stderr and "Traceback" not in proc.stderr
    busy = vidx("jobs", "retry", str(failed), str(running), data_dir=data_dir, env=broker)
    assert busy.returncode == 1 and "is running on" in busy.stdout + busy.stderr
    with catalog.session() as s:
        from store.catalog import Job, JobState

        assert s.get(Job, failed).state == JobState.FAILED  # not left queued without a message
        assert s.get(Job, running).state == JobState.RUNNING
    catalog.dispose()
    nobatch = vidx("jobs", "--wait", "--batch", "no-such", data_dir=data_dir)
    assert nobatch.returncode == 1 and "no such batch" in nobatch.stdout + nobatch.stderr


def test_search_resyncs_files_a_dead_rebuild_left_unmarked(data_dir: Path, cut_video: Path) -> None:
    """A full sync unmarks every file first; one that dies there leaves synced_at NULL, and search must see them as stale."""
    assert vidx("ingest", str(cut_video), data_dir=data_dir).returncode == 0
    from sqlalchemy import update

    from store.catalog import Catalog, Media

    catalog = Catalog(f"sqlite:///{data_dir / 'catalog.sqlite'}")
    with catalog.session() as s:
        version = s.query(Media.synced_version).scalar()
        assert version is not None
        s.execute(update(Media).values(synced_at=None))  # what `reindex` does before it dies half way
    found = vidx("search", "quick brown fox", "--json", data_dir=data_dir)
    assert found.returncode == 0, found.stderr
    with catalog.session() as s:
        # The search counted the file as stale and synced it before answering.
        assert s.query(Media.synced_at).scalar() is not None
    catalog.dispose()
    assert any(Path(m["media_path"]) == cut_video.resolve() for m in json.loads(found.stdout))


def test_version_and_shell_completion(data_dir: Path) -> None:
    from importlib.metadata import version

    shown = vidx("--version", data_dir=data_dir)
    assert shown.returncode == 0 and shown.stdout.strip() == f"vidx {version('vidx')}"
    script = vidx("--show-completion", "bash", data_dir=data_dir)
    assert script.returncode == 0 and "_vidx_completion" in script.stdout and "complete" in script.stdout
    # What the installed script asks the program when Tab is pressed after `vidx se` / `vidx search --fu`.
    for words, cword, want in (("vidx se", "1", "search"), ("vidx search --fu", "2", "--fusion")):
        env = {"_VIDX_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": cword}
        done = subprocess.run([str(Path(sys.executable).with_name("vidx"))], capture_output=True, text=True, timeout=60,
                              env=dict(os.environ, VIDX_DATA_DIR=str(data_dir), **env))
        assert done.returncode == 0 and want in done.stdout.split(), (words, done.stdout, done.stderr)
