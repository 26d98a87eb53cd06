"""Trained model versions: catalog rows, the active set, activation, and CBT visual vectors for the index."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select, update

from store.catalog import Catalog, Clip, Media, MediaStatus, ModelVersion
from store.features import FeatureStore

logger = logging.getLogger(__name__)

KINDS = ("videobert", "cbt")


@dataclass(frozen=True)
class ModelRecord:
    """One model_versions row as plain data; ``path`` is absolute (the catalog keeps it relative to the models dir)."""

    id: int
    kind: str
    name: str
    path: Path
    metrics: dict[str, Any]
    active: bool

    @property
    def run_dir(self) -> Path:
        return self.path.parent

    @property
    def vocab_path(self) -> Path:
        return self.run_dir / "vocab.npz"


DEVICES = ("auto", "cpu", "cuda")


class ModelUnavailableError(ValueError):
    """A trained model's files are missing or unreadable; the message is one line for the user."""


def _unavailable(record: ModelRecord, problem: str) -> ModelUnavailableError:
    fix = f"`vidx models deactivate {record.kind}`" if record.active else "`vidx models activate` another run"
    return ModelUnavailableError(f"{record.kind} model {record.id} ({record.name}): {problem}; "
                                 f"run {fix} or `vidx train`")


def missing_files(record: ModelRecord) -> ModelUnavailableError | None:
    """The error to give when a model's checkpoint (or, for VideoBERT, its vocabulary) is not on disk, else None."""
    needed = [record.path] + ([record.vocab_path] if record.kind == "videobert" else [])
    gone = [p for p in needed if not p.is_file()]
    return _unavailable(record, f"{', '.join(map(str, gone))} is missing") if gone else None


def unreadable(record: ModelRecord, error: BaseException) -> ModelUnavailableError:
    """A one-line error for a checkpoint that exists but does not load (truncated, corrupt, not a checkpoint)."""
    detail = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
    return _unavailable(record, f"{record.path} cannot be loaded ({type(error).__name__}: {detail})")


def check_device(device: str) -> str:
    """device unchanged when it is auto, cpu or cuda, else a ValueError saying what was expected."""
    if device not in DEVICES:
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    return device


def resolve_device(device: str) -> str:
    """"auto" -> "cuda" when torch sees a GPU, else "cpu"; "cpu" and "cuda" as given. A ValueError for any
    other value, and for "cuda" when torch sees no GPU (one line, rather than a torch traceback later)."""
    import torch

    check_device(device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("CUDA requested but torch sees no GPU (use --device cpu or auto)")
    return device


def _record(row: ModelVersion, models_root: Path) -> ModelRecord:
    path = Path(row.path)
    return ModelRecord(row.id, row.kind, row.name, path if path.is_absolute() else models_root / path,
                       dict(row.metrics or {}), bool(row.active))


def list_versions(catalog: Catalog, models_root: Path) -> list[ModelRecord]:
    with catalog.session() as session:
        rows = session.scalars(select(ModelVersion).order_by(ModelVersion.id)).all()
        return [_record(r, models_root) for r in rows]


def active_versions(catalog: Catalog, models_root: Path) -> dict[str, ModelRecord]:
    """The active row per kind (at most one each)."""
    return {r.kind: r for r in list_versions(catalog, models_root) if r.active and r.kind in KINDS}


def resolve_targets(catalog: Catalog, models_root: Path, spec: str) -> list[ModelRecord]:
    """Rows named by ``spec``: a model_versions id, or a run name (its videobert and cbt rows); ValueError if none."""
    rows = list_versions(catalog, models_root)
    found = [r for r in rows if r.id == int(spec)] if spec.isdigit() else [r for r in rows if r.name == spec]
    if not found:
        raise ValueError(f"no model version matches {spec!r} (see `vidx models`)")
    for r in found:
        if not r.path.is_file():
            raise ValueError(f"model version {r.id} ({r.kind} {r.name}): checkpoint {r.path} is missing")
    return found


def set_active(catalog: Catalog, active: dict[str, int | None]) -> None:
    """Make ``active[kind]`` the one active row of each kind given (None: none active); one transaction."""
    with catalog.session() as session:
        for kind, model_id in active.items():
            session.execute(update(ModelVersion).where(ModelVersion.kind == kind).values(active=False))
            if model_id is not None:
                session.execute(update(ModelVersion).where(ModelVersion.id == model_id).values(active=True))


def register(catalog: Catalog, models_root: Path, kind: str, name: str, path: Path, metrics: dict[str, Any]) -> int:
    """Add (or update, for a resumed run) the row of one trained model; returns its id."""
    rel = str(Path(path).resolve().relative_to(models_root.resolve()))
    with catalog.session() as session:
        row = session.scalars(select(ModelVersion).where(ModelVersion.kind == kind, ModelVersion.name == name)).first()
        if row is None:
            row = ModelVersion(kind=kind, name=name, path=rel, metrics=metrics, active=False)
            session.add(row)
        else:
            row.path, row.metrics = rel, metrics
        session.flush()
        return int(row.id)


def assign_visual_tokens(catalog: Catalog, store: FeatureStore, vocab_path: Path) -> int:
    """Write every clip's visual token under this vocabulary into clips.visual_token; returns how many clips got one.

    Clips of files without video features get NULL.
    """
    from models.visual_vocab import VisualVocab

    vocab = VisualVocab.load(vocab_path)
    with catalog.session() as session:
        media = session.execute(select(Media.id, Media.content_hash).where(Media.status == MediaStatus.INDEXED)).all()
    count = 0
    for media_id, key in media:
        tokens: np.ndarray | None = None
        if key and store.exists(key) and store.has(key, "features"):
            tokens = vocab.assign(store.load(key, "features"))
        with catalog.session() as session:
            clips = session.scalars(select(Clip).where(Clip.media_id == media_id).order_by(Clip.clip_index)).all()
            if tokens is not None and len(tokens) != len(clips):
                logger.warning("media %s: %d feature rows for %d clips; no visual tokens", media_id, len(tokens), len(clips))
                tokens = None
            for row, clip in enumerate(clips):
                clip.visual_token = int(tokens[row]) if tokens is not None else None
            count += len(clips) if tokens is not None else 0
    return count


class CbtVisual:
    """The active CBT checkpoint applied to stored clip features: the index's `visual` vectors.

    Vectors are cached in the feature store as ``cbt_visual_<model id>``: the version is in the array's
    name, so vectors and version are written together (one atomic file) and can never be paired with
    another model's. The model loads on first use.
    """

    def __init__(self, record: ModelRecord, device: str = "cpu") -> None:
        self.record = record
        self.device = device
        self._model = None
        self._lock = threading.Lock()

    @property
    def version(self) -> str:
        # Short: it ends up in media.synced_version (64 characters) next to the base version.
        return f"cbt/{self.record.id}"

    @property
    def model(self):  # type: ignore[no-untyped-def]
        with self._lock:
            if self._model is None:
                from models.cbt import load_checkpoint

                device = resolve_device(self.device)
                missing = missing_files(self.record)
                if missing is not None:
                    raise missing
                try:
                    self._model, _, _ = load_checkpoint(self.record.path, device=device)
                except Exception as e:  # noqa: BLE001 - torch raises many kinds for a bad file
                    # A ValueError: the index sync skips (and reports) the files that needed it.
                    raise unreadable(self.record, e) from e
            return self._model

    def embed(self, features: np.ndarray) -> np.ndarray:
        from models.cbt import embed_video

        return embed_video(self.model, np.asarray(features, np.float32))

    def vectors(self, store: FeatureStore, key: str) -> np.ndarray | None:
        """float16 [N, 384] unit vectors for the clips of one file, or None for a file without video features."""
        if not store.has(key, "features"):
            return None
        name = self.cache_name
        if store.has(key, name):
            try:
                return store.load(key, name)
            except ValueError:  # removed in between (another model's cache cleanup): compute it again
                pass
        vecs = self.embed(store.load(key, "features")).astype(np.float16)
        store.put(key, {name: vecs})
        self._drop_other_caches(store, key)
        return vecs

    @property
    def cache_name(self) -> str:
        """The feature-store array holding this model's vectors (an identifier: FeatureStore's rule)."""
        return f"cbt_visual_{self.record.id}"

    def _drop_other_caches(self, store: FeatureStore, key: str) -> None:
        # Other models' vectors (and the old unversioned pair) are only a cache: keep one model's per file.
        for old in store.path(key).glob("cbt_*.npy"):
            if old.stem != self.cache_name and (old.stem.startswith("cbt_visual") or old.stem == "cbt_version"):
                old.unlink(missing_ok=True)

    def precompute(self, store: FeatureStore, keys: Iterable[str]) -> int:
        """Fill the cache for these files ahead of an index switch; returns how many have vectors."""
        return sum(1 for key in keys if store.exists(key) and self.vectors(store, key) is not None)


def indexed_keys(catalog: Catalog) -> list[str]:
    with catalog.session() as session:
        return [k for k in session.scalars(select(Media.content_hash).where(Media.status == MediaStatus.INDEXED)) if k]


def describe_versions(records: Sequence[ModelRecord]) -> list[dict[str, Any]]:
    """Rows for `vidx models --json`."""
    return [{"id": r.id, "kind": r.kind, "name": r.name, "path": str(r.path), "active": r.active,
             "metrics": r.metrics} for r in records]
