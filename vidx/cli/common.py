"""What every command shares: the typer app, the consoles, settings, logging, progress bars and the error-to-exit rule."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn, Optional

import typer
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from rich.progress import Progress

    from vidx.app import App
    from vidx.settings import Settings


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"vidx {version('vidx')}")
        except PackageNotFoundError:  # run from a checkout that was never installed
            typer.echo("vidx (not installed)")
        raise typer.Exit()


app = typer.Typer(no_args_is_help=True, help="Find the moment in a library of videos and audio.")


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Find the moment in a library of videos and audio."""


console = Console(stderr=True, soft_wrap=True)
# Piped output is read by people with wide terminals and by scripts: do not wrap at 80.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 240)

DataDir = Annotated[
    Optional[Path], typer.Option("--data-dir", help="Data directory (default: $VIDX_DATA_DIR or ./vidx-data).")
]


def fail(message: str, code: int = 1) -> NoReturn:
    """The one way a command gives up: one red line on stderr, then exit ``code``."""
    console.print(f"[red]error:[/red] {escape(message)}")
    raise typer.Exit(code)


@contextlib.contextmanager
def exit_on(*rules: tuple[type[BaseException], int]) -> Iterator[None]:
    """Turn the listed exceptions into a one-line error and an exit code (first matching rule wins).

    ``exit_on()`` with no rules means ``(ValueError, 2)``: a usage error, as everywhere in vidx.
    """
    try:
        yield
    except typer.Exit:
        raise
    except Exception as e:
        for kind, code in rules or ((ValueError, 2),):
            if isinstance(e, kind):
                lines = str(e).strip().splitlines()
                fail(lines[0] if lines else type(e).__name__, code)
        raise


def settings(data_dir: Path | None) -> Settings:
    from pydantic import ValidationError

    from vidx.settings import Settings

    try:
        loaded = Settings()
    except ValidationError as e:  # a bad VIDX_ variable
        error = e.errors()[0]
        name = f"VIDX_{str(error['loc'][0]).upper()}" if error.get("loc") else "VIDX_ setting"
        fail(f"bad setting {name}: {error.get('msg', e)}", 2)
    if data_dir is not None:
        loaded = loaded.model_copy(update={"data_dir": data_dir})
    return loaded


def open_app(data_dir: Path | None) -> App:
    """The wiring of this invocation's settings (nothing is opened until a command uses it)."""
    from vidx.app import App

    return App(settings(data_dir))


def setup_logging(verbose: bool) -> None:
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


def progress_bars(disable: bool = False) -> Progress:
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

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


def fmt_time(seconds: float) -> str:
    minutes, secs = divmod(seconds, 60)
    return f"{int(minutes):02d}:{secs:05.2f}"
