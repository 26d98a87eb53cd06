"""Commands that bring files in: `vidx ingest` (in-process or onto the queue), `vidx worker`, `vidx jobs`."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.markup import escape

from vidx.cli.common import DataDir, app, console, exit_on, fail, open_app, out, progress_bars, settings, setup_logging

if TYPE_CHECKING:
    from vidx.app import App


def ingest_files(
    vapp: App, files: list[Path], *, as_json: bool, quiet: bool = False, job_ids: list[int] | None = None
) -> dict[str, int]:
    """Ingest ``files`` with progress bars, then sync the search index; returns counts per status.

    ``job_ids``: jobs already created for ``files`` (by `vidx serve`), else one job per file is made now.
    """
    import uuid

    from indexer.jobs import create_jobs, fail_unstarted
    from indexer.pipeline import StageEnv, run_job

    vapp.store.sweep()
    env = StageEnv(vapp.catalog, vapp.store, vapp.ingest_options(), vapp.embedder)
    if job_ids is None:
        job_ids = create_jobs(vapp.catalog, files, batch=str(uuid.uuid4()))
    counts: dict[str, int] = {}
    failed: list[tuple[str, str]] = []
    duplicates: list[tuple[str, str]] = []
    with progress_bars(disable=(as_json or quiet) and not sys.stderr.isatty()) as progress, \
            fail_unstarted(vapp.catalog, job_ids):
        overall = progress.add_task(f"[bold]{len(files)} files", total=len(files))
        for file, job_id in zip(files, job_ids):
            task = progress.add_task(f"  {escape(file.name[:40])}", total=1.0)

            def on_progress(stage: str, fraction: float, task: Any = task, name: str = file.name[:32]) -> None:
                progress.update(task, completed=fraction, description=f"  {escape(name)} [dim]{stage}[/dim]")

            result = run_job(env, job_id, progress=on_progress)
            counts[result.status] = counts.get(result.status, 0) + 1
            if result.status in ("failed", "duplicate"):
                (failed if result.status == "failed" else duplicates).append((str(file), result.reason or ""))
            progress.remove_task(task)
            progress.advance(overall)
            mark = {"indexed": "[green]indexed[/green]", "skipped": "[dim]skipped[/dim]",
                    "duplicate": "[yellow]duplicate[/yellow]", "failed": "[red]failed[/red]"}[result.status]
            detail = f"{result.clips} clips, {result.segments} segments" if result.status == "indexed" else result.reason
            if not quiet or result.status == "failed":
                progress.console.print(f"{mark} {escape(str(file))}: {escape(str(detail))}")
            if as_json:
                typer.echo(json.dumps({
                    "path": result.path, "status": result.status, "media_id": result.media_id,
                    "job_id": result.job_id, "reason": result.reason, "duration": result.duration,
                    "clips": result.clips, "segments": result.segments,
                    "timings": {k: round(v, 3) for k, v in result.timings.items()},
                }))
        sync_task = progress.add_task("  search index", total=1.0)
        report = vapp.sync(summarize=True,
                           progress=lambda stage, f: progress.update(sync_task, completed=f, description=f"  search index [dim]{stage}[/dim]"))
        progress.update(sync_task, completed=1.0)
        if counts.get("indexed"):
            vapp.prepare_search()  # the ONNX export happens now, while torch is loaded, not at the first search
    for media_id, error in report.errors.items():
        console.print(f"[yellow]index sync skipped media {media_id}:[/yellow] {escape(error)}")
    for media_id, error in (report.summaries.errors if report.summaries else {}).items():
        console.print(f"[yellow]no chapters for media {media_id}:[/yellow] {escape(error)}")
    if not quiet:
        _print_summary(len(files), counts, failed, duplicates)
    return counts


def _print_summary(total: int, counts: dict[str, int], failed: list[tuple[str, str]], duplicates: list[tuple[str, str]]) -> None:
    """The batch summary: counts per outcome, then each failed file and each duplicate with its reason."""
    order = ("indexed", "skipped", "duplicate", "failed")
    parts = [f"{counts[k]} {k}" for k in order if counts.get(k)] + [f"{n} {k}" for k, n in sorted(counts.items()) if k not in order]
    console.print(f"[bold]batch of {total}:[/bold] " + (", ".join(parts) or "nothing done"))
    for label, rows, colour in (("failed", failed, "red"), ("duplicate", duplicates, "yellow")):
        for path, reason in rows[:50]:
            console.print(f"  [{colour}]{label}[/{colour}] {escape(path)}: {escape(reason)}")
        if len(rows) > 50:
            console.print(f"  ... and {len(rows) - 50} more {label} (see `vidx jobs --state failed`)")


def _read_path_list(list_file: Path) -> list[Path]:
    """Paths from a text file (or `-` for stdin): one a line; blank lines and `#` comments skipped."""
    try:
        lines = sys.stdin.read().splitlines() if str(list_file) == "-" else list_file.read_text().splitlines()
    except OSError as e:
        fail(f"cannot read {str(list_file)}: {e.strerror or str(e)}", 2)
    return [Path(line.strip()) for line in lines if line.strip() and not line.lstrip().startswith("#")]


@app.command()
def ingest(
    paths: Annotated[Optional[list[Path]], typer.Argument(help="Media files or folders (searched recursively).")] = None,
    data_dir: DataDir = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object per file (per job with --queue).")] = False,
    queue: Annotated[bool, typer.Option("--queue", help="Enqueue for `vidx worker`s ($VIDX_BROKER_URL) and return at once.")] = False,
    from_file: Annotated[Optional[Path], typer.Option("--from-file", help="Also ingest the paths listed in this text file (one a line; - for stdin).")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="With --queue: wait for the batch, with a progress bar and its summary.")] = False,
    run_batch: Annotated[Optional[str], typer.Option("--run-batch", hidden=True, help="Run the queued jobs of this batch in this process (`vidx serve`'s ingest child).")] = None,
) -> None:
    """Index media files into the catalog and the search index; exit 1 if any file failed."""
    from indexer.pipeline import expand_paths

    setup_logging(verbose)
    vapp = open_app(data_dir)
    if run_batch is not None:
        from indexer.jobs import list_jobs

        queued = list(reversed(list_jobs(vapp.catalog, batch=run_batch, states=["queued"])))
        counts = ingest_files(vapp, [Path(j.path or "") for j in queued], as_json=as_json, quiet=True,
                              job_ids=[j.id for j in queued])
        raise typer.Exit(1 if counts.get("failed") else 0)
    given = list(paths or []) + (_read_path_list(from_file) if from_file is not None else [])
    if not given:
        fail("give media files or folders, or --from-file LIST", 2)
    files = list(expand_paths(given))
    if not files:
        fail("no media files found in the given paths", 1)
    if queue:
        batch, job_ids = _enqueue_files(vapp, files, as_json=as_json)
        if wait:
            raise typer.Exit(_wait_batch(vapp, batch=batch, ids=None, timeout=None))
        return
    counts = ingest_files(vapp, files, as_json=as_json)
    if counts.get("failed"):
        raise typer.Exit(1)


def _queue_app(vapp: App):  # type: ignore[no-untyped-def]
    from indexer.tasks import create_app

    with exit_on():
        return create_app(vapp.queue_config())


def _enqueue_files(vapp: App, files: list[Path], *, as_json: bool) -> tuple[str, list[int]]:
    """Create one queued job per file in one batch and publish them; print the job ids."""
    import uuid

    from indexer.jobs import create_jobs, finish_job
    from indexer.tasks import enqueue

    capp = _queue_app(vapp)
    batch = str(uuid.uuid4())
    job_ids = create_jobs(vapp.catalog, files, batch=batch)
    try:
        enqueue(capp, job_ids)
    except Exception as e:  # kombu's OperationalError and friends: the broker is unreachable
        reason = f"not queued: broker unreachable ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
        for job_id in job_ids:
            finish_job(vapp.catalog, job_id, "failed", reason)
        fail(f"{reason}; the {len(job_ids)} jobs were marked failed (`vidx jobs retry ID` later)", 1)
    for job_id, file in zip(job_ids, files):
        if as_json:
            typer.echo(json.dumps({"job_id": job_id, "path": os.path.abspath(file), "batch": batch}))
        else:
            typer.echo(f"{job_id}\t{os.path.abspath(file)}")
    console.print(f"queued {len(job_ids)} jobs, batch {batch} (watch: `vidx jobs --wait --batch {batch}`)")
    return batch, job_ids


def _wait_batch(vapp: App, *, batch: str | None, ids: list[int] | None, timeout: float | None) -> int:
    """Progress bar over a batch's jobs until all ended; then its summary. Returns the exit code."""
    import time

    from indexer.jobs import summarise
    from store.queries import count_stale

    version = vapp.embedder.version
    started = time.monotonic()
    with progress_bars() as progress:
        summary = summarise(vapp.catalog, batch=batch, ids=ids)
        bar = progress.add_task(f"[bold]{summary.total} jobs", total=max(summary.total, 1))
        while True:
            summary = summarise(vapp.catalog, batch=batch, ids=ids)
            done = summary.total - summary.pending
            progress.update(bar, completed=summary.progress * max(summary.total, 1),
                            description=f"[bold]{done}/{summary.total} jobs[/bold] [dim]{summary.pending} pending[/dim]")
            if summary.finished:
                break
            if timeout is not None and time.monotonic() - started > timeout:
                progress.stop()
                console.print(f"[yellow]timed out[/yellow] with {summary.pending} of {summary.total} jobs still pending")
                return 2
            time.sleep(1.0)
        # The workers' index sync follows each write within seconds; wait a little for it.
        if summary.counts.get("indexed"):
            deadline = time.monotonic() + 60
            while count_stale(vapp.catalog, version) and time.monotonic() < deadline:
                time.sleep(1.0)
    _print_summary(summary.total, summary.counts, summary.failed, summary.duplicates)
    stale = count_stale(vapp.catalog, version)
    if stale:
        console.print(f"[yellow]note:[/yellow] {stale} indexed files are not in the search index yet "
                      "(a worker on the sync queue adds them; `vidx search` does too)")
    return 1 if summary.counts.get("failed") else 0


@app.command()
def worker(
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", min=1, help="Worker processes (each handles one file at a time).")] = 1,
    queues: Annotated[str, typer.Option("--queues", "-Q", help="Comma list: ingest, sync (the single-writer index sync), or full queue names.")] = "ingest,sync",
    loglevel: Annotated[str, typer.Option("--loglevel", "-l")] = "INFO",
    name: Annotated[Optional[str], typer.Option("--name", "-n", help="Celery node name (default vidx-PID@HOST).")] = None,
    data_dir: DataDir = None,
) -> None:
    """Run a Celery worker that drains the ingest queue ($VIDX_BROKER_URL, catalog at $VIDX_DATABASE_URL)."""
    from indexer.tasks import create_app, run_worker

    from vidx.app import App

    loaded = settings(data_dir)
    if loaded.threads == 0 and concurrency > 1:
        # Each child gets its share of the cores: N processes with all cores each would thrash.
        # One child keeps "0 = automatic", exactly the embedded default's options.
        loaded = loaded.model_copy(update={"threads": max(1, (os.cpu_count() or 1) // concurrency)})
    vapp = App(loaded)
    with exit_on():
        config = vapp.queue_config()
    # Migrate once here, then drop the engine: children must not share the parent's connections.
    vapp.catalog.dispose()
    vapp.store.sweep()
    console.print(f"vidx worker: {concurrency} processes on {', '.join(q.strip() for q in queues.split(','))}, "
                  f"catalog {config.deployment.database_url.split('@')[-1]}, data {config.deployment.data_dir}")
    run_worker(create_app(config), concurrency=concurrency, queues=[q.strip() for q in queues.split(",") if q.strip()],
               loglevel=loglevel.upper(), name=name)


jobs_app = typer.Typer(help="Ingest jobs: state, stage, progress, attempts and errors; wait for a batch; retry.")
app.add_typer(jobs_app, name="jobs")


@jobs_app.callback(invoke_without_command=True)
def jobs(
    ctx: typer.Context,
    batch: Annotated[Optional[str], typer.Option("--batch", "-b", help="Only this batch (`latest` for the newest).")] = None,
    state: Annotated[Optional[str], typer.Option("--state", help="Only jobs in this state: queued, running, done, failed, skipped.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1)] = 50,
    wait: Annotated[bool, typer.Option("--wait", help="Block with a progress bar until the batch (default: the newest) ended.")] = False,
    timeout: Annotated[Optional[float], typer.Option("--timeout", help="With --wait: give up after this many seconds (exit 2).")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    data_dir: DataDir = None,
) -> None:
    """List jobs (newest first), or --wait for a batch to end; exit 1 if a waited-for job failed."""
    from indexer.jobs import latest_batch, list_jobs

    if ctx.invoked_subcommand is not None:
        return
    vapp = open_app(data_dir)
    if batch == "latest" or (wait and batch is None):
        batch = latest_batch(vapp.catalog)
        if batch is None:
            console.print("no batches yet: run `vidx ingest --queue PATH`")
            raise typer.Exit(0 if not wait else 1)
    if wait:
        if batch is not None and not list_jobs(vapp.catalog, batch=batch, limit=1):
            fail(f"no such batch: {batch} (see `vidx jobs`)", 1)
        raise typer.Exit(_wait_batch(vapp, batch=batch, ids=None, timeout=timeout))
    rows = list_jobs(vapp.catalog, batch=batch, states=[state] if state else None, limit=limit)
    if as_json:
        typer.echo(json.dumps([
            {"id": j.id, "kind": j.kind, "path": j.path, "state": j.state, "stage": j.stage, "progress": round(j.progress, 3),
             "attempts": j.attempts, "outcome": j.outcome, "reason": j.reason, "media_id": j.media_id,
             "batch": j.batch, "worker": j.worker} for j in rows
        ], indent=2))
        return
    if not rows:
        console.print("no jobs")
        return
    from rich.table import Table

    table = Table(show_lines=False)
    for col in ("id", "state", "stage", "progress", "attempts", "path / reason"):
        table.add_column(col, justify="right" if col in ("id", "progress", "attempts") else "left")
    colours = {"done": "green", "failed": "red", "running": "cyan", "skipped": "dim"}
    for j in rows:
        st = f"[{colours[j.state]}]{j.state}[/{colours[j.state]}]" if j.state in colours else j.state
        if j.outcome == "duplicate":
            st += " [yellow](duplicate)[/yellow]"
        silent = j.silent_for()
        if silent is not None and silent > vapp.settings.queue_heartbeat_timeout:
            # Its worker died: Redis gives the task back after the visibility timeout, or retry it.
            st += f" [yellow](no heartbeat for {silent:.0f} s)[/yellow]"
        where = escape(j.path or "") if j.kind == "ingest" else f"[dim]{escape(j.kind)}[/dim] {escape(j.path or '')}"
        if j.reason:
            where += f"\n[{'red' if j.state == 'failed' else 'dim'}]{escape(j.reason)}[/]"
        table.add_row(str(j.id), st, j.stage or "-", f"{j.progress * 100:.0f}%", str(j.attempts), where)
    out.print(table)


@jobs_app.command("retry")
def jobs_retry(
    job_ids: Annotated[list[int], typer.Argument(help="Ids of failed (or stuck) jobs.")],
    data_dir: DataDir = None,
) -> None:
    """Put failed jobs back on the queue (their attempts are kept)."""
    from indexer.jobs import retry_job, retry_problems
    from indexer.tasks import enqueue

    vapp = open_app(data_dir)
    capp = _queue_app(vapp)
    timeout = vapp.settings.queue_heartbeat_timeout
    # Every id is checked before any job changes: one bad id must not leave the others queued but unpublished.
    errors = retry_problems(vapp.catalog, job_ids, timeout)
    if errors:
        for error in errors:
            console.print(f"[red]error:[/red] {escape(error)}")
        console.print("nothing was requeued")
        raise typer.Exit(1)
    reset: list[int] = []
    failed = False
    for job_id in job_ids:
        try:
            retry_job(vapp.catalog, job_id, heartbeat_timeout=timeout)
            reset.append(job_id)
        except ValueError as e:  # it changed since the check (rare): the ones reset are still published
            console.print(f"[red]error:[/red] {escape(str(e))}")
            failed = True
    job_ids = reset
    try:
        enqueue(capp, job_ids)
    except Exception as e:  # the broker is unreachable: say so, the jobs stay queued for a later retry
        fail(f"broker unreachable: {str(e).splitlines()[0] if str(e) else type(e).__name__}", 1)
    console.print(f"requeued {len(job_ids)} jobs: {', '.join(map(str, job_ids))}")
    if failed:
        raise typer.Exit(1)
