"""The FAISS index's files on disk: generation directories, the CURRENT switch, the writer's lock, the sweep.

Layout of an index directory ``path``: ``CURRENT`` names the live generation ``gen-NNNNNN/``,
which holds ``meta.json``, the row columns (``*.npy``), ``extras.json`` (payload keys beyond the
required five) and per vector name ``<name>.faiss`` + ``<name>.labels.npy``. A flush writes a new
generation (unchanged FAISS files hard-linked) in a staging directory, renames it into place and
switches ``CURRENT`` with ``os.replace``, so a crash leaves the previous state; the generation
before the live one is kept for readers still reading it. A writer holds ``path/.lock``
(``fcntl.flock``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from store.files import atomic_write, staged_dir
from store.vectors.base import IndexLockedError

FORMAT = 1
# The row columns, one .npy file each, in the order of the rows.
COLUMNS = ("ids", "media_id", "clip_index", "start", "end", "has_speech")


@dataclass(frozen=True)
class Generation:
    """One generation as read from disk (its FAISS indexes are read separately, on first use)."""

    name: str
    rows: int
    columns: dict[str, np.ndarray]
    extras: dict[int, dict[str, Any]]
    labels: dict[str, np.ndarray]  # per vector name: label -> row (-1: stale)
    kinds: dict[str, str]  # per vector name: "flat" or "hnsw"


@dataclass(frozen=True)
class NamedSnapshot:
    """What a flush writes for one vector name."""

    index: Any | None  # the FAISS index; None: unchanged since the previous generation (hard-linked)
    kind: str
    labels: np.ndarray
    vectors: int  # live vectors


@contextlib.contextmanager
def _synced(path: Path) -> Iterator[BinaryIO]:
    # Inside a staging directory a file needs no temporary name of its own, only an fsync.
    with open(path, "wb") as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def _link_or_copy(src: Path, target: Path) -> None:
    try:
        os.link(src, target)
    except OSError:
        shutil.copyfile(src, target)


class IndexFiles:
    """The directory of one FAISS index; ``faiss`` is the imported faiss module (it reads and writes indexes)."""

    def __init__(self, path: Path, faiss: Any) -> None:
        self.path = path
        self._faiss = faiss
        self._lock_fd: int | None = None

    # -- the writer's lock --------------------------------------------------------------------

    def lock(self) -> None:
        """Take ``.lock`` for writing, or raise :class:`IndexLockedError` naming the holder's pid."""
        fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            finally:
                os.close(fd)
            raise IndexLockedError(
                f"the FAISS vector index at {self.path} is already open for writing (holder pid {holder}); "
                "it has a single writer - open it with read_only=True to search"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- generations --------------------------------------------------------------------------

    def exists(self) -> bool:
        return (self.path / "CURRENT").is_file()

    def current(self) -> str | None:
        """The live generation's directory name, or None before the first flush."""
        try:
            return (self.path / "CURRENT").read_text().strip() or None
        except FileNotFoundError:
            return None

    def sweep(self, live: str | None) -> None:
        """Remove unfinished and superseded generations (writer only): keep ``live`` and the one before."""
        gens = [p.name for p in self.path.glob("gen-*") if p.is_dir()]
        done = sorted((g for g in gens if g[4:].isdigit()), key=lambda g: int(g[4:]))
        keep = {live}
        if live in done:
            i = done.index(live)
            if i > 0:
                keep.add(done[i - 1])
        unfinished = [p.name for p in self.path.glob(".gen-*") if p.is_dir()]  # left by a flush that died
        for g in gens + unfinished:
            if g not in keep:
                shutil.rmtree(self.path / g, ignore_errors=True)

    def faiss_file(self, gen: str, name: str) -> Path:
        return self.path / gen / f"{name}.faiss"

    def load(self, dims: Mapping[str, int], *, reader: bool) -> Generation:
        """Read the live generation; a ``reader`` retries when a writer's flush swept it meanwhile."""
        for _ in range(2 if reader else 0):
            with contextlib.suppress(FileNotFoundError):
                return self._load(dims)
        return self._load(dims)

    def _load(self, dims: Mapping[str, int]) -> Generation:
        gen = self.current()
        if gen is None:
            raise FileNotFoundError(f"no FAISS vector index at {self.path}")
        d = self.path / gen
        meta = json.loads((d / "meta.json").read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"unsupported FAISS index format {meta.get('format')!r} at {d}; rebuild the index")
        stored = {k: int(v) for k, v in meta["dims"].items()}
        if stored != dims:
            raise ValueError(
                f"the FAISS index at {self.path} has vector dims {stored}, expected {dict(dims)}; "
                "clear and rebuild it (vidx reindex)"
            )
        return Generation(
            name=gen,
            rows=int(meta["rows"]),
            columns={col: np.load(d / f"{col}.npy") for col in COLUMNS},
            extras={int(k): v for k, v in json.loads((d / "extras.json").read_text()).items()},
            labels={name: np.load(d / f"{name}.labels.npy") for name in dims},
            kinds={name: meta["names"][name]["kind"] for name in dims},
        )

    def write(
        self,
        prev: str | None,
        dims: Mapping[str, int],
        columns: Mapping[str, np.ndarray],
        extras: Mapping[int, dict[str, Any]],
        names: Mapping[str, NamedSnapshot],
    ) -> str:
        """Write the generation after ``prev``, make it CURRENT and return its name."""
        number = int(prev.split("-")[1]) + 1 if prev else 1
        final = self.path / f"gen-{number:06d}"
        with staged_dir(final, fsync=True) as tmp:
            for col in COLUMNS:
                with _synced(tmp / f"{col}.npy") as f:
                    np.save(f, np.ascontiguousarray(columns[col]), allow_pickle=False)
            with _synced(tmp / "extras.json") as f:
                f.write(json.dumps({str(k): v for k, v in extras.items()}).encode())
            for name, snap in names.items():
                target = tmp / f"{name}.faiss"
                if snap.index is None and prev is not None:  # unchanged (its stale labels live in labels.npy)
                    _link_or_copy(self.faiss_file(prev, name), target)
                else:
                    self._faiss.write_index(snap.index, str(target))
                    with open(target, "rb") as f:
                        os.fsync(f.fileno())
                with _synced(tmp / f"{name}.labels.npy") as f:
                    np.save(f, snap.labels, allow_pickle=False)
            names_meta = {n: {"kind": s.kind, "vectors": s.vectors, "labels": len(s.labels)} for n, s in names.items()}
            meta = {"format": FORMAT, "dims": dict(dims), "rows": len(columns["ids"]), "names": names_meta}
            with _synced(tmp / "meta.json") as f:
                f.write(json.dumps(meta, indent=1).encode())
        with atomic_write(self.path / "CURRENT") as f:
            f.write(final.name.encode())
        return final.name
