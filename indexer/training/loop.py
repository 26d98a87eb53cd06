"""The training driver: the library's data, visual vocabulary, VideoBERT, CBT, held-out evaluation and registration, resumable."""

from __future__ import annotations

import logging
import os
import resource
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from indexer.jobs import JobReporter
from indexer.training import state as run_state
from indexer.training.batches import Corpus, cbt_batch, videobert_batch
from indexer.training.data import TRAIN, DataOptions, prepare
from indexer.training.metrics import concept_baseline, evaluate, left_off, recommend
from indexer.training.registry import KINDS, assign_visual_tokens, check_device, register, resolve_device
from store.catalog import Catalog, JobState, utcnow
from store.features import FeatureStore
from store.files import atomic_write

logger = logging.getLogger(__name__)

Progress = Callable[[str, float, str], None]  # (stage, overall fraction 0..1, detail)
# Share of the whole run each stage takes (measured on the dev library), for one overall progress bar.
_STAGES = {"data": (0.0, 0.03), "vocab": (0.03, 0.05), "videobert": (0.05, 0.62), "cbt": (0.62, 0.85),
           "evaluate": (0.85, 0.98), "register": (0.98, 1.0)}


@dataclass(frozen=True)
class TrainOptions:
    """What `vidx train` does; built from Settings at the entry points."""

    data: DataOptions = field(default_factory=DataOptions)
    vocab_max_depth: int = 4
    vocab_min_per_leaf: int = 6
    videobert_steps: int = 180
    videobert_layers: int = 6
    videobert_lr: float = 1e-4
    cbt_steps: int = 300
    cbt_lr: float = 3e-4
    batch_size: int = 32
    warmup_fraction: float = 0.1
    checkpoint_seconds: float = 60.0
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = 0
    activate: Literal["auto", "always", "never"] = "auto"

    def __post_init__(self) -> None:
        if self.videobert_steps < 0 or self.cbt_steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.videobert_steps}, {self.cbt_steps}")
        if self.batch_size < 4:
            raise ValueError(f"batch_size must be >= 4, got {self.batch_size}")
        if self.activate not in ("auto", "always", "never"):
            raise ValueError(f"activate must be auto, always or never, got {self.activate!r}")
        if not 1 <= self.videobert_layers <= 6:
            raise ValueError(f"videobert_layers must be in 1..6 (MiniLM has 6), got {self.videobert_layers}")
        check_device(self.device)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainOptions:
        d = dict(d)
        d["data"] = DataOptions(**d.get("data", {}))
        return cls(**d)


@dataclass
class TrainResult:
    run: str
    run_dir: Path
    job_id: int
    versions: dict[str, int]  # kind -> model_versions id
    metrics: dict[str, Any]
    recommended: dict[str, bool]  # kind -> whether the activation rule (or --activate) says to switch it on
    resumed: bool
    seconds: float


class TrainingInterrupted(RuntimeError):
    """Stopped on request (Ctrl-C, SIGTERM); the last checkpoint is on disk and the next run resumes it."""


class TrainerBusyError(RuntimeError):
    """Another process is training in this data directory."""


# -- the entry point ------------------------------------------------------------------------------


def train_library(catalog: Catalog, store: FeatureStore, embedder: Any, models_root: Path,
                  options: TrainOptions = TrainOptions(), *, fresh: bool = False,
                  progress: Progress | None = None, should_stop: Callable[[], bool] | None = None) -> TrainResult:
    """Train (or resume) one run under ``models_root`` and register its models; activates nothing itself.

    ``embedder`` is the index's :class:`indexer.embed.Embedder` (its text encoder tokenises and embeds
    sentences; its label vectors give the concept-tag baseline). Raises :class:`TrainingInterrupted`
    when ``should_stop`` turns true (a checkpoint is saved first), ``ValueError`` for a library
    with too little video and :class:`TrainerBusyError` when another process trains here.
    """
    import fcntl

    models_root = Path(models_root)
    models_root.mkdir(parents=True, exist_ok=True)
    # One trainer per data directory: two would both resume the same unfinished run.
    fd = os.open(models_root / ".train.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TrainerBusyError(f"another `vidx train` is running on {models_root.parent}") from None
        return _train_run(catalog, store, embedder, models_root, options, fresh, progress, should_stop)
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _train_run(catalog: Catalog, store: FeatureStore, embedder: Any, models_root: Path, options: TrainOptions,
               fresh: bool, progress: Progress | None, should_stop: Callable[[], bool] | None) -> TrainResult:
    t0 = time.perf_counter()
    run_dir, state, options, resumed = _open_run(models_root, options, fresh)
    job_id = run_state.start_job(catalog, state.get("job_id"), run_dir)
    state["job_id"] = job_id
    run_state.write_state(run_dir, state)
    run = _Run(run_dir, state, options, JobReporter(catalog, job_id), progress, should_stop)
    try:
        corpus = _prepare(run, catalog, store, embedder.encoder)
        vocab = _build_vocab(run, corpus)
        _train_videobert(run, corpus, vocab.size)
        _train_cbt(run, corpus)
        metrics = _evaluate(run, corpus, vocab, concept_baseline(corpus, store, embedder.labels,
                                                                 embedder.options.concept_top_k))
        versions, rec = _register(run, catalog, store, models_root, metrics, vocab, corpus.data.summary())
        run_state.end_job(catalog, job_id, JobState.DONE)
        run.report("register", 1.0, "done")
    except TrainingInterrupted as e:
        run_state.end_job(catalog, job_id, JobState.FAILED, str(e))
        raise
    except BaseException as e:
        # A crash keeps the run resumable; the job row says what happened.
        run_state.end_job(catalog, job_id, JobState.FAILED, f"{type(e).__name__}: {e}"[:2000])
        raise
    return TrainResult(run_dir.name, run_dir, job_id, versions, metrics, rec, resumed,
                       round(time.perf_counter() - t0, 1))


def _open_run(models_root: Path, options: TrainOptions, fresh: bool) -> tuple[Path, dict[str, Any], TrainOptions, bool]:
    """(run directory, its state, the options it runs with, resumed): the newest unfinished run unless ``fresh``."""
    run_dir = None if fresh else run_state.find_unfinished(models_root)
    if run_dir is None:
        run_dir = run_state.new_run_dir(models_root)
        state = {"name": run_dir.name, "stage": "data", "done": False, "options": options.to_dict(),
                 "created": utcnow().isoformat()}
        run_state.write_state(run_dir, state)
        return run_dir, state, options, False
    state = run_state.read_state(run_dir)
    # A resumed run keeps the options it started with; only where and how loudly it runs may change.
    keep = replace(TrainOptions.from_dict(state["options"]), activate=options.activate, device=options.device,
                   threads=options.threads)
    if keep != options:
        logger.warning("resuming %s with the options it started with, not the current ones", run_dir.name)
    return run_dir, state, keep, True


class _Run:
    """One run's plumbing: its directory and state.json, the job row, progress, the stop request, stage timings."""

    def __init__(self, run_dir: Path, state: dict[str, Any], options: TrainOptions, job: JobReporter,
                 progress: Progress | None, should_stop: Callable[[], bool] | None) -> None:
        self.run_dir, self.state, self.options, self.job = run_dir, state, options, job
        self._progress, self._should_stop = progress, should_stop or (lambda: False)
        self.device = resolve_device(options.device)
        if options.threads > 0:
            import torch

            torch.set_num_threads(options.threads)
        self.timings: dict[str, float] = dict(state.get("timings", {}))

    def report(self, stage: str, fraction: float, detail: str = "") -> None:
        lo, hi = _STAGES[stage]
        overall = lo + (hi - lo) * min(max(fraction, 0.0), 1.0)
        self.job(stage, overall)
        if self._progress is not None:
            self._progress(stage, overall, detail)

    def mark(self, stage: str, **extra: Any) -> None:
        """Record that the run has reached ``stage`` (everything before it is on disk)."""
        self.state["stage"] = stage
        self.state["timings"] = self.timings
        self.state.update(extra)
        run_state.write_state(self.run_dir, self.state)
        self.job(stage, _STAGES[stage][0], force=True)

    def check_stop(self, save: Callable[[], None]) -> None:
        if self._should_stop():
            save()
            raise TrainingInterrupted(f"training stopped in stage {self.state.get('stage')}; "
                                      f"run `vidx train` again to resume {self.run_dir.name}")


# -- the stages -----------------------------------------------------------------------------------


def _prepare(run: _Run, catalog: Catalog, store: FeatureStore, encoder: Any) -> Corpus:
    t0 = time.perf_counter()
    run.report("data", 0.0, "reading the library")
    data = prepare(catalog, store, run.options.data)
    summary = data.summary()
    if summary["clips_with_features"] < 16:
        raise ValueError(f"the library has {summary['clips_with_features']} video clips; training needs at "
                         "least 16 (ingest some video first)")
    corpus = Corpus.of(data, encoder, run.options.data.split_block_seconds)
    run.timings["data"] = run.timings.get("data", 0.0) + time.perf_counter() - t0
    run.report("data", 1.0, f"{summary['clips_with_features']} clips, {corpus.text_count} texts")
    return corpus


def _build_vocab(run: _Run, corpus: Corpus) -> Any:
    """The visual vocabulary (fitted on training clips only, or loaded on resume); sets every file's tokens."""
    from models.visual_vocab import VisualVocab, VocabConfig

    path = run.run_dir / "vocab.npz"
    if path.is_file():
        vocab = VisualVocab.load(path)
    else:
        t0 = time.perf_counter()
        run.report("vocab", 0.0, "hierarchical k-means")
        # Only training clips shape the vocabulary, so held-out clips are unseen by every part of the model.
        train = [m.features[m.clip_split == TRAIN] for m in corpus.data.media if m.features is not None]
        feats = np.concatenate([f for f in train if len(f)]).astype(np.float32)
        o = run.options
        vocab = VisualVocab.fit(feats, VocabConfig(max_depth=o.vocab_max_depth, min_clips_per_leaf=o.vocab_min_per_leaf,
                                                   seed=o.seed))
        with atomic_write(path) as f:
            vocab.save(f)
        run.timings["vocab"] = time.perf_counter() - t0
        run.mark("videobert")
    corpus.tokens = [vocab.assign(m.features) if m.features is not None else None for m in corpus.data.media]
    names = run.run_dir / "token_concepts.json"
    if not names.is_file():
        # What the training clips of each token showed: lets `vidx describe` say what a token looks like.
        table = {str(tok): [n for n, _ in sorted(Counter(seen).items(), key=lambda kv: (-kv[1], kv[0]))[:3]]
                 for tok, seen in corpus.training_concepts().items()}
        run_state.write_json(names, table)
    run.report("vocab", 1.0, f"{vocab.size} tokens, depth {vocab.depth}")
    return vocab


def _init_visual_rows(model: Any, corpus: Corpus) -> None:
    """Start each visual token's embedding at the mean word embedding of its clips' top concept names.

    The tokens then begin near words the encoder knows, which gives template filling a head start
    (the paper starts from random rows and has 1,000x more video).
    """
    import torch

    names = corpus.training_concepts()
    if not names:
        return
    c = model.config
    table = model.emb.word.weight.detach()[c.visual_offset : c.visual_offset + c.visual_vocab_size].clone()
    words = model.emb.word.weight.detach()[: c.text_vocab_size]
    for tok, ns in names.items():
        ids = [i for n in ns for i in corpus.encoder.tokenize([n])[0][1:-1]]
        if ids:
            table[tok] = words[torch.tensor(ids, device=words.device)].mean(0)
    model.set_visual_embeddings(table)


def _train_videobert(run: _Run, corpus: Corpus, vocab_size: int) -> None:
    import torch

    from models.videobert import VideoBERT, VideoBertConfig, save_checkpoint

    final = run.run_dir / "videobert.pt"
    if final.is_file():
        return
    t0 = time.perf_counter()
    o = run.options
    config = VideoBertConfig(visual_vocab_size=vocab_size, layers=o.videobert_layers, max_text_len=32,
                             max_visual_len=o.data.sequence_clips)
    model = VideoBERT.from_text_encoder(corpus.encoder.path, config, device=run.device)

    def batch_loss(step: int) -> dict[str, Any]:
        # Batches depend only on (seed, step): a resumed run sees exactly the batches it would have.
        rng = np.random.default_rng([o.seed, 1, step])
        gen = torch.Generator().manual_seed(o.seed * 1_000_003 + step)
        return model.loss(videobert_batch(corpus, TRAIN, rng, gen, o.batch_size, config, run.device))

    _fit(run, "videobert", model, o.videobert_lr, o.videobert_steps, batch_loss, t0,
         ("total", "text_acc", "visual_acc", "align_acc"), lambda ema: f"loss {ema['total']:.2f} vis-acc {ema['visual_acc']:.2f}",
         on_fresh=lambda: _init_visual_rows(model, corpus))
    with atomic_write(final) as f:
        save_checkpoint(f, model, config, extra={"run": run.run_dir.name, "steps": o.videobert_steps, "vocab": "vocab.npz"})
    (run.run_dir / "videobert.train.pt").unlink(missing_ok=True)
    run.mark("cbt")


def _train_cbt(run: _Run, corpus: Corpus) -> None:
    import torch

    from models.cbt import CBT, CBTConfig, save_checkpoint

    final = run.run_dir / "cbt.pt"
    if final.is_file():
        return
    t0 = time.perf_counter()
    o = run.options
    feature_dim = int(next(m.features for m in corpus.data.media if m.features is not None).shape[1])
    config = CBTConfig(feature_dim=feature_dim, text_dim=corpus.encoder.dim, max_len=o.data.sequence_clips)
    torch.manual_seed(o.seed)
    model = CBT(config).to(run.device)

    def batch_loss(step: int) -> dict[str, Any]:
        rng = np.random.default_rng([o.seed, 2, step])
        gen = torch.Generator().manual_seed(o.seed * 1_000_003 + 7 + step)
        feats, pad, text, valid = cbt_batch(corpus, TRAIN, rng, o.batch_size, config, run.device)
        return model.loss(feats, pad, text, gen, valid)

    _fit(run, "cbt", model, o.cbt_lr, o.cbt_steps, batch_loss, t0, ("total", "r1", "masked_acc"),
         lambda ema: f"loss {ema['total']:.2f} R@1 {ema['r1']:.2f}")
    with atomic_write(final) as f:
        save_checkpoint(f, model, config, extra={"run": run.run_dir.name, "steps": o.cbt_steps})
    (run.run_dir / "cbt.train.pt").unlink(missing_ok=True)
    run.mark("evaluate")


def _lr_lambda(total: int, warmup_fraction: float) -> Callable[[int], float]:
    """Linear warm-up, then linear decay to 5% of the peak."""
    warm = max(1, int(total * warmup_fraction))

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.05, 1.0 - (step - warm) / max(1, total - warm))

    return f


def _fit(run: _Run, stage: str, model: Any, lr: float, steps: int, batch_loss: Callable[[int], dict[str, Any]],
         t0: float, shown: tuple[str, ...], detail: Callable[[dict[str, float]], str],
         on_fresh: Callable[[], None] | None = None) -> None:
    """AdamW over ``steps`` batches, resuming from ``<stage>.train.pt`` and saving it every checkpoint_seconds
    and when asked to stop; ``on_fresh`` runs only when no saved state exists (initialisation)."""
    import torch

    from indexer.training.state import load_progress, save_progress

    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(steps, run.options.warmup_fraction))
    ckpt = run.run_dir / f"{stage}.train.pt"
    start = 0
    if ckpt.is_file():
        start, run.timings[stage] = load_progress(ckpt, model, opt, sched)
        logger.info("resuming %s at step %d", stage, start)
    elif on_fresh is not None:
        on_fresh()
    spent = run.timings.get(stage, 0.0)

    def save(step: int) -> None:
        save_progress(ckpt, model, opt, sched, step, spent + time.perf_counter() - t0)

    model.train()
    last_save = time.monotonic()
    ema: dict[str, float] = {}
    for step in range(start, steps):
        run.check_stop(lambda: save(step))
        out = batch_loss(step)
        opt.zero_grad(set_to_none=True)
        out["total"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        for k in shown:  # smoothed for the progress line only
            v = float(out[k].detach())
            ema[k] = 0.9 * ema.get(k, v) + 0.1 * v
        if time.monotonic() - last_save >= run.options.checkpoint_seconds:
            save(step + 1)
            last_save = time.monotonic()
        run.report(stage, (step + 1) / max(steps, 1), f"step {step + 1}/{steps} {detail(ema)}")
    run.timings[stage] = spent + time.perf_counter() - t0


def _evaluate(run: _Run, corpus: Corpus, vocab: Any, conse: Callable[[int], np.ndarray]) -> dict[str, Any]:
    from models.cbt import load_checkpoint as load_cbt
    from models.videobert import load_checkpoint as load_vb

    t0 = time.perf_counter()
    vb, _, _ = load_vb(run.run_dir / "videobert.pt", device=run.device)
    cbt, _, _ = load_cbt(run.run_dir / "cbt.pt", device=run.device)
    heldout = evaluate(vb, cbt, corpus, vocab.most_frequent_token, conse, run.options.seed, run.device,
                       lambda fraction, detail: run.report("evaluate", fraction, detail))
    run.timings["evaluate"] = time.perf_counter() - t0
    return {"heldout": heldout}


def _register(run: _Run, catalog: Catalog, store: FeatureStore, models_root: Path, metrics: dict[str, Any],
              vocab: Any, summary: dict[str, int]) -> tuple[dict[str, int], dict[str, bool]]:
    """Catalog rows for the run's models, metrics.json, every clip's visual token; (versions, recommended)."""
    run.report("register", 0.0, "catalog")
    o = run.options
    metrics.update({
        "run": run.run_dir.name, "data": summary, "device": run.device,
        "vocab": {"size": vocab.size, "depth": vocab.depth, "used": vocab.n_used},
        "steps": {"videobert": o.videobert_steps, "cbt": o.cbt_steps, "batch": o.batch_size},
        "seconds": {k: round(v, 1) for k, v in run.timings.items()},
        "peak_rss_mb": _peak_rss_mb(),
    })
    rec = recommend(metrics["heldout"], o.activate)
    metrics["recommended"] = rec
    metrics["left_off"] = left_off(metrics["heldout"], o.activate)  # why, for `vidx train` and `vidx models`
    versions = {kind: register(catalog, models_root, kind, run.run_dir.name, run.run_dir / f"{kind}.pt", metrics)
                for kind in KINDS}
    run_state.write_json(run.run_dir / "metrics.json", metrics)
    tokens = assign_visual_tokens(catalog, store, run.run_dir / "vocab.npz")
    logger.info("assigned visual tokens to %d clips", tokens)
    run.state.update({"done": True, "versions": versions})
    run.mark("register")
    return versions, rec


def _peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux.
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
