"""The feature store: per-media clip features, probabilities and thumbnails, written atomically."""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from store.files import atomic_write, staged_dir

logger = logging.getLogger(__name__)

_HEX = set("0123456789abcdef")


def _check_key(key: str) -> str:
    # Keys become directory names: only hex digests are allowed, so nothing escapes the root.
    if len(key) < 8 or not set(key) <= _HEX:
        raise ValueError(f"expected a lowercase hex content hash as feature key, got {key!r}")
    return key


class FeatureStore:
    """Files under ``root/<key[:2]>/<key>/``, keyed by content hash; one directory per media file.

    A directory appears complete or not at all: it is written under ``root/.tmp`` and renamed
    into place, so a crash mid-write leaves only a temporary directory that the next write sweeps.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._tmp = self.root / ".tmp"

    def path(self, key: str) -> Path:
        key = _check_key(key)
        return self.root / key[:2] / key

    def exists(self, key: str) -> bool:
        return (self.path(key) / "meta.json").is_file()

    def write(
        self,
        key: str,
        arrays: Mapping[str, np.ndarray],
        thumbnails: Sequence[bytes | None] = (),
        meta: Mapping[str, Any] | None = None,
    ) -> Path:
        """Replace everything stored for ``key`` with ``arrays`` (``name.npy``) and JPEG thumbnails."""
        final = self.path(key)
        with staged_dir(final, staging_root=self._tmp) as staging:
            for name, array in arrays.items():
                if not name.isidentifier():
                    raise ValueError(f"expected an identifier as array name, got {name!r}")
                np.save(staging / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)
            if thumbnails:
                thumbs = staging / "thumbs"
                thumbs.mkdir()
                for i, jpeg in enumerate(thumbnails):
                    if jpeg:
                        (thumbs / f"{i:06d}.jpg").write_bytes(jpeg)
            # meta.json is written last: its presence marks a complete directory.
            (staging / "meta.json").write_text(json.dumps(dict(meta or {}), sort_keys=True))
        return final

    def put(self, key: str, arrays: Mapping[str, np.ndarray]) -> None:
        """Add or replace single arrays of an existing entry (each file swapped in atomically)."""
        target = self.path(key)
        if not (target / "meta.json").is_file():
            raise ValueError(f"nothing stored for {key}: write() it first")
        for name, array in arrays.items():
            if not name.isidentifier():
                raise ValueError(f"expected an identifier as array name, got {name!r}")
            # no fsync: write() does not fsync either, so an added array is as durable as the rest
            with atomic_write(target / f"{name}.npy", fsync=False) as f:
                np.save(f, np.ascontiguousarray(array), allow_pickle=False)

    def has(self, key: str, name: str) -> bool:
        return (self.path(key) / f"{name}.npy").is_file()

    def load(self, key: str, name: str, *, mmap: bool = False) -> np.ndarray:
        file = self.path(key) / f"{name}.npy"
        if not file.is_file():
            raise ValueError(f"no array {name!r} stored for {key}")
        return np.load(file, mmap_mode="r" if mmap else None, allow_pickle=False)

    def meta(self, key: str) -> dict[str, Any]:
        file = self.path(key) / "meta.json"
        if not file.is_file():
            raise ValueError(f"nothing stored for {key}")
        return json.loads(file.read_text())

    def thumbnail_path(self, key: str, clip_index: int) -> Path:
        return self.path(key) / "thumbs" / f"{clip_index:06d}.jpg"

    def delete(self, key: str) -> None:
        target = self.path(key)
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)

    def sweep(self, min_age_s: float = 3600.0) -> int:
        """Remove staging directories left by writers that died; returns how many.

        Only entries older than ``min_age_s`` go: another process may be writing the young ones.
        """
        if not self._tmp.is_dir():
            return 0
        now = time.time()
        count = 0
        for entry in self._tmp.iterdir():
            try:
                if now - entry.stat().st_mtime < min_age_s:
                    continue
            except FileNotFoundError:
                continue
            shutil.rmtree(entry, ignore_errors=True)
            count += 1
        return count
