"""Commands over the library: `vidx search`, `reindex`, `eval`, `ls`, `show`."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.markup import escape

from vidx.cli.common import DataDir, app, console, exit_on, fmt_time, open_app, out, progress_bars, settings, setup_logging
from vidx.cli.ingest import ingest_files

if TYPE_CHECKING:
    from vidx.app import App


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
    from store.queries import library_size

    setup_logging(False)
    vapp = open_app(data_dir)
    size = library_size(vapp.catalog, vapp.embedder.version)  # the version changes with the active trained CBT
    if size.indexed == 0:
        console.print("the library is empty: run `vidx ingest PATH` first")
        if as_json:
            typer.echo("[]")
        return
    if size.stale:
        _try_sync(vapp)
    with exit_on():
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
    if as_json:
        typer.echo(json.dumps([m.model_dump() for m in moments], indent=2))
        return
    if not moments:
        console.print("no matching moments")
        return
    from rich.table import Table

    table = Table(show_lines=True)
    for col, justify in (("#", "right"), ("score", "right"), ("file", "left"), ("time", "left"), ("why", "left"), ("what", "left")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for rank, m in enumerate(moments, start=1):
        snippet = escape(m.text[:200])
        for word in m.matched:
            snippet = re.sub(rf"(?i)\b({re.escape(word)})\b", r"[bold yellow]\1[/bold yellow]", snippet)
        why = " ".join(f"{k} {v:.2f}" for k, v in m.scores.items())
        table.add_row(
            str(rank), f"{m.score:.4f}", escape(m.media_path), f"{fmt_time(m.start)}-{fmt_time(m.end)}",
            why, (f"[cyan]{escape(m.chapter)}[/cyan]\n" if m.chapter else "")
            + (snippet or f"[dim]{escape(', '.join(m.concepts)) or '(no speech)'}[/dim]"),
        )
    out.print(table)


def _try_sync(vapp: App) -> None:
    try:
        vapp.sync(wait=0.0)  # a sync that is running (a worker's) will bring the index up to date
    except RuntimeError as e:  # another process holds the index: search what is there
        console.print(f"[yellow]note:[/yellow] search index not refreshed: {escape(str(e))}")


@app.command()
def reindex(
    data_dir: DataDir = None,
    stale: Annotated[bool, typer.Option("--stale", help="Only bring the index up to date (new, changed and deleted files); no rebuild.")] = False,
) -> None:
    """Rebuild the search index from the catalog and feature store (no decoding, no ASR)."""
    setup_logging(False)
    vapp = open_app(data_dir)
    with progress_bars() as progress:
        task = progress.add_task("reindex", total=1.0)
        report = vapp.sync(full=not stale, progress=lambda stage, f: progress.update(task, completed=f, description=f"reindex [dim]{stage}[/dim]"))
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

    setup_logging(False)
    with exit_on():
        spec = load_manifest(manifest)
    with tempfile.TemporaryDirectory(prefix="vidx-eval-") as tmp:
        from vidx.app import App

        loaded = settings(data_dir if data_dir is not None else Path(tmp))
        if data_dir is None:
            loaded = loaded.model_copy(update={"database_url": None})
        vapp = App(loaded)
        counts = ingest_files(vapp, sorted(set(spec.media.values())), as_json=False, quiet=True)
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
                results = {q.id: [m.model_dump() for m in engine.search(q.text, options)] for q in spec.queries}
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
    from rich.table import Table

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
    from store.queries import list_media as media_rows

    vapp = open_app(data_dir)
    items = [m.to_dict() for m in media_rows(vapp.catalog)]
    if as_json:
        typer.echo(json.dumps(items, indent=2))
        return
    if not items:
        console.print("the catalog is empty: run `vidx ingest PATH`")
        return
    from rich.table import Table

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


@app.command()
def show(
    media: Annotated[str, typer.Argument(help="Media id, path, or a unique file name.")],
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Show one file: its streams, transcript with times, and clips with concept tags."""
    from store.queries import media_detail

    vapp = open_app(data_dir)
    with exit_on((ValueError, 1)):
        item = media_detail(vapp.catalog, media, vapp.store.root).to_dict()
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
            out.print(f"  [cyan]{fmt_time(s['start'])}-{fmt_time(s['end'])}[/cyan]  {escape(s['text'])}")
    elif item["has_audio"] and item["status"] == "indexed":
        out.print("\n[dim]no speech found[/dim]")
    if item["clips"]:
        out.print(f"\n[bold]clips[/bold] ({len(item['clips'])})")
        for c in item["clips"]:
            tags = ", ".join(f"{name} {p:.2f}" for name, p in (c["concepts"] or [])[:3]) or "-"
            out.print(f"  {c['index']:4d}  [cyan]{fmt_time(c['start'])}-{fmt_time(c['end'])}[/cyan]  shot {c['shot']:3d}  {escape(tags)}")
