"""Commands over summaries: `vidx chapters` (show, edit a title, recompute), `vidx summarize` (a file or the library), `vidx export`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.markup import escape

from vidx.cli.common import DataDir, app, console, exit_on, fmt_time, open_app, out, progress_bars, setup_logging

if TYPE_CHECKING:
    from vidx.app import App

EXPORT_FORMATS = ("webvtt-chapters", "webvtt", "srt", "text", "json")


def _media_id(vapp: App, ref: str) -> int:
    from store.queries import resolve_media

    with exit_on():
        return resolve_media(vapp.catalog, ref, indexed_only=True).id


def _ensure_summary(vapp: App, media_id: int) -> None:
    """Compute this file's chapters now if they are missing or out of date (no decoding: seconds)."""
    from store.queries import stale_summary_ids

    summarizer = vapp.summarizer()
    if stale_summary_ids(vapp.catalog, summarizer.version, [media_id]):
        console.print("[dim]computing chapters from the stored features...[/dim]")
        with exit_on():
            vapp.summarize([media_id])


def _recompute(vapp: App, refs: list[str]) -> None:
    ids = [_media_id(vapp, r) for r in refs] if refs else None
    with progress_bars() as progress:
        task = progress.add_task("chapters", total=1.0)
        report = vapp.summarize(ids, force=True, progress=lambda _stage, f: progress.update(task, completed=f))
        progress.update(task, completed=1.0)
    console.print(f"{report.files} files, {report.chapters} chapters in {report.seconds:.1f}s")
    for media_id, error in report.errors.items():
        console.print(f"[yellow]no chapters for media {media_id}:[/yellow] {escape(error)}")
    if report.errors:
        raise typer.Exit(1)


@app.command()
def chapters(
    media: Annotated[Optional[list[str]], typer.Argument(help="The file (id, path or file name); with --recompute, any number (none: all).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array of chapters.")] = False,
    recompute: Annotated[bool, typer.Option("--recompute", help="Recompute chapters and summaries from stored features (no decoding).")] = False,
    title: Annotated[Optional[tuple[int, str]], typer.Option("--title", metavar="N TITLE", help="Give chapter N your own title (kept through recomputation); an empty TITLE restores the computed one.")] = None,
    data_dir: DataDir = None,
) -> None:
    """A file's chapters: times, title, keywords and a summary of each."""
    setup_logging(False)
    vapp = open_app(data_dir)
    refs = list(media or [])
    if recompute:
        _recompute(vapp, refs)
        if not refs or len(refs) > 1 or not (as_json or title):
            return
    if len(refs) != 1:
        with exit_on():
            raise ValueError("expected one file (id, path or file name), or --recompute")
    media_id = _media_id(vapp, refs[0])
    _ensure_summary(vapp, media_id)
    if title is not None:
        from store.queries import set_chapter_title

        number, text = title
        with exit_on():
            set_chapter_title(vapp.catalog, media_id, number - 1, text)
    from search.summaries import chapters as chapter_list

    found = chapter_list(vapp.catalog, media_id, vapp.store.root)
    if as_json:
        typer.echo(json.dumps([c.model_dump() for c in found], indent=2))
        return
    if not found:
        console.print("no chapters")
        return
    for c in found:
        mark = " [dim](edited)[/dim]" if c.edited else ""
        out.print(f"[bold]{c.index:>2}. {fmt_time(c.start)}-{fmt_time(c.end)}  {escape(c.title)}[/bold]{mark}")
        if c.keywords:
            out.print(f"    [dim]keywords:[/dim] {escape(', '.join(c.keywords))}")
        if c.summary:
            out.print(f"    {escape(c.summary)}")


@app.command()
def summarize(
    media: Annotated[Optional[str], typer.Argument(help="The file (id, path or file name).")] = None,
    library: Annotated[bool, typer.Option("--library", help="An overview of the whole library: topics and totals.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    data_dir: DataDir = None,
) -> None:
    """A file's summary (sentences, chapters, highlights, concepts, speech) or, with --library, the library's topics."""
    setup_logging(False)
    vapp = open_app(data_dir)
    if library == (media is not None):
        with exit_on():
            raise ValueError("expected a file (id, path or file name) or --library")
    if library:
        _print_overview(vapp, as_json)
        return
    media_id = _media_id(vapp, media or "")
    _ensure_summary(vapp, media_id)
    from search.summaries import file_summary

    found = file_summary(vapp.catalog, media_id, vapp.store.root)
    if found is None:
        with exit_on():
            raise ValueError(f"no summary for {media}: run `vidx chapters --recompute`")
    if as_json:
        typer.echo(found.model_dump_json(indent=2))
        return
    out.print(f"[bold]{escape(found.path)}[/bold]  {fmt_time(found.duration)}, speech {found.speech_share:.0%}")
    if found.summary:
        out.print(escape(found.summary))
    if found.concepts:
        out.print("[dim]on screen:[/dim] " + escape(", ".join(f"{name} {share:.0%}" for name, share in found.concepts)))
    if found.keywords:
        out.print("[dim]keywords:[/dim] " + escape(", ".join(found.keywords)))
    out.print("[bold]chapters[/bold]")
    for c in found.chapters:
        out.print(f"  {fmt_time(c.start)}  {escape(c.title)}")
    if found.highlights:
        out.print("[bold]highlights[/bold]")
        for h in found.highlights:
            out.print(f"  {fmt_time(h.start)}-{fmt_time(h.end)}  [dim]{h.kind}[/dim]  {escape(h.text)}")


def _print_overview(vapp: App, as_json: bool) -> None:
    from search.overview import library_overview

    with exit_on():
        overview = library_overview(vapp.catalog)
    if as_json:
        typer.echo(overview.model_dump_json(indent=2))
        return
    languages = ", ".join(f"{k} {v}" for k, v in overview.languages.items()) or "none"
    out.print(f"[bold]{overview.files} files[/bold], {overview.hours:.2f} h, {overview.speech_hours:.2f} h of speech; "
              f"languages: {escape(languages)}")
    if overview.unsummarized:
        out.print(f"[yellow]{overview.unsummarized} files have no chapters yet:[/yellow] run `vidx chapters --recompute`")
    for i, topic in enumerate(overview.topics, start=1):
        out.print(f"[bold]{i}. {escape(topic.name)}[/bold]  [dim]{len(topic.media)} files, {topic.chapters} chapters[/dim]")
        for m in topic.moments[:3]:
            out.print(f"    {escape(Path(m.media_path).name)} {fmt_time(m.start)}  {escape(m.title)}")


@app.command()
def export(
    media: Annotated[str, typer.Argument(help="The file (id, path or file name).")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="webvtt-chapters, webvtt, srt, text or json.")] = "webvtt-chapters",
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write here instead of stdout.")] = None,
    data_dir: DataDir = None,
) -> None:
    """Chapters as a WebVTT chapters track, captions as WebVTT or SRT, the "00:00 Title" list, or everything as JSON."""
    setup_logging(False)
    if fmt not in EXPORT_FORMATS:
        with exit_on():
            raise ValueError(f"expected --format one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    vapp = open_app(data_dir)
    media_id = _media_id(vapp, media)
    _ensure_summary(vapp, media_id)
    from search.summaries import render_export

    with exit_on():
        text = render_export(vapp.catalog, media_id, fmt, vapp.store.root)
    if output is None:
        typer.echo(text, nl=not text.endswith("\n"))
        return
    from store.files import atomic_write

    with exit_on((OSError, 1)):
        with atomic_write(output) as f:
            f.write(text.encode("utf-8"))
    console.print(f"wrote {escape(str(output))}")
