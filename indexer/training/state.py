"""A training run on disk and in the catalog: run directories, state.json, resumable optimiser states, the run's job row."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from store.catalog import Catalog, Job, JobState, utcnow
from store.files import atomic_write

STATE_FILE = "state.json"


def read_state(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / STATE_FILE).read_text())


def write_state(run_dir: Path, state: dict[str, Any]) -> None:
    write_json(run_dir / STATE_FILE, state)


def write_json(path: Path, value: Any) -> None:
    """``value`` as indented, key-sorted JSON, replacing ``path`` atomically."""
    with atomic_write(path, "w") as f:
        f.write(json.dumps(value, indent=1, sort_keys=True))


def find_unfinished(models_root: Path) -> Path | None:
    """The newest run directory whose state says it is not done, if any."""
    runs = sorted((d for d in models_root.glob("run-*") if (d / STATE_FILE).is_file()), key=lambda d: d.name)
    for d in reversed(runs):
        try:
            if not read_state(d).get("done"):
                return d
        except (OSError, ValueError):
            continue
    return None


def new_run_dir(models_root: Path) -> Path:
    """A new, empty ``run-NNNN`` directory numbered after the highest one there."""
    models_root.mkdir(parents=True, exist_ok=True)
    numbers = [int(d.name[4:]) for d in models_root.glob("run-*") if d.name[4:].isdigit()]
    for n in range(max(numbers, default=0) + 1, 10**6):
        d = models_root / f"run-{n:04d}"
        try:
            d.mkdir()
            return d
        except FileExistsError:  # another trainer took it
            continue
    raise RuntimeError(f"no free run directory under {models_root}")


def save_progress(path: Path, model: Any, optimizer: Any, scheduler: Any, step: int, seconds: float) -> None:
    """A resumable training state (weights, optimiser, schedule, next step, seconds spent), written atomically."""
    from models.checkpoint import save_training_state

    with atomic_write(path) as f:
        save_training_state(f, model, optimizer, scheduler, step, seconds)


def load_progress(path: Path, model: Any, optimizer: Any, scheduler: Any) -> tuple[int, float]:
    """Restore a state written by :func:`save_progress`; returns (next step, seconds spent so far)."""
    from models.checkpoint import load_training_state

    return load_training_state(path, model, optimizer, scheduler)


def start_job(catalog: Catalog, job_id: int | None, run_dir: Path) -> int:
    """The run's ``train`` job row, created (or, on resume, restarted with one more attempt) as running."""
    with catalog.session() as session:
        job = session.get(Job, job_id) if job_id is not None else None
        if job is None:
            job = Job(kind="train", path=str(run_dir), attempts=0)
            session.add(job)
        job.state, job.attempts, job.error = JobState.RUNNING, job.attempts + 1, None
        job.started_at, job.finished_at = utcnow(), None
        session.flush()
        return int(job.id)


def end_job(catalog: Catalog, job_id: int, state: str, error: str | None = None) -> None:
    """End the run's job row: done (progress 1) or failed with ``error``."""
    with catalog.session() as session:
        job = session.get(Job, job_id)
        if job is not None:
            job.state, job.error, job.finished_at = state, error, utcnow()
            if state == JobState.DONE:
                job.progress = 1.0
