"""A missing or corrupt active checkpoint: search answers without it, describe says so in one line (no tracebacks)."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import select
from typer.testing import CliRunner

from store.catalog import Media
from test_train import _cli, trained  # noqa: F401 - the trained library fixture (its own instance here)


def test_missing_or_corrupt_active_checkpoint_gives_one_line_errors_not_tracebacks(trained: Path) -> None:
    """Search answers (without the rerank; files that need CBT are skipped by the sync); describe: one line, exit 1."""
    from sqlalchemy import update

    from search.rerank import load_videobert
    from vidx.app import App
    from vidx.cli import app as cli
    from vidx.settings import Settings

    vapp = App(Settings(data_dir=trained))
    if set(vapp.active_models()) != {"videobert", "cbt"}:
        _cli(trained, "models", "activate", "run-0001")
    active = App(Settings(data_dir=trained)).active_models()
    vb, cbt = active["videobert"].path, active["cbt"].path
    saved = {p: p.read_bytes() for p in (vb, cbt)}
    with vapp.catalog.session() as session:
        bikes = next(m for m in session.scalars(select(Media)).all() if m.path.endswith("bikes.mp4"))
        key, bikes_id = bikes.content_hash, bikes.id
    try:
        for broken in ("missing", "corrupt"):
            load_videobert.cache_clear()  # this process loaded them before; a new `vidx` would not have
            for p in (vb, cbt):
                p.unlink() if broken == "missing" else p.write_bytes(b"\x80\x04 truncated")
            # bikes.mp4 needs CBT again (its cached vectors gone, its index entry stale).
            for f in vapp.store.path(key).glob("cbt_visual*.npy"):
                f.unlink()
            with vapp.catalog.session() as session:
                session.execute(update(Media).where(Media.id == bikes_id).values(synced_at=None))
            res = CliRunner().invoke(cli, ["search", "bicycles and cars in a city street", "--json",
                                           "--data-dir", str(trained)])
            assert res.exit_code == 0 and res.exception is None, res.output
            found = json.loads(res.stdout)
            assert found and all("align" not in m["scores"] for m in found)  # no rerank
            with vapp.catalog.session() as session:  # the index keeps the active CBT's version
                versions = {m.id: m.synced_version for m in session.scalars(select(Media))}
            assert all(v.endswith(f"+cbt/{active['cbt'].id}") for v in versions.values()), versions
            res = CliRunner().invoke(cli, ["describe", "bikes.mp4", "--at", "2", "--data-dir", str(trained)])
            assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
            assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output
            assert ("is missing" if broken == "missing" else "cannot be loaded") in res.output, res.output
            assert "vidx models deactivate videobert" in res.output
    finally:
        for p, data in saved.items():
            p.write_bytes(data)
        load_videobert.cache_clear()

