"""The light commands start fast: `--help`, `ls`, `show`, `jobs`, a search with no trained model and the Celery parent import no model library."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HEAVY = ("torch", "transformers")

# Runs one command's code path in this process (as the console script does), then reports what it imported.
_RUN = """
import json, sys
sys.argv = ["vidx", *json.loads(sys.argv[1])]
import vidx.cli
try:
    vidx.cli.main()
except SystemExit as e:
    code = e.code
else:
    code = 0
print(json.dumps({"code": code, "heavy": sorted(m for m in %r if m in sys.modules)}), file=sys.stderr)
""" % (HEAVY,)


def _run(args: list[str], data_dir: Path) -> dict:
    env = dict(os.environ, VIDX_DATA_DIR=str(data_dir))
    proc = subprocess.run([sys.executable, "-c", _RUN, json.dumps(args)], capture_output=True, text=True, timeout=300, env=env)
    report = json.loads(proc.stderr.strip().splitlines()[-1])
    report["stdout"], report["stderr"] = proc.stdout, proc.stderr
    return report


def test_light_commands_import_no_model_library(data_dir: Path, cut_video: Path) -> None:
    ingest = subprocess.run([sys.executable, "-m", "vidx", "ingest", str(cut_video)], capture_output=True, text=True,
                            timeout=300, env=dict(os.environ, VIDX_DATA_DIR=str(data_dir)))
    assert ingest.returncode == 0, ingest.stderr
    for args in (["--help"], ["--version"], ["ls"], ["show", "cuts.mp4"], ["jobs"],
                 ["search", "quick brown fox", "--json"], ["search", "a red screen", "--sources", "visual"]):
        report = _run(args, data_dir)
        assert report["code"] in (0, None), (args, report["stderr"][-2000:])
        assert report["heavy"] == [], (args, report["heavy"])
    found = json.loads(_run(["search", "quick brown fox", "--json"], data_dir)["stdout"])
    assert Path(found[0]["media_path"]) == cut_video.resolve()


def test_worker_parent_imports_no_model_library(tmp_path: Path) -> None:
    """The Celery parent forks the children: models load in the children only, after the fork."""
    code = (
        "import sys; from pathlib import Path; from vidx.app import App; from vidx.settings import Settings; "
        "from indexer.tasks import create_app; "
        f"app = App(Settings(data_dir=Path({str(tmp_path)!r}), broker_url='redis://127.0.0.1:1/0')); "
        "create_app(app.queue_config()); app.catalog.dispose(); app.store.sweep(); "
        f"print(sorted(m for m in {HEAVY!r} + ('faster_whisper', 'ctranslate2') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
