"""Switching the active trained models: the whole index is rebuilt for the new models, then the catalog flips at once."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from indexer.training.registry import (
    CbtVisual,
    active_versions,
    assign_visual_tokens,
    indexed_keys,
    list_versions,
    set_active,
)
from store.catalog import Catalog
from store.features import FeatureStore
from store.lexical import LexicalIndex

if TYPE_CHECKING:
    from indexer.embed import Embedder
    from indexer.sync import SyncReport
    from store.vectors import VectorIndex


@dataclass
class ModelSwitch:
    report: SyncReport  # the sync that rebuilt the index
    embedder: Embedder  # the embedder of the new active set, for the index's next writes
    active: dict[str, int | None]  # the active model id per kind now


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """SIGINT/SIGTERM that arrive inside are delivered (as KeyboardInterrupt / exit) when it ends."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {sig: signal.signal(sig, lambda n, _f: received.append(n)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if received:
            signal.raise_signal(received[0])


def switch_models(catalog: Catalog, store: FeatureStore, models_root: Path,
                  open_vectors: Callable[[], AbstractContextManager[VectorIndex]], lexical: LexicalIndex,
                  active: dict[str, int | None], make_embedder: Callable[[CbtVisual | None], Embedder], *,
                  device: str = "auto", progress: Callable[[str, float], None] | None = None) -> ModelSwitch:
    """Make ``active[kind]`` the active model of each kind given (None: none), index first, catalog second.

    The new index generation is built completely before anything switches: CBT vectors are
    computed into the feature store first (interruptible, nothing live changes), then one sync under
    the index's writer lock replaces every point and flushes once (FAISS readers move from the old
    generation to the new one atomically), then one catalog transaction flips the active rows. A
    crash between the two leaves media whose synced_version does not match the active version:
    the next sync repairs them. ``make_embedder`` gives the embedder for a visual model (None: the
    concept tags); ``device`` is where CBT runs.
    """
    from indexer.sync import exclusive_sync, sync_index

    records = {r.id: r for r in list_versions(catalog, models_root)}
    current = {k: r.id for k, r in active_versions(catalog, models_root).items()}
    target = {**current, **active}
    for kind, model_id in target.items():
        if model_id is not None and (model_id not in records or records[model_id].kind != kind):
            raise ValueError(f"model version {model_id} is not a {kind} model (see `vidx models`)")
    visual = None
    if target.get("cbt") is not None:
        visual = CbtVisual(records[target["cbt"]], device=device)
        if progress is not None:
            progress("cbt vectors", 0.0)
        visual.precompute(store, indexed_keys(catalog))
    embedder = make_embedder(visual)
    # Ctrl-C waits for the swap (seconds: every vector is precomputed): the index writer flushes
    # whatever it holds when closed, and half a swap must never become a generation.
    # The workers' syncs take the same cluster-wide lock (PostgreSQL), so none writes in between.
    with exclusive_sync(catalog), interrupts_deferred(), open_vectors() as vectors:
        report = sync_index(catalog, store, vectors, lexical, embedder, progress=progress)
        set_active(catalog, active)
    if target.get("videobert") is not None:
        assign_visual_tokens(catalog, store, records[target["videobert"]].vocab_path)
    return ModelSwitch(report, embedder, target)
