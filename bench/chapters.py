"""Chapter boundaries against bench/chapters.json: our method, two baselines, each signal ablated, title keyword hits.

    .venv/bin/python bench/chapters.py [--data-dir DIR] [--json] [--tune]
        [--videobert-checkpoint CKPT --vocab VOCAB]

It builds the evaluation videos (bench/chapter_media.py), ingests them with `vidx ingest` into a fresh
data directory (or reuses --data-dir when it already holds them), and computes chapters in-process
from the stored features (indexer.summaries.load_file, as the summary step reads them). A true
boundary is a part start other than 0; it is found when a chapter starts within 3 s of it, each
chapter start matching at most one. Rows:

  ours              ChapterOptions() (every signal; surprise only with a VideoBERT, below)
  equal (same n)    as many equal-length chapters as ours found, per file
  equal (true n)    as many equal-length chapters as the file has parts (a count nobody knows)
  cuts (all)        a chapter at every shot cut
  cuts (>= min)     shot cuts kept in time order at least min_seconds apart (our length rule)
  - topic ...       ours with one signal off
  only topic ...    one signal alone, at weight 1 (so its weight in the mix does not decide whether
                    it can reach the threshold at all)

Boundaries are also counted by what changes there: the picture (a join of two films, or of a film
and speech over a still), only the words (two recordings over one still frame; "silence cut" when
the silences at the join were cut, so no pause gives it away), and the topic inside talk.wav.

Surprise comes from --videobert-checkpoint/--vocab, or else the data directory's active VideoBERT;
without either, the surprise rows are left out. Title keyword hits: the share of parts whose
covering chapter (the one overlapping the part most) has one of the part's keywords in its title,
keywords or summary (indexer/chapter_text.py's describe_chapter on that row's chapters). --tune
grid-searches the thresholds on the manifest as a whole (then the surprise weight and scale, with
a VideoBERT) and reports leave-one-video-out F1 (each video scored with the setting chosen on the
other four), so the figure is not only the tuning set's.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import chapter_media  # noqa: E402
from indexer.chapters import SIGNALS, ChapterOptions, Timeline, find_chapters  # noqa: E402

TOLERANCE = 3.0


@dataclass
class Case:
    """One evaluation video: its parts and what ingest stored for it."""

    id: str
    path: Path
    parts: list[dict[str, Any]]
    data: Any  # indexer.summaries.FileData
    timeline: Timeline

    @property
    def truth(self) -> list[float]:
        return [float(p["start"]) for p in self.parts[1:]]

    def kind(self, k: int) -> str:
        """What changes at the boundary before part k: inside talk.wav, only the words, or the picture."""
        a, b = self.parts[k - 1], self.parts[k]
        if str(a["source"]).startswith("talk.wav") and str(b["source"]).startswith("talk.wav"):
            return "inside talk.wav"
        if a["picture"] == b["picture"] and str(a["picture"]).startswith("still:"):
            return "speech, silence cut" if a.get("silence_cut") and b.get("silence_cut") else "speech, same still"
        return "picture change"


def load_manifest(path: Path) -> dict[str, Any]:
    manifest = json.loads(path.read_text())
    for m in manifest["media"]:
        p = Path(m["path"])
        m["path"] = p if p.is_absolute() else (path.parent / p).resolve()
    return manifest


def ingest(paths: Sequence[Path], data_dir: Path) -> float:
    env = dict(os.environ, VIDX_DATA_DIR=str(data_dir))
    t0 = time.perf_counter()
    subprocess.run([str(REPO / ".venv" / "bin" / "vidx"), "ingest", *map(str, paths)], check=True, env=env,
                   cwd=REPO, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def timeline_of(data: Any, surprise: np.ndarray | None = None) -> Timeline:
    return Timeline(duration=data.duration, clip_times=data.clip_times, speech=data.speech,
                    has_speech=data.has_speech, features=data.features, cuts=list(data.cuts),
                    speech_spans=[(s, e) for s, e, text, _ in data.segments if text.strip()], surprise=surprise)


def load_cases(manifest: dict[str, Any], data_dir: Path) -> list[Case]:
    """Each manifest video's stored rows and arrays (indexer.summaries.load_file), as the summary step reads them."""
    from indexer.summaries import load_file
    from indexer.wiring import Layout
    from store import queries
    from store.catalog import Catalog
    from store.features import FeatureStore

    catalog = Catalog(f"sqlite:///{data_dir / 'catalog.sqlite'}")
    store = FeatureStore(Layout(data_dir).features)
    cases = []
    try:
        for m in manifest["media"]:
            media = queries.resolve_media(catalog, str(m["path"]), indexed_only=True)
            data = load_file(catalog, store, media.id)
            cases.append(Case(m["id"], Path(m["path"]), m["parts"], data, timeline_of(data)))
    finally:
        catalog.dispose()
    return cases


# -- scoring --------------------------------------------------------------------------------------


def match(truth: Sequence[float], predicted: Sequence[float], tol: float = TOLERANCE) -> list[tuple[int, int]]:
    """(truth index, prediction index) pairs within ``tol``, closest first, each used at most once."""
    pairs = sorted((abs(t - p), i, j) for i, t in enumerate(truth) for j, p in enumerate(predicted) if abs(t - p) <= tol)
    used_t: set[int] = set()
    used_p: set[int] = set()
    out = []
    for _, i, j in pairs:
        if i not in used_t and j not in used_p:
            used_t.add(i)
            used_p.add(j)
            out.append((i, j))
    return out


@dataclass
class Score:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def add(self, other: Score) -> None:
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


def score_case(case: Case, starts: Sequence[float]) -> tuple[Score, dict[str, list[int]]]:
    """The case's boundary score and, per boundary kind, [found, total]."""
    predicted = [s for s in starts if s > 0]
    pairs = match(case.truth, predicted)
    found = {i for i, _ in pairs}
    kinds: dict[str, list[int]] = {}
    for i in range(len(case.truth)):
        k = kinds.setdefault(case.kind(i + 1), [0, 0])
        k[0] += i in found
        k[1] += 1
    return Score(len(pairs), len(predicted) - len(pairs), len(case.truth) - len(pairs)), kinds


# -- methods --------------------------------------------------------------------------------------

Spans = list[tuple[float, float]]


def spans_from_starts(starts: Sequence[float], duration: float) -> Spans:
    edges = sorted({0.0, *(float(s) for s in starts if 0 < s < duration)})
    return list(zip(edges, [*edges[1:], duration]))


def ours(options: ChapterOptions) -> Callable[[Case], Spans]:
    def run(case: Case) -> Spans:
        return [(c.start, c.end) for c in find_chapters(case.timeline, options)]
    return run


def equal(count: Callable[[Case], int]) -> Callable[[Case], Spans]:
    def run(case: Case) -> Spans:
        n = max(1, count(case))
        d = case.timeline.duration
        return spans_from_starts([d * k / n for k in range(1, n)], d)
    return run


def cuts(min_apart: float | None) -> Callable[[Case], Spans]:
    def run(case: Case) -> Spans:
        kept: list[float] = []
        d = case.timeline.duration
        for c in sorted(case.timeline.cuts):
            if min_apart is None or (c - (kept[-1] if kept else 0.0) >= min_apart and d - c >= min_apart):
                kept.append(c)
        return spans_from_starts(kept, d)
    return run


# -- title keyword hits ---------------------------------------------------------------------------


class Titler:
    """Chapter text for any spans of a case, by indexer/chapter_text.py (None until that module exists)."""

    def __init__(self) -> None:
        try:
            from indexer.chapter_text import TextOptions, describe_chapter, split_sentences
        except ImportError:  # the hook: engineer B's module not there yet
            self.available = False
            return
        from models.text_encoder import load_text_encoder

        self.available = True
        self._describe, self._split, self._options = describe_chapter, split_sentences, TextOptions()
        self._encoder = load_text_encoder()
        self._cache: dict[str, tuple[list[Any], np.ndarray, np.ndarray]] = {}

    def texts(self, case: Case, spans: Spans) -> list[str]:
        if case.id not in self._cache:
            sentences = self._split(case.data.segments)
            vectors = (self._encoder.encode([s.text for s in sentences]) if sentences
                       else np.zeros((0, 384), np.float32))
            mids = np.asarray([(s.start + s.end) / 2 for s in sentences])
            self._cache[case.id] = (sentences, vectors, mids)
        sentences, vectors, mids = self._cache[case.id]
        clip_mid = case.data.clip_times.mean(1) if len(case.data.clip_times) else np.zeros(0)
        out = []
        for start, end in spans:
            inside = [i for i in range(len(sentences)) if start <= mids[i] < end]
            clips = [i for i in range(len(clip_mid)) if start <= clip_mid[i] < end]
            text = self._describe([sentences[i] for i in inside], vectors[inside],
                                  [case.data.concepts[c] for c in clips], self._encoder, self._options)
            out.append(" | ".join([text.title, " ".join(text.keywords), text.summary]))
        return out


def _mentions(text: str, keyword: str) -> bool:
    """Whole-word, case-blind, hyphens as spaces, a plural -s either way ("rodent" finds "rodents" and back)."""
    k = re.escape(keyword.lower().replace("-", " ").rstrip("s"))
    return re.search(rf"\b{k}s?\b", text.lower().replace("-", " ")) is not None


def title_hits(case: Case, spans: Spans, texts: list[str]) -> dict[str, list[int]]:
    """Per kind of part (speech over a still, or a film), [parts whose covering chapter (the one
    overlapping the part most) names one of the part's keywords, parts]."""
    out: dict[str, list[int]] = {}
    for part in case.parts:
        a, b = float(part["start"]), float(part["end"])
        overlap = [max(0.0, min(b, e) - max(a, s)) for s, e in spans]
        text = texts[int(np.argmax(overlap))]
        kind = out.setdefault("speech" if str(part["picture"]).startswith("still:") else "film", [0, 0])
        kind[0] += any(_mentions(text, k) for k in part["keywords"])
        kind[1] += 1
    return out


# -- the run --------------------------------------------------------------------------------------


def evaluate(cases: Sequence[Case], method: Callable[[Case], Spans], titler: Titler | None = None
             ) -> dict[str, Any]:
    total = Score()
    kinds: dict[str, list[int]] = {}
    per_case = {}
    hits: dict[str, list[int]] = {}
    seconds = []
    for case in cases:
        t0 = time.perf_counter()
        spans = method(case)
        seconds.append(time.perf_counter() - t0)
        s, k = score_case(case, [a for a, _ in spans])
        total.add(s)
        for name, (f, n) in k.items():
            kinds.setdefault(name, [0, 0])
            kinds[name][0] += f
            kinds[name][1] += n
        per_case[case.id] = {"f1": round(s.f1, 3), "chapters": [round(a, 1) for a, _ in spans]}
        if titler is not None and titler.available:
            for kind, (h, n) in title_hits(case, spans, titler.texts(case, spans)).items():
                hits.setdefault(kind, [0, 0])
                hits[kind][0] += h
                hits[kind][1] += n
    row: dict[str, Any] = {"precision": round(total.precision, 3), "recall": round(total.recall, 3),
                           "f1": round(total.f1, 3), "tp": total.tp, "fp": total.fp, "fn": total.fn,
                           "kinds": kinds, "cases": per_case, "max_ms": round(1000 * max(seconds), 2)}
    found, parts = sum(h for h, _ in hits.values()), sum(n for _, n in hits.values())
    row["title_hits"] = round(found / parts, 3) if parts else None
    row["title_hits_by_part"] = hits
    return row


def rows_for(cases: Sequence[Case], base: ChapterOptions, with_surprise: bool) -> list[tuple[str, Callable[[Case], Spans]]]:
    signals = [s for s in base.signals if s != "surprise" or with_surprise]
    full = replace(base, signals=tuple(signals))
    found: dict[str, int] = {}

    def count(case: Case) -> int:
        if case.id not in found:
            found[case.id] = len(find_chapters(case.timeline, full))
        return found[case.id]

    rows: list[tuple[str, Callable[[Case], Spans]]] = [("ours" + (" (with surprise)" if with_surprise else ""), ours(full))]
    if with_surprise:
        rows.append(("ours without surprise", ours(replace(full, signals=tuple(s for s in signals if s != "surprise")))))
    rows += [("equal (same n as ours)", equal(count)), ("equal (true n)", equal(lambda c: len(c.parts))),
             ("cuts (all)", cuts(None)), (f"cuts (>= {base.min_seconds:g} s apart)", cuts(base.min_seconds))]
    for s in signals:
        if s != "surprise":  # with surprise, "ours without surprise" is that ablation
            rows.append((f"- {s}", ours(replace(full, signals=tuple(x for x in signals if x != s)))))
    for s in signals:
        # Alone at full weight: at its combined weight (below the threshold for audio) it could never cut.
        alone = replace(full, signals=(s,), weights=tuple((k, 1.0 if k == s else w) for k, w in full.weights))
        rows.append((f"only {s}", ours(alone)))
    return rows


def with_surprise_scores(cases: Sequence[Case], checkpoint: Path, vocab: Path, device: str) -> float:
    from indexer.surprise import SurpriseModel

    model = SurpriseModel(checkpoint, vocab, device=device)
    t0 = time.perf_counter()
    for case in cases:
        if case.data.features is not None:
            case.timeline.surprise = model.surprise(case.data.features)
    return time.perf_counter() - t0


def active_videobert(data_dir: Path) -> tuple[Path, Path] | None:
    from indexer.training.registry import active_versions
    from indexer.wiring import Layout
    from store.catalog import Catalog

    catalog = Catalog(f"sqlite:///{data_dir / 'catalog.sqlite'}")
    try:
        record = active_versions(catalog, Layout(data_dir).models).get("videobert")
    finally:
        catalog.dispose()
    return (record.path, record.vocab_path) if record is not None else None


# -- tuning ---------------------------------------------------------------------------------------

# visual_scale is left out: every picture change of the manifest scores near 1 at any scale tried
# (0.15-0.45), so the data cannot choose it.
GRID: dict[str, list[Any]] = {
    "threshold": [0.5, 0.6, 0.7, 0.8, 0.9],
    "topic_scale": [0.6, 0.9, 1.2, 1.8],
    "topic_window": [12.0, 16.0, 20.0],
    "pause_seconds": [2.0, 3.0, 4.0, 6.0],
    "audio_weight": [0.6, 0.8, 1.0],
}
# With a VideoBERT: its weight and scale, the rest (threshold included) as tuned without it.
SURPRISE_GRID: dict[str, list[Any]] = {
    "surprise_weight": [0.3, 0.45, 0.6, 0.8, 1.0],
    "surprise_scale": [1.0, 2.0, 3.0, 5.0],
}


def _options(base: ChapterOptions, combo: dict[str, Any]) -> ChapterOptions:
    """``base`` with the grid's values; "<signal>_weight" keys set that signal's weight."""
    signal_weights = {k: v for k, v in combo.items() if k.endswith("_weight") and k[: -len("_weight")] in SIGNALS}
    weights = dict(base.weights)
    weights.update({k[: -len("_weight")]: v for k, v in signal_weights.items()})
    fields = {k: v for k, v in combo.items() if k not in signal_weights}
    return replace(base, **fields, weights=tuple(weights.items()))


def tune(cases: Sequence[Case], base: ChapterOptions, grid: dict[str, list[Any]] = GRID) -> dict[str, Any]:
    """Grid search on all cases together; and leave-one-video-out: chosen on the others, scored on the one left out.

    A setting is chosen by its F1 plus the mean F1 of its grid neighbours (one field one step away):
    with 15 boundaries many settings tie, and a lone peak among poor neighbours is luck.
    """
    keys = list(grid)
    combos = [dict(zip(keys, v)) for v in itertools.product(*(grid[k] for k in keys))]
    where = {tuple(c[k] for k in keys): a for a, c in enumerate(combos)}
    table = np.zeros((len(combos), len(cases), 3), int)  # tp, fp, fn
    for a, combo in enumerate(combos):
        opts = _options(base, combo)
        for b, case in enumerate(cases):
            s, _ = score_case(case, [c.start for c in find_chapters(case.timeline, opts)])
            table[a, b] = (s.tp, s.fp, s.fn)
    neighbours = []
    for combo in combos:
        near = []
        for k in keys:
            i = grid[k].index(combo[k])
            for j in (i - 1, i + 1):
                if 0 <= j < len(grid[k]):
                    near.append(where[tuple(grid[x][j] if x == k else combo[x] for x in keys)])
        neighbours.append(near)

    def choose(rows: np.ndarray) -> tuple[int, np.ndarray]:
        f1 = np.array([Score(*map(int, rows[a].sum(0))).f1 for a in range(len(combos))])
        merit = f1 + np.array([f1[n].mean() for n in neighbours])
        return int(np.argmax(merit)), f1

    best, f1 = choose(table)
    held = Score()
    for b in range(len(cases)):
        pick, _ = choose(np.delete(table, b, axis=1))
        held.add(Score(*map(int, table[pick, b])))
    return {"best": combos[best], "best_f1": round(float(f1[best]), 3), "top_f1": round(float(f1.max()), 3),
            "combos": len(combos), "tied_at_top": int((f1 >= f1.max() - 1e-9).sum()),
            "leave_one_video_out_f1": round(held.f1, 3)}


def speed(options: ChapterOptions, seconds: float = 600.0, runs: int = 5) -> float:
    """Median seconds of find_chapters on a synthetic file of ``seconds`` (1.5 s clips, speech, features, cuts)."""
    rng = np.random.default_rng(0)
    n = int(seconds / 1.5)
    t = np.arange(n + 1) * 1.5
    speech = rng.standard_normal((n, 384)).astype(np.float32)
    speech /= np.linalg.norm(speech, axis=1, keepdims=True)
    tl = Timeline(duration=float(t[-1]), clip_times=np.stack([t[:-1], t[1:]], 1), speech=speech.astype(np.float16),
                  has_speech=rng.random(n) < 0.8, features=rng.random((n, 1280)).astype(np.float32),
                  cuts=sorted(rng.choice(t[1:-1], n // 8, replace=False).tolist()),
                  speech_spans=[(float(a), float(a) + 1.2) for a in t[:-1:2]], surprise=rng.random(n))
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        find_chapters(tl, options)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def markdown(rows: list[tuple[str, dict[str, Any]]]) -> str:
    kinds = list(dict.fromkeys(k for _, r in rows for k in r["kinds"]))
    head = ["method", "P", "R", "F1", "title hits (speech, film parts)", *(f"R {k}" for k in kinds)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in rows:
        by = r.get("title_hits_by_part") or {}
        th = "-" if r["title_hits"] is None else (
            f"{r['title_hits']:.2f} (" + ", ".join(f"{by[k][0]}/{by[k][1]}" for k in ("speech", "film") if k in by) + ")")
        ks = [f"{r['kinds'][k][0]}/{r['kinds'][k][1]}" if k in r["kinds"] else "-" for k in kinds]
        lines.append(f"| {name} | {r['precision']:.2f} | {r['recall']:.2f} | {r['f1']:.2f} | {th} | " + " | ".join(ks) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", type=Path, default=chapter_media.MANIFEST)
    ap.add_argument("--media", type=Path, default=chapter_media.SHARED_MEDIA)
    ap.add_argument("--data-dir", type=Path, help="ingest here (reused when it already holds the videos)")
    ap.add_argument("--videobert-checkpoint", type=Path)
    ap.add_argument("--vocab", type=Path)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-titles", action="store_true", help="skip the title keyword hits (no text encoder)")
    ap.add_argument("--tune", action="store_true", help="grid-search thresholds; leave-one-video-out F1")
    ap.add_argument("--json", action="store_true", help="print the report as JSON instead of the table")
    ap.add_argument("--out", type=Path, help="also write the JSON report here")
    args = ap.parse_args()

    manifest = load_manifest(args.manifest)
    out_dir = Path(manifest["media"][0]["path"]).parent
    built = {v.id: parts for v, _, parts in chapter_media.build_all(args.media, out_dir)}
    for m in manifest["media"]:
        if [(p["start"], p["end"]) for p in built[m["id"]]] != [(p["start"], p["end"]) for p in m["parts"]]:
            raise SystemExit(f"{m['id']}: the built parts differ from {args.manifest}; rerun chapter_media --manifest")
    with tempfile.TemporaryDirectory(prefix="vidx-bench-chapters-") as tmp:
        data_dir = args.data_dir or Path(tmp)
        ingest_s = None
        if not (data_dir / "catalog.sqlite").exists():
            ingest_s = ingest([m["path"] for m in manifest["media"]], data_dir)
        cases = load_cases(manifest, data_dir)
        checkpoint = (args.videobert_checkpoint, args.vocab) if args.videobert_checkpoint else active_videobert(data_dir)
        surprise_s = None
        if checkpoint is not None:
            if checkpoint[1] is None:
                raise SystemExit("--videobert-checkpoint needs --vocab")
            surprise_s = with_surprise_scores(cases, checkpoint[0], checkpoint[1], args.device)
        titler = None if args.no_titles else Titler()
        base = ChapterOptions()
        results = [(name, evaluate(cases, method, titler)) for name, method in rows_for(cases, base, checkpoint is not None)]
        report: dict[str, Any] = {
            "manifest": str(args.manifest), "media": len(cases), "boundaries": sum(len(c.truth) for c in cases),
            "options": {"min_seconds": base.min_seconds, "max_seconds": base.max_seconds, "version": base.version()},
            "ingest_s": round(ingest_s, 1) if ingest_s else None,
            "videobert": [str(p) for p in checkpoint] if checkpoint else None,
            "surprise_s": round(surprise_s, 2) if surprise_s is not None else None,
            "titles": None if titler is None else titler.available,
            "find_chapters_600s_ms": round(1000 * speed(base), 2),
            "rows": {name: r for name, r in results},
        }
        if args.tune:
            report["tune"] = tune(cases, replace(base, signals=tuple(s for s in base.signals if s != "surprise")))
            if checkpoint is not None:
                report["tune_surprise"] = tune(cases, base, SURPRISE_GRID)
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    if args.json:
        print(json.dumps(report, indent=1))
        return
    print(f"{report['media']} videos, {report['boundaries']} true boundaries; min {base.min_seconds:g} s, "
          f"max {base.max_seconds:g} s; find_chapters on a 600 s file: {report['find_chapters_600s_ms']} ms")
    if checkpoint is None:
        print("no VideoBERT given or active: surprise left out")
    if titler is not None and not titler.available:
        print("indexer/chapter_text.py not importable: title hits left out")
    print(markdown(results))
    for name, r in results[:1]:
        for cid, c in r["cases"].items():
            print(f"  {cid}: F1 {c['f1']:.2f}, starts {c['chapters']}")
    for key in ("tune", "tune_surprise"):
        if key in report:
            print(f"{key}:", json.dumps(report[key]))


if __name__ == "__main__":
    main()
