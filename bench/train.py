"""Training benchmark: `vidx train` time and peak RSS, held-out metrics, and dev.json with and without the trained models.

One run, one data directory (ingested once, then reused):

    .venv/bin/python bench/train.py --data-dir /tmp/devlib ../shared/media/dev.json

  train    `vidx train --fresh --activate never --json` in a child process (wall, peak RSS, held-out metrics:
           visual masked-token accuracy vs the most-frequent-token baseline, text masked-token accuracy,
           alignment AUC, CBT's in-batch R@1 of the aligned sentence, the concept-tag baseline on the same candidates)
  eval     the manifest's queries under four configurations on the same library, switched with the same
           code as `vidx models activate` (the index is rebuilt whole for each):
             baseline        concept-tag visual vectors, no rerank (the untrained engine)
             rerank          concept-tag visual vectors + VideoBERT rerank
             cbt             CBT visual vectors, no rerank
             cbt+rerank      CBT visual vectors + VideoBERT rerank
           and leaves the library with the models the activation rule recommends.

The manifest's media are ingested into --data-dir first if it does not hold them yet.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# Imports resolve from the repository root, not from bench/ (where a script could shadow a module).
sys.path[0] = str(REPO)
CONFIGS = {"baseline": (False, False), "rerank": (False, True), "cbt": (True, False), "cbt+rerank": (True, True)}


def _train_child(data_dir: Path, extra: list[str]) -> tuple[float, float, dict[str, Any]]:
    """`vidx train` in a child: (wall seconds, peak RSS MiB, its JSON)."""
    env = dict(os.environ, VIDX_DATA_DIR=str(data_dir))
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen([str(REPO / ".venv/bin/vidx"), "train", "--fresh", "--activate", "never", "--json", *extra],
                                stdout=out, stderr=subprocess.DEVNULL, env=env, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        out.seek(0)
        text = out.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"vidx train failed ({os.waitstatus_to_exitcode(status)}): {text[-2000:]}")
    return wall, usage.ru_maxrss / 1024, json.loads(text)


def _evaluate(vapp: Any, spec: Any, rerank: bool, limit: int) -> tuple[dict[str, Any], float]:
    from search.evaluate import evaluate

    with vapp.vectors(read_only=True) as vectors:
        engine = vapp.engine(vectors)
        if not rerank:
            engine.reranker = None
        options = vapp.search_options(limit=limit)
        engine.search(spec.queries[0].text, options)  # models load on first use: not part of a query's time
        t0 = time.perf_counter()
        results = {q.id: [m.model_dump() for m in engine.search(q.text, options)] for q in spec.queries}
        per_query = (time.perf_counter() - t0) / max(len(spec.queries), 1)
    return evaluate(spec, results), per_query


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=10)
    parser.add_argument("--train-arg", action="append", default=[], help="Extra `vidx train` option (repeatable).")
    parser.add_argument("--out", type=Path, default=None, help="Also write the JSON report here.")
    args = parser.parse_args()

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from search.evaluate import load_manifest
    from vidx.app import App
    from vidx.cli.ingest import ingest_files
    from vidx.settings import Settings

    spec = load_manifest(args.manifest)
    vapp = App(Settings(data_dir=args.data_dir))
    counts = ingest_files(vapp, sorted(set(spec.media.values())), as_json=False, quiet=True)
    if counts.get("failed"):
        raise SystemExit(f"{counts['failed']} manifest files failed to ingest")
    vapp.switch_models({"videobert": None, "cbt": None})  # measure training from the untrained engine

    wall, rss, trained = _train_child(args.data_dir, args.train_arg)
    metrics = trained["metrics"]
    versions = trained["versions"]
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "train": {"wall_s": round(wall, 1), "peak_rss_mib": round(rss, 1), "run": trained["run"],
                  "stage_seconds": metrics["seconds"], "steps": metrics["steps"], "device": metrics["device"],
                  "data": metrics["data"], "vocab": metrics["vocab"]},
        "heldout": metrics["heldout"],
        "recommended": metrics["recommended"],
        "eval": {},
    }
    for name, (cbt, rerank) in CONFIGS.items():
        vapp = App(Settings(data_dir=args.data_dir))
        vapp.switch_models({"cbt": versions["cbt"] if cbt else None, "videobert": versions["videobert"] if rerank else None})
        scored, latency = _evaluate(App(Settings(data_dir=args.data_dir)), spec, rerank, args.limit)
        report["eval"][name] = {"metrics": scored["metrics"], "ranks": {q: v["rank"] for q, v in scored["queries"].items()},
                                "mean_query_s": round(latency, 4)}
        print(f"{name}: " + json.dumps({k: {m: v.get(m) for m in ("R@1", "R@5", "MRR")} for k, v in scored["metrics"].items()}),
              file=sys.stderr)
    rec = metrics["recommended"]
    App(Settings(data_dir=args.data_dir)).switch_models({k: versions[k] if rec[k] else None for k in ("videobert", "cbt")})
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
