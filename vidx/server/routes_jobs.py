"""POST /api/v1/ingest (paths confined to the library roots) and the jobs it makes."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query

from vidx.server.deps import JobId, State, require_auth
from vidx.server.schemas import Error, IngestRequest, IngestResponse, Job, JobPage, QueuedJob

router = APIRouter(prefix="/api/v1", dependencies=[Depends(require_auth)], tags=["jobs"])
MAX_FILES = 10_000


def _inside(path: Path, roots: list[Path]) -> bool:
    real = os.path.realpath(path)
    return any(os.path.commonpath([real, str(root)]) == str(root) for root in roots)


def confine(given: list[str], roots: list[Path]) -> list[Path]:
    """The media files the request names, each resolved (symlinks, ..) inside a library root; ValueError otherwise.

    A relative path is taken relative to the first root. Folders are expanded as `vidx ingest` does, and
    every file found is checked again (a symlink inside a root may point out of it).
    """
    from indexer.pipeline import expand_paths

    if not roots:
        raise PermissionError("ingest over the API is off: set VIDX_LIBRARY_ROOTS to the folders it may read")
    files: list[Path] = []
    for raw in given:
        if not raw.strip() or "\x00" in raw:
            raise ValueError(f"expected a file or folder path, got {raw!r}")
        path = Path(os.path.expanduser(raw))
        path = path if path.is_absolute() else roots[0] / path
        if not _inside(path, roots):
            raise PermissionError(f"{raw} is outside the library roots")
        if not path.exists():
            raise ValueError(f"no such file or folder: {raw}")
        for file in expand_paths([Path(os.path.realpath(path))]):
            if not _inside(file, roots):
                raise PermissionError(f"{file} (found under {raw}) leads outside the library roots")
            files.append(file)
            if len(files) > MAX_FILES:
                raise ValueError(f"more than {MAX_FILES} files in one request; send fewer")
    if not files:
        raise ValueError("no media files found in the given paths")
    return files


@router.post("/ingest", status_code=202, response_model=IngestResponse,
             responses={400: {"model": Error}, 403: {"model": Error}, 503: {"model": Error}})
def ingest(state: State, body: IngestRequest) -> IngestResponse:
    """Index files under the library roots: jobs are made at once, the work runs in the background."""
    try:
        files = confine(body.paths, state.vapp.settings.resolved_library_roots())
    except PermissionError as e:
        raise HTTPException(403, str(e)) from e
    except ValueError as e:
        raise HTTPException(400, str(e)) from e
    try:
        batch, job_ids = state.runner.submit(files)
    except RuntimeError as e:
        raise HTTPException(503, str(e)) from e
    return IngestResponse(batch=batch, jobs=[QueuedJob(id=i, path=str(f)) for i, f in zip(job_ids, files)])


def _utc(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes (stored as UTC); OpenAPI's date-time needs the offset.
    return value.replace(tzinfo=timezone.utc) if value is not None and value.tzinfo is None else value


def _job(j) -> Job:  # type: ignore[no-untyped-def]
    return Job(id=j.id, kind=j.kind, path=j.path, state=j.state, stage=j.stage, progress=round(j.progress, 4),
               attempts=j.attempts, outcome=j.outcome, reason=j.reason, media_id=j.media_id, batch=j.batch,
               created_at=_utc(j.created_at), finished_at=_utc(j.finished_at))


@router.get("/jobs", response_model=JobPage)
def jobs(
    state: State,
    batch: Annotated[str | None, Query(max_length=64)] = None,
    job_state: Annotated[str | None, Query(alias="state", pattern="^(queued|running|done|failed|skipped)$")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> JobPage:
    from indexer.jobs import list_jobs

    rows = list_jobs(state.vapp.catalog, batch=batch, states=[job_state] if job_state else None, limit=limit)
    return JobPage(items=[_job(j) for j in rows])


@router.get("/jobs/{job_id}", response_model=Job, responses={404: {"model": Error}})
def job(state: State, job_id: JobId) -> Job:
    from indexer.jobs import list_jobs

    rows = list_jobs(state.vapp.catalog, ids=[job_id])
    if not rows:
        raise HTTPException(404, f"no job {job_id}")
    return _job(rows[0])
