"""The `vidx` command line: ingest and the queue (ingest, worker, jobs), the library (search, reindex, eval, ls, show), summaries (chapters, summarize, export), models (train, models, describe), and `serve`.

Commands import what they need when they run, so `vidx --help`, `ls`, `show` and `jobs` load no model library.
"""

from __future__ import annotations

import os

# Decoder, backbone and ASR share the cores; OpenMP threads that spin while idle starve the
# others (measured: 2.3x slower encoding beside ffmpeg). Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from vidx.cli import ingest, library, models, serve, summaries  # noqa: E402,F401 - each registers its commands on `app`
from vidx.cli.common import app  # noqa: E402

__all__ = ["app", "main"]


def main() -> None:
    # One program name however it is started (`vidx`, `python -m vidx`): help, errors and completion agree.
    app(prog_name="vidx")
