"""Evaluation manifests (DESIGN.md section 8) and their metrics: R@1, R@5, R@10, MRR, start-time error."""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KINDS = ("spoken", "visual", "mixed")
TOLERANCE = 1.0
# Results past rank 10 count as misses, for MRR too, so a longer result list cannot buy a score.
CUTOFF = 10


@dataclass(frozen=True)
class Relevant:
    media: str
    start: float | None = None
    end: float | None = None


@dataclass(frozen=True)
class Query:
    id: str
    text: str
    kind: str
    relevant: tuple[Relevant, ...]


@dataclass(frozen=True)
class Manifest:
    name: str
    root: Path
    media: dict[str, Path]  # manifest media id -> absolute path
    queries: tuple[Query, ...]


def load_manifest(path: Path) -> Manifest:
    """Parse and check a manifest; ValueError naming what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no such manifest: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"manifest {path} is not valid JSON: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("media"), list) or not isinstance(data.get("queries"), list):
        raise ValueError(f"manifest {path}: expected an object with 'media' and 'queries' lists")
    root = path.resolve().parent
    media: dict[str, Path] = {}
    for item in data["media"]:
        if "id" not in item or "path" not in item:
            raise ValueError(f"manifest {path}: every media entry needs 'id' and 'path', got {item!r}")
        media[str(item["id"])] = (root / item["path"]).resolve()
    queries = []
    for q in data["queries"]:
        kind = q.get("kind", "mixed")
        if kind not in KINDS:
            raise ValueError(f"manifest {path}: query {q.get('id')!r} has kind {kind!r}, expected one of {KINDS}")
        rel = []
        for r in q.get("relevant", []):
            if r.get("media") not in media:
                raise ValueError(f"manifest {path}: query {q.get('id')!r} names unknown media {r.get('media')!r}")
            rel.append(Relevant(str(r["media"]), r.get("start"), r.get("end")))
        queries.append(Query(str(q["id"]), str(q["text"]), kind, tuple(rel)))
    return Manifest(str(data.get("name", path.stem)), root, media, tuple(queries))


def is_hit(result: Mapping[str, Any], relevant: Relevant, media_path: Path) -> bool:
    if Path(result["media_path"]).resolve() != media_path:
        return False
    if relevant.start is None or relevant.end is None:
        return True
    return float(result["start"]) <= relevant.end + TOLERANCE and float(result["end"]) >= relevant.start - TOLERANCE


def first_hit(results: Sequence[Mapping[str, Any]], query: Query, manifest: Manifest) -> tuple[int | None, float | None]:
    """(1-based rank of the first relevant result or None, its start-time error if the range is known)."""
    for rank, result in enumerate(results[:CUTOFF], start=1):
        for rel in query.relevant:
            if is_hit(result, rel, manifest.media[rel.media]):
                error = abs(float(result["start"]) - rel.start) if rel.start is not None and rel.end is not None else None
                return rank, error
    return None, None


def metrics(ranks: Sequence[int | None], errors: Sequence[float]) -> dict[str, Any]:
    n = len(ranks)
    if n == 0:
        return {"queries": 0}
    return {
        "queries": n,
        "R@1": round(sum(1 for r in ranks if r is not None and r <= 1) / n, 4),
        "R@5": round(sum(1 for r in ranks if r is not None and r <= 5) / n, 4),
        "R@10": round(sum(1 for r in ranks if r is not None and r <= 10) / n, 4),
        "MRR": round(sum(1.0 / r for r in ranks if r is not None) / n, 4),
        "median_start_error_s": round(statistics.median(errors), 3) if errors else None,
    }


def evaluate(manifest: Manifest, results: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
    """Metrics per kind and overall, plus each query's rank, from results keyed by query id."""
    per_query = {}
    by_kind: dict[str, tuple[list[int | None], list[float]]] = {}
    for q in manifest.queries:
        rank, error = first_hit(results.get(q.id, []), q, manifest)
        per_query[q.id] = {"kind": q.kind, "rank": rank, "start_error_s": None if error is None else round(error, 3)}
        for key in (q.kind, "overall"):
            ranks, errors = by_kind.setdefault(key, ([], []))
            ranks.append(rank)
            if error is not None:
                errors.append(error)
    summary = {kind: metrics(*by_kind[kind]) for kind in (*KINDS, "overall") if kind in by_kind}
    return {"manifest": manifest.name, "metrics": summary, "queries": per_query}
