"""Commands over the trained models: `vidx train`, `vidx models` (list, activate, deactivate), `vidx describe`."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.markup import escape

from vidx.cli.common import DataDir, app, console, exit_on, fail, fmt_time, open_app, out, progress_bars, setup_logging

if TYPE_CHECKING:
    from vidx.app import App


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

    from indexer.training.loop import TrainerBusyError, TrainingInterrupted, train_library
    from indexer.training.registry import resolve_device

    setup_logging(verbose)
    vapp = open_app(data_dir)
    with exit_on():
        options = vapp.train_options(videobert_steps=videobert_steps, cbt_steps=cbt_steps, activate=activate, device=device)
        resolve_device(options.device)  # "cuda" on a machine where torch sees no GPU: one line now, not a traceback later
    stop: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        if stop:  # a second Ctrl-C: stop now, the last periodic checkpoint is on disk
            raise KeyboardInterrupt
        stop.append(signum)
        console.print("[yellow]stopping: saving a checkpoint (Ctrl-C again to quit at once)[/yellow]")

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with progress_bars(disable=as_json and not sys.stderr.isatty()) as progress:
            task = progress.add_task("train", total=1.0)

            def on_progress(stage: str, fraction: float, detail: str) -> None:
                progress.update(task, completed=fraction, description=f"train [dim]{stage}[/dim] {escape(detail)}")

            result = train_library(vapp.catalog, vapp.store, vapp.embedder, vapp.models_root, options, fresh=fresh,
                                   progress=on_progress, should_stop=lambda: bool(stop))
    except TrainingInterrupted as e:
        console.print(f"[yellow]{escape(str(e))}[/yellow]")
        raise typer.Exit(130) from e
    except (TrainerBusyError, ValueError) as e:
        fail(str(e), 1 if isinstance(e, TrainerBusyError) else 2)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    h = result.metrics["heldout"]
    console.print(f"{'resumed and finished' if result.resumed else 'trained'} {result.run} in {result.seconds:.0f}s "
                  f"(job {result.job_id}); model versions {', '.join(f'{k} {v}' for k, v in result.versions.items())}")

    console.print(heldout_line(h))
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
        from indexer.training.metrics import left_off

        why = result.metrics.get("left_off") or left_off(h, options.activate)
        off = [f"{k} ({why.get(k, 'not recommended')})" for k, on in result.recommended.items() if not on]
        console.print(f"left off: {escape(', '.join(off))}; `vidx models activate {result.run}` switches them on anyway")
    if as_json:
        typer.echo(json.dumps({"run": result.run, "job_id": result.job_id, "versions": result.versions,
                               "activated": sorted(switch), "activation_pending": pending,
                               "metrics": result.metrics}, indent=2))


def heldout_line(h: dict[str, Any]) -> str:
    """The held-out metrics in one line, each with the size of its sample; one measured on too few to mean
    anything is shown as "held-out too small to judge (N)" instead of its number."""
    from indexer.training.metrics import judge, too_small

    ok = judge(h)

    def fmt(key: str) -> str:
        v = h.get(key)
        return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

    def part(key: str, label: str, shown: str) -> str:
        return f"{label} {shown}" if ok[key]["judgeable"] else f"{label}: {too_small(ok[key]['n'])}"

    n = {k: ok[k]["n"] for k in ("visual_mlm_acc", "text_mlm_acc", "align_auc", "cbt_v2t_r1")}
    return "held-out: " + ", ".join([
        part("visual_mlm_acc", "visual MLM acc", f"{fmt('visual_mlm_acc')} (most-frequent token "
             f"{fmt('visual_mlm_baseline_acc')}; {n['visual_mlm_acc']} masked tokens)"),
        part("text_mlm_acc", "text MLM acc", f"{fmt('text_mlm_acc')} ({n['text_mlm_acc']} masked tokens)"),
        part("align_auc", "alignment AUC", f"{fmt('align_auc')} ({n['align_auc']} pairs)"),
        part("cbt_v2t_r1", "R@1", f"CBT {fmt('cbt_v2t_r1')}/{fmt('cbt_t2v_r1')} vs concept tags {fmt('conse_v2t_r1')}/"
             f"{fmt('conse_t2v_r1')} (video->text/text->video; {n['cbt_v2t_r1']} queries), alignment text->video "
             f"{fmt('align_t2v_r1')}"),
    ])


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
    from indexer.training.registry import describe_versions, list_versions

    vapp = open_app(data_dir)
    rows = describe_versions(list_versions(vapp.catalog, vapp.models_root))
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        console.print("no trained models: run `vidx train`")
        return
    from rich.table import Table

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

    with progress_bars() as progress:
        task = progress.add_task("switch", total=1.0)
        # IndexLockedError: another process is writing the index; nothing was switched.
        with exit_on((IndexLockedError, 1)):
            report = vapp.switch_models(active, progress=lambda stage, f: progress.update(task, completed=f, description=f"switch [dim]{stage}[/dim]"))
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
    from indexer.training.registry import resolve_targets

    vapp = open_app(data_dir)
    with exit_on():
        targets = resolve_targets(vapp.catalog, vapp.models_root, version)
        _switch(vapp, {r.kind: r.id for r in targets})
    console.print("active: " + ", ".join(f"{r.kind} {r.id} ({r.name})" for r in targets))


@models_app.command("deactivate")
def models_deactivate(
    kind: Annotated[Optional[str], typer.Argument(help="videobert or cbt (default: both).")] = None,
    data_dir: DataDir = None,
) -> None:
    """Back to the untrained engine (concept-tag visual vectors, no rerank) for one kind or both."""
    from indexer.training.registry import KINDS

    if kind is not None and kind not in KINDS:
        fail(f"expected one of {', '.join(KINDS)}, got {kind!r}", 2)
    vapp = open_app(data_dir)
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
    from indexer.training.registry import ModelUnavailableError

    setup_logging(False)
    vapp = open_app(data_dir)
    # A missing or unreadable checkpoint is not a usage error.
    with exit_on((ModelUnavailableError, 1), (ValueError, 2)):
        d = vapp.describe(media, at, template=template, top_k=top_k, next_clips=next_clips)
    if as_json:
        typer.echo(json.dumps(d.to_dict(), indent=2))
        return
    out.print(f"[bold]{escape(d.media_path)}[/bold] clip {d.clip_index} [cyan]{fmt_time(d.start)}-{fmt_time(d.end)}[/cyan]"
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
