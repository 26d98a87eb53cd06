"""The `vidx` command line: ingest, worker, jobs, ls, show, search, reindex, eval."""

from __future__ import annotations

import os

# Decoder, backbone and ASR share the cores; OpenMP threads that spin while idle starve the
# others (measured: 2.3x slower encoding beside ffmpeg). Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json  # noqa: E402
import logging  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Annotated, Any, Optional  # noqa: E402

import typer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import (  # noqa: E402
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.markup import escape  # noqa: E402
from rich.table import Table  # noqa: E402
from sqlalchemy import or_, select  # noqa: E402

from vidx.app import App  # noqa: E402
from vidx.settings import Settings  # noqa: E402

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Find the moment in a library of videos and audio.")
console = Console(stderr=True, soft_wrap=True)
# Piped output is read by people with wide terminals and by scripts: do not wrap at 80.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 240)

DataDir = Annotated[
    Optional[Path], typer.Option("--data-dir", help="Data directory (default: $VIDX_DATA_DIR or ./vidx-data).")
]


def _settings(data_dir: Path | None) -> Settings:
    try:
        settings = Settings()
    except Exception as e:  # pydantic's ValidationError: a bad VIDX_ variable
        console.print(f"[red]error:[/red] bad VIDX_ setting: {str(e).splitlines()[0]}")
        raise typer.Exit(2) from e
    if data_dir is not None:
        settings = settings.model_copy(update={"data_dir": data_dir})
    return settings


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # faster-whisper logs every VAD pass at INFO; keep the bars readable.
    logging.getLogger("faster_whisper").setLevel(logging.DEBUG if verbose else logging.WARNING)
    if not verbose:
        # bm25s sets its own logger to DEBUG when imported, so a level set here would not last.
        for handler in logging.getLogger().handlers:
            handler.addFilter(lambda record: record.levelno >= logging.WARNING or not record.name.startswith("bm25s"))


def _progress(disable: bool = False) -> Progress:
    return Progress(
        TextColumn("{task.description}", justify="left"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        disable=disable,
    )


def _ingest_files(vapp: App, files: list[Path], *, as_json: bool, quiet: bool = False) -> dict[str, int]:
    """Ingest ``files`` with progress bars, then sync the search index; returns counts per status."""
    from indexer.pipeline import ingest_file

    import uuid

    vapp.store.sweep()
    options = vapp.ingest_options()
    batch = str(uuid.uuid4())
    counts: dict[str, int] = {}
    failed: list[tuple[str, str]] = []
    duplicates: list[tuple[str, str]] = []
    with _progress(disable=(as_json or quiet) and not sys.stderr.isatty()) as progress:
        overall = progress.add_task(f"[bold]{len(files)} files", total=len(files))
        for file in files:
            task = progress.add_task(f"  {escape(file.name[:40])}", total=1.0)

            def on_progress(stage: str, fraction: float, task: Any = task, name: str = file.name[:32]) -> None:
                progress.update(task, completed=fraction, description=f"  {escape(name)} [dim]{stage}[/dim]")

            result = ingest_file(file, vapp.catalog, vapp.store, options, on_progress, embedder=vapp.embedder, batch=batch)
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
        report = vapp.sync(progress=lambda stage, f: progress.update(sync_task, completed=f, description=f"  search index [dim]{stage}[/dim]"))
        progress.update(sync_task, completed=1.0)
    for media_id, error in report.errors.items():
        console.print(f"[yellow]index sync skipped media {media_id}:[/yellow] {escape(error)}")
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
        console.print(f"[red]error:[/red] cannot read {escape(str(list_file))}: {escape(e.strerror or str(e))}")
        raise typer.Exit(2) from e
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
) -> None:
    """Index media files into the catalog and the search index; exit 1 if any file failed."""
    from indexer.pipeline import expand_paths

    _setup_logging(verbose)
    vapp = App(_settings(data_dir))
    given = list(paths or []) + (_read_path_list(from_file) if from_file is not None else [])
    if not given:
        console.print("[red]error:[/red] give media files or folders, or --from-file LIST")
        raise typer.Exit(2)
    files = list(expand_paths(given))
    if not files:
        console.print("[red]error:[/red] no media files found in the given paths")
        raise typer.Exit(1)
    if queue:
        batch, job_ids = _enqueue_files(vapp, files, as_json=as_json)
        if wait:
            raise typer.Exit(_wait_batch(vapp, batch=batch, ids=None, timeout=None))
        return
    counts = _ingest_files(vapp, files, as_json=as_json)
    if counts.get("failed"):
        raise typer.Exit(1)


def _queue_app(vapp: App):  # type: ignore[no-untyped-def]
    from indexer.tasks import create_app

    try:
        return create_app(vapp.queue_config())
    except ValueError as e:
        console.print(f"[red]error:[/red] {escape(str(e))}")
        raise typer.Exit(2) from e


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
        console.print(f"[red]error:[/red] {escape(reason)}; the {len(job_ids)} jobs were marked failed (`vidx jobs retry ID` later)")
        raise typer.Exit(1) from e
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
    from indexer.sync import EMBEDDING_VERSION
    from indexer.tasks import stale_media

    version = str(getattr(vapp.embedder, "version", EMBEDDING_VERSION))
    started = time.monotonic()
    with _progress() as progress:
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
            while stale_media(vapp.catalog, version) and time.monotonic() < deadline:
                time.sleep(1.0)
    _print_summary(summary.total, summary.counts, summary.failed, summary.duplicates)
    stale = stale_media(vapp.catalog, version)
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

    settings = _settings(data_dir)
    if settings.threads == 0 and concurrency > 1:
        # Each child gets its share of the cores: N processes with all cores each would thrash.
        # One child keeps "0 = automatic", exactly the embedded default's options.
        settings = settings.model_copy(update={"threads": max(1, (os.cpu_count() or 1) // concurrency)})
    vapp = App(settings)
    try:
        config = vapp.queue_config()
    except ValueError as e:
        console.print(f"[red]error:[/red] {escape(str(e))}")
        raise typer.Exit(2) from e
    # Migrate once here, then drop the engine: children must not share the parent's connections.
    vapp.catalog.dispose()
    vapp.store.sweep()
    console.print(f"vidx worker: {concurrency} processes on {', '.join(q.strip() for q in queues.split(','))}, "
                  f"catalog {config.database_url.split('@')[-1]}, data {config.data_dir}")
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
    vapp = App(_settings(data_dir))
    if batch == "latest" or (wait and batch is None):
        batch = latest_batch(vapp.catalog)
        if batch is None:
            console.print("no batches yet: run `vidx ingest --queue PATH`")
            raise typer.Exit(0 if not wait else 1)
    if wait:
        if batch is not None and not list_jobs(vapp.catalog, batch=batch, limit=1):
            console.print(f"[red]error:[/red] no such batch: {escape(batch)} (see `vidx jobs`)")
            raise typer.Exit(1)
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
    from indexer.jobs import check_retry, retry_job
    from indexer.tasks import enqueue
    from store.catalog import Job

    vapp = App(_settings(data_dir))
    capp = _queue_app(vapp)
    timeout = vapp.settings.queue_heartbeat_timeout
    # Every id is checked before any job changes: one bad id must not leave the others queued but unpublished.
    with vapp.catalog.session() as session:
        errors = []
        for job_id in job_ids:
            try:
                check_retry(session.get(Job, job_id), job_id, timeout)
            except ValueError as e:
                errors.append(str(e))
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
        console.print(f"[red]error:[/red] broker unreachable: {escape(str(e).splitlines()[0] if str(e) else type(e).__name__)}")
        raise typer.Exit(1) from e
    console.print(f"requeued {len(job_ids)} jobs: {', '.join(map(str, job_ids))}")
    if failed:
        raise typer.Exit(1)


def _library_size(vapp: App) -> tuple[int, int]:
    """(indexed media, of which not yet in the search index)."""
    from sqlalchemy import func

    from store.catalog import Media, MediaStatus

    version = vapp.embedder.version  # changes with the active trained visual model
    with vapp.catalog.session() as session:
        indexed = session.scalar(select(func.count()).select_from(Media).where(Media.status == MediaStatus.INDEXED)) or 0
        stale = session.scalar(
            select(func.count()).select_from(Media).where(
                Media.status == MediaStatus.INDEXED,
                or_(Media.synced_version.is_(None), Media.synced_version != version, Media.synced_at < Media.indexed_at),
            )
        ) or 0
    return indexed, stale


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="What you are looking for, in words.")],
    limit: Annotated[int, typer.Option("--limit", "-k", min=1, max=1000)] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array of moments.")] = False,
    media: Annotated[Optional[list[str]], typer.Option("--media", help="Only this media (id, path or file name); repeatable.")] = None,
    path_prefix: Annotated[Optional[str], typer.Option("--path-prefix", help="Only media under this folder.")] = None,
    min_duration: Annotated[Optional[float], typer.Option("--min-duration", help="Only media at least this long (s).")] = None,
    max_duration: Annotated[Optional[float], typer.Option("--max-duration", help="Only media at most this long (s).")] = None,
    has_speech: Annotated[Optional[bool], typer.Option("--speech/--no-speech", help="Only clips with / without speech.")] = None,
    fusion: Annotated[Optional[str], typer.Option("--fusion", help="rrf or weighted.")] = None,
    sources: Annotated[Optional[str], typer.Option("--sources", help="Comma list of lexical,speech,visual.")] = None,
    per_media: Annotated[Optional[int], typer.Option("--per-media", min=1, help="Most moments shown per file.")] = None,
    data_dir: DataDir = None,
) -> None:
    """Find moments (file, start, end) for a text query."""
    from search.engine import SearchFilters

    _setup_logging(False)
    vapp = App(_settings(data_dir))
    indexed, stale = _library_size(vapp)
    if indexed == 0:
        console.print("the library is empty: run `vidx ingest PATH` first")
        if as_json:
            typer.echo("[]")
        return
    if stale:
        _try_sync(vapp)
    try:
        options = vapp.search_options(
            limit=limit, fusion=fusion, per_media=per_media,
            sources=tuple(x.strip() for x in sources.split(",")) if sources else None,
        )
        filters = SearchFilters(
            media=tuple(media or ()), path_prefix=path_prefix, min_duration=min_duration,
            max_duration=max_duration, has_speech=has_speech,
        )
        with vapp.vectors(read_only=True) as vectors:
            moments = vapp.engine(vectors).search(query, options, filters)
    except ValueError as e:
        console.print(f"[red]error:[/red] {escape(str(e))}")
        raise typer.Exit(2) from e
    if as_json:
        typer.echo(json.dumps([m.to_dict() for m in moments], indent=2))
        return
    if not moments:
        console.print("no matching moments")
        return
    table = Table(show_lines=True)
    for col, justify in (("#", "right"), ("score", "right"), ("file", "left"), ("time", "left"), ("why", "left"), ("what", "left")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for rank, m in enumerate(moments, start=1):
        snippet = escape(m.text[:200])
        for word in m.matched:
            snippet = re.sub(rf"(?i)\b({re.escape(word)})\b", r"[bold yellow]\1[/bold yellow]", snippet)
        why = " ".join(f"{k} {v:.2f}" for k, v in m.scores.items())
        table.add_row(
            str(rank), f"{m.score:.4f}", escape(m.media_path), f"{_fmt_time(m.start)}-{_fmt_time(m.end)}",
            why, snippet or f"[dim]{escape(', '.join(m.concepts)) or '(no speech)'}[/dim]",
        )
    out.print(table)


def _try_sync(vapp: App) -> None:
    try:
        vapp.sync(wait=0.0)  # a sync that is running (a worker's) will bring the index up to date
    except RuntimeError as e:  # another process holds the index: search what is there
        console.print(f"[yellow]note:[/yellow] search index not refreshed: {escape(str(e))}")


@app.command()
def reindex(data_dir: DataDir = None) -> None:
    """Rebuild the search index from the catalog and feature store (no decoding, no ASR)."""
    _setup_logging(False)
    vapp = App(_settings(data_dir))
    with _progress() as progress:
        task = progress.add_task("reindex", total=1.0)
        report = vapp.sync(full=True, progress=lambda stage, f: progress.update(task, completed=f, description=f"reindex [dim]{stage}[/dim]"))
        progress.update(task, completed=1.0)
    console.print(
        f"{report.upserted_media} media, {report.upserted_points} clips, "
        f"{report.lexical_documents} lexical documents in {report.seconds:.1f}s"
    )
    for media_id, error in report.errors.items():
        console.print(f"[yellow]skipped media {media_id}:[/yellow] {escape(error)}")
    if report.errors:
        raise typer.Exit(1)


@app.command("eval")
def evaluate_manifest(
    manifest: Annotated[Path, typer.Argument(help="Evaluation manifest (JSON, DESIGN.md section 8).")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
    data_dir: Annotated[Optional[Path], typer.Option("--data-dir", help="Use (and keep) this data directory instead of a fresh one.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=10)] = 10,
    ablations: Annotated[bool, typer.Option("--ablations", help="Also run lexical-only, dense-only and the other fusion.")] = False,
) -> None:
    """Ingest a manifest's media, run its queries, print R@1/5/10, MRR and start-time error."""
    import tempfile

    from search.evaluate import evaluate, load_manifest

    _setup_logging(False)
    try:
        spec = load_manifest(manifest)
    except ValueError as e:
        console.print(f"[red]error:[/red] {escape(str(e))}")
        raise typer.Exit(2) from e
    with tempfile.TemporaryDirectory(prefix="vidx-eval-") as tmp:
        settings = _settings(data_dir if data_dir is not None else Path(tmp))
        if data_dir is None:
            settings = settings.model_copy(update={"database_url": None})
        vapp = App(settings)
        counts = _ingest_files(vapp, sorted(set(spec.media.values())), as_json=False, quiet=True)
        if counts.get("failed"):
            console.print(f"[yellow]note:[/yellow] {counts['failed']} manifest files failed to ingest")
        configs = {"hybrid": {}}
        if ablations:
            other = "weighted" if vapp.settings.search_fusion == "rrf" else "rrf"
            configs.update({
                "lexical_only": {"sources": ("lexical",)},
                "dense_only": {"sources": ("speech", "visual")},
                f"hybrid_{other}": {"fusion": other},
            })
        report: dict[str, Any] = {"manifest": spec.name}
        with vapp.vectors(read_only=True) as vectors:
            engine = vapp.engine(vectors)
            for name, overrides in configs.items():
                options = vapp.search_options(limit=limit, **overrides)
                results = {q.id: [m.to_dict() for m in engine.search(q.text, options)] for q in spec.queries}
                scored = evaluate(spec, results)
                if name == "hybrid":
                    report["metrics"] = scored["metrics"]
                    report["queries"] = scored["queries"]
                    report["settings"] = {"fusion": options.fusion, "candidates": options.candidates, "per_media": options.per_media}
                else:
                    report.setdefault("ablations", {})[name] = scored["metrics"]
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    table = Table(title=f"{spec.name}: {len(spec.queries)} queries")
    for col in ("config", "kind", "n", "R@1", "R@5", "R@10", "MRR", "median start err (s)"):
        table.add_column(col)
    rows = [("hybrid", report["metrics"])] + list(report.get("ablations", {}).items())
    for name, per_kind in rows:
        for kind, m in per_kind.items():
            if m.get("queries"):
                err = m["median_start_error_s"]
                table.add_row(name, kind, str(m["queries"]), f"{m['R@1']:.2f}", f"{m['R@5']:.2f}", f"{m['R@10']:.2f}",
                              f"{m['MRR']:.3f}", "-" if err is None else f"{err:.2f}")
    out.print(table)


@app.command("ls")
def list_media(
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List the media in the catalog with their state."""
    from store.catalog import Media

    vapp = App(_settings(data_dir))
    with vapp.catalog.session() as session:
        rows = session.scalars(select(Media).order_by(Media.path)).all()
        items = [
            {
                "id": m.id, "path": m.path, "status": m.status, "duration": m.duration,
                "video": m.has_video, "audio": m.has_audio, "clips": m.clip_count,
                "segments": m.segment_count, "language": m.language, "error": m.error,
            }
            for m in rows
        ]
    if as_json:
        typer.echo(json.dumps(items, indent=2))
        return
    if not items:
        console.print("the catalog is empty: run `vidx ingest PATH`")
        return
    table = Table(show_lines=False)
    for col in ("id", "status", "duration", "streams", "clips", "segments", "path / error"):
        table.add_column(col, justify="right" if col in ("id", "duration", "clips", "segments") else "left")
    for m in items:
        streams = "+".join(s for s, on in (("video", m["video"]), ("audio", m["audio"])) if on) or "-"
        status = {"indexed": "[green]indexed[/green]", "failed": "[red]failed[/red]"}.get(m["status"], m["status"])
        where = escape(m["path"]) if not m["error"] else f"{escape(m['path'])}\n[red]{escape(m['error'])}[/red]"
        duration = f"{m['duration']:.1f}s" if m["duration"] else "-"
        table.add_row(str(m["id"]), status, duration, streams, str(m["clips"]), str(m["segments"]), where)
    out.print(table)


def _fmt_time(seconds: float) -> str:
    minutes, secs = divmod(seconds, 60)
    return f"{int(minutes):02d}:{secs:05.2f}"


@app.command()
def show(
    media: Annotated[str, typer.Argument(help="Media id, path, or a unique file name.")],
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Show one file: its streams, transcript with times, and clips with concept tags."""
    from store.catalog import Media

    vapp = App(_settings(data_dir))
    with vapp.catalog.session() as session:
        query = select(Media)
        if media.isdigit():
            query = query.where(Media.id == int(media))
        else:
            absolute = os.path.abspath(media)
            query = query.where(or_(Media.path == absolute, Media.path.endswith("/" + media, autoescape=True)))
        found = session.scalars(query).all()
        if not found:
            console.print(f"[red]error:[/red] no media matches {media!r} (see `vidx ls`)")
            raise typer.Exit(1)
        if len(found) > 1:
            console.print(f"[red]error:[/red] {media!r} matches {len(found)} files; give the id or full path")
            raise typer.Exit(1)
        m = found[0]
        item = {
            "id": m.id, "path": m.path, "status": m.status, "error": m.error, "duration": m.duration,
            "has_video": m.has_video, "has_audio": m.has_audio, "video_codec": m.video_codec,
            "audio_codec": m.audio_codec, "width": m.width, "height": m.height, "fps": m.fps,
            "language": m.language, "content_hash": m.content_hash,
            "segments": [{"start": s.start, "end": s.end, "text": s.text} for s in m.segments],
            "clips": [
                {"index": c.clip_index, "start": c.start, "end": c.end, "shot": c.shot, "concepts": c.concepts,
                 "thumbnail": str(vapp.store.root / c.thumbnail) if c.thumbnail else None}
                for c in m.clips
            ],
        }
    if as_json:
        typer.echo(json.dumps(item, indent=2))
        return
    out.print(f"[bold]{escape(item['path'])}[/bold]  (id {item['id']}, {item['status']})")
    if item["error"]:
        out.print(f"[red]{escape(item['error'])}[/red]")
    if item["duration"]:
        parts = [f"{item['duration']:.2f}s"]
        if item["has_video"]:
            parts.append(f"video {item['video_codec']} {item['width']}x{item['height']} @ {item['fps'] or 0:.2f} fps")
        if item["has_audio"]:
            parts.append(f"audio {item['audio_codec']}")
        if item["language"]:
            parts.append(f"language {item['language']}")
        out.print(", ".join(parts))
    if item["segments"]:
        out.print("\n[bold]transcript[/bold]")
        for s in item["segments"]:
            out.print(f"  [cyan]{_fmt_time(s['start'])}-{_fmt_time(s['end'])}[/cyan]  {escape(s['text'])}")
    elif item["has_audio"] and item["status"] == "indexed":
        out.print("\n[dim]no speech found[/dim]")
    if item["clips"]:
        out.print(f"\n[bold]clips[/bold] ({len(item['clips'])})")
        for c in item["clips"]:
            tags = ", ".join(f"{name} {p:.2f}" for name, p in (c["concepts"] or [])[:3]) or "-"
            out.print(f"  {c['index']:4d}  [cyan]{_fmt_time(c['start'])}-{_fmt_time(c['end'])}[/cyan]  shot {c['shot']:3d}  {escape(tags)}")


# -- training, model versions, describe ------------------------------------------------------------


@app.command()
def train(
    data_dir: DataDir = None,
    videobert_steps: Annotated[Optional[int], typer.Option("--videobert-steps", min=0, help="Default: $VIDX_TRAIN_VIDEOBERT_STEPS.")] = None,
    cbt_steps: Annotated[Optional[int], typer.Option("--cbt-steps", min=0, help="Default: $VIDX_TRAIN_CBT_STEPS.")] = None,
    activate: Annotated[Optional[str], typer.Option("--activate", help="auto (only models that beat their baseline on held-out data), always or never.")] = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="Start a new run instead of resuming an unfinished one.")] = False,
    device: Annotated[Optional[str], typer.Option("--device", help="auto, cpu or cuda. Default: $VIDX_TRAIN_DEVICE.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the run's metrics as JSON.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Build the visual vocabulary and train VideoBERT and CBT on the library; resumes an interrupted run."""
    import signal

    from indexer.train import TrainerBusyError, TrainingInterrupted, train_library
    from indexer.trained import resolve_device

    _setup_logging(verbose)
    vapp = App(_settings(data_dir))
    try:
        options = vapp.train_options(videobert_steps=videobert_steps, cbt_steps=cbt_steps, activate=activate, device=device)
        resolve_device(options.device)  # "cuda" on a machine where torch sees no GPU: one line now, not a traceback later
    except ValueError as e:
        console.print(f"[red]error:[/red] {escape(str(e))}")
        raise typer.Exit(2) from e
    stop: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        if stop:  # a second Ctrl-C: stop now, the last periodic checkpoint is on disk
            raise KeyboardInterrupt
        stop.append(signum)
        console.print("[yellow]stopping: saving a checkpoint (Ctrl-C again to quit at once)[/yellow]")

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with _progress(disable=as_json and not sys.stderr.isatty()) as progress:
            task = progress.add_task("train", total=1.0)

            def on_progress(stage: str, fraction: float, detail: str) -> None:
                progress.update(task, completed=fraction, description=f"train [dim]{stage}[/dim] {escape(detail)}")

            result = train_library(vapp.catalog, vapp.store, vapp.embedder, vapp.models_root, options, fresh=fresh,
                                   progress=on_progress, should_stop=lambda: bool(stop))
    except TrainingInterrupted as e:
        console.print(f"[yellow]{escape(str(e))}[/yellow]")
        raise typer.Exit(130) from e
    except TrainerBusyError as e:
        console.print(f"[red]error:[/red] {escape(str(e))}")
        raise typer.Exit(1) from e
    except ValueError as e:
        console.print(f"[red]error:[/red] {escape(str(e))}")
        raise typer.Exit(2) from e
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    h = result.metrics["heldout"]
    console.print(f"{'resumed and finished' if result.resumed else 'trained'} {result.run} in {result.seconds:.0f}s "
                  f"(job {result.job_id}); model versions {', '.join(f'{k} {v}' for k, v in result.versions.items())}")

    def fmt(v: Any) -> str:
        return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

    console.print(
        f"held-out: visual MLM acc {fmt(h['visual_mlm_acc'])} (most-frequent token {fmt(h['visual_mlm_baseline_acc'])}), "
        f"text MLM acc {fmt(h['text_mlm_acc'])}, alignment AUC {fmt(h['align_auc'])}, "
        f"R@1 CBT {fmt(h['cbt_v2t_r1'])}/{fmt(h['cbt_t2v_r1'])} vs concept tags {fmt(h['conse_v2t_r1'])}/{fmt(h['conse_t2v_r1'])} "
        f"(video->text/text->video), alignment text->video {fmt(h['align_t2v_r1'])}"
    )
    from store.vectors import IndexLockedError

    switch = {kind: result.versions[kind] for kind, on in result.recommended.items() if on}
    pending: list[str] = []
    if switch:
        try:
            report = vapp.switch_models(switch)
        except IndexLockedError:  # another process is writing the index; nothing was switched, the run is kept
            pending, switch = sorted(switch), {}
            console.print(f"[yellow]warning:[/yellow] trained and registered as {result.run}; the index is busy: "
                          f"run `vidx models activate {result.run}` later")
        else:
            console.print(f"activated {', '.join(switch)}; search index rebuilt ({report.upserted_points} clips)")
    if len(switch) + len(pending) < len(result.recommended):
        off = [k for k, on in result.recommended.items() if not on]
        console.print(f"left off: {', '.join(off)} (did not beat the baseline on held-out data, or --activate never); "
                      f"`vidx models activate {result.run}` switches them on anyway")
    if as_json:
        typer.echo(json.dumps({"run": result.run, "job_id": result.job_id, "versions": result.versions,
                               "activated": sorted(switch), "activation_pending": pending,
                               "metrics": result.metrics}, indent=2))


models_app = typer.Typer(help="Trained model versions: list them, activate one, deactivate.", invoke_without_command=True)
app.add_typer(models_app, name="models")


@models_app.callback()
def models_list(
    ctx: typer.Context,
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List trained model versions with their held-out metrics and which are active."""
    if ctx.invoked_subcommand is not None:
        return
    from indexer.trained import describe_versions, list_versions

    vapp = App(_settings(data_dir))
    rows = describe_versions(list_versions(vapp.catalog, vapp.models_root))
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        console.print("no trained models: run `vidx train`")
        return
    table = Table()
    for col in ("id", "kind", "run", "active", "held-out", "recommended"):
        table.add_column(col)
    for r in rows:
        h = r["metrics"].get("heldout", {})
        if r["kind"] == "cbt":
            what = f"R@1 {h.get('cbt_v2t_r1')} vs concept tags {h.get('conse_v2t_r1')}"
        else:
            what = (f"vis acc {h.get('visual_mlm_acc')} (base {h.get('visual_mlm_baseline_acc')}), "
                    f"text acc {h.get('text_mlm_acc')}, AUC {h.get('align_auc')}")
        table.add_row(str(r["id"]), r["kind"], r["name"], "[green]yes[/green]" if r["active"] else "no", what,
                      str(r["metrics"].get("recommended", {}).get(r["kind"], "-")))
    out.print(table)


def _switch(vapp: App, active: dict[str, int | None]) -> None:
    from store.vectors import IndexLockedError

    with _progress() as progress:
        task = progress.add_task("switch", total=1.0)
        try:
            report = vapp.switch_models(active, progress=lambda stage, f: progress.update(task, completed=f, description=f"switch [dim]{stage}[/dim]"))
        except IndexLockedError as e:  # another process is writing the index; nothing was switched
            console.print(f"[red]error:[/red] {escape(str(e))}")
            raise typer.Exit(1) from e
        progress.update(task, completed=1.0)
    console.print(f"search index rebuilt: {report.upserted_media} media, {report.upserted_points} clips")
    for media_id, error in report.errors.items():
        console.print(f"[yellow]skipped media {media_id}:[/yellow] {escape(error)}")


@models_app.command("activate")
def models_activate(
    version: Annotated[str, typer.Argument(help="A model version id, or a run name (activates its VideoBERT and CBT).")],
    data_dir: DataDir = None,
) -> None:
    """Switch search to a trained model version: the index is rebuilt completely, then switched at once."""
    from indexer.trained import resolve_targets

    vapp = App(_settings(data_dir))
    try:
        targets = resolve_targets(vapp.catalog, vapp.models_root, version)
        _switch(vapp, {r.kind: r.id for r in targets})
    except ValueError as e:
        console.print(f"[red]error:[/red] {escape(str(e))}")
        raise typer.Exit(2) from e
    console.print("active: " + ", ".join(f"{r.kind} {r.id} ({r.name})" for r in targets))


@models_app.command("deactivate")
def models_deactivate(
    kind: Annotated[Optional[str], typer.Argument(help="videobert or cbt (default: both).")] = None,
    data_dir: DataDir = None,
) -> None:
    """Back to the untrained engine (concept-tag visual vectors, no rerank) for one kind or both."""
    from indexer.trained import KINDS

    if kind is not None and kind not in KINDS:
        console.print(f"[red]error:[/red] expected one of {', '.join(KINDS)}, got {kind!r}")
        raise typer.Exit(2)
    vapp = App(_settings(data_dir))
    _switch(vapp, {k: None for k in ([kind] if kind else KINDS)})
    console.print(f"deactivated {kind or 'all trained models'}")


@app.command()
def describe(
    media: Annotated[str, typer.Argument(help="Media id, path, or a unique file name.")],
    at: Annotated[float, typer.Option("--at", help="Time in seconds.")],
    template: Annotated[Optional[str], typer.Option("--template", help="Text with [MASK]s for VideoBERT to fill.")] = None,
    top_k: Annotated[Optional[int], typer.Option("--top-k", min=1, max=50)] = None,
    next_clips: Annotated[Optional[int], typer.Option("--next", min=1, max=15, help="Next clips to predict.")] = None,
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Video-to-text for the clip at a time (VideoBERT's template filling) and its predicted next visual tokens."""
    from indexer.trained import ModelUnavailableError

    _setup_logging(False)
    vapp = App(_settings(data_dir))
    try:
        d = vapp.describe(media, at, template=template, top_k=top_k, next_clips=next_clips)
    except ModelUnavailableError as e:  # the checkpoint is missing or unreadable: not a usage error
        console.print(f"[red]error:[/red] {escape(str(e))}")
        raise typer.Exit(1) from e
    except ValueError as e:
        console.print(f"[red]error:[/red] {escape(str(e))}")
        raise typer.Exit(2) from e
    if as_json:
        typer.echo(json.dumps(d.to_dict(), indent=2))
        return
    out.print(f"[bold]{escape(d.media_path)}[/bold] clip {d.clip_index} [cyan]{_fmt_time(d.start)}-{_fmt_time(d.end)}[/cyan]"
              f"  concept tags: {escape(', '.join(d.concepts)) or '-'}")
    out.print(f"template: {escape(d.template)}")
    for i, mask in enumerate(d.words, start=1):
        out.print(f"  [MASK] {i}: " + ", ".join(f"{escape(w)} {p:.2f}" for w, p in mask))

    def token(t: int) -> str:
        names = d.token_concepts.get(t) or []
        return f"{t}" + (f" ({escape(', '.join(names[:2]))})" if names else "")

    out.print("visual tokens seen: " + ", ".join(token(t) for t in d.tokens))
    out.print("next clips predicted: " + ", ".join(token(t) for t in d.next_tokens))
    out.print("next clips actual:    " + (", ".join(token(t) for t in d.actual_next) or "- (end of file)"))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
