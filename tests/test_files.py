"""The house's crash-safe writes: a file or directory is replaced whole or not at all, and no temporary stays."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from store.files import atomic_replace_dir, atomic_write, fsync_dir, staged_dir


def test_atomic_write_replaces_whole_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "a.npy"
    with atomic_write(target) as f:
        np.save(f, np.arange(3), allow_pickle=False)
    with atomic_write(target, fsync=False) as f:
        np.save(f, np.arange(5), allow_pickle=False)
    assert np.load(target).tolist() == [0, 1, 2, 3, 4]
    with atomic_write(tmp_path / "b.json", "w") as f:
        f.write('{"x": "\u00e9"}')
    assert (tmp_path / "b.json").read_text(encoding="utf-8") == '{"x": "\u00e9"}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "b.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert (target.stat().st_mode & 0o777) == 0o666 & ~umask  # what a plain open() gives, not 0600


def test_atomic_write_error_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="half way"), atomic_write(target, "w") as f:
        f.write("new, but")
        raise RuntimeError("died half way")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
    with pytest.raises(ValueError, match="mode"), atomic_write(target, "a"):
        pass
    fsync_dir(tmp_path)
    fsync_dir(tmp_path / "missing")  # a no-op, not an error


def test_staged_dir_swaps_a_directory_whole(tmp_path: Path) -> None:
    final = tmp_path / "out" / "index"
    for content in ("one", "two"):
        with staged_dir(final, fsync=True) as staging:
            assert staging.parent == final.parent and staging.is_dir() and not os.listdir(staging)
            (staging / "data.txt").write_text(content)
        assert (final / "data.txt").read_text() == content
    assert os.listdir(final.parent) == ["index"]  # the old copy and the staging directory are gone
    with pytest.raises(OSError, match="disk full"), staged_dir(final) as staging:
        (staging / "data.txt").write_text("three")
        raise OSError("disk full")
    assert (final / "data.txt").read_text() == "two" and os.listdir(final.parent) == ["index"]
    trash = tmp_path / ".tmp"
    with staged_dir(final, staging_root=trash) as staging:
        assert staging.parent == trash
        (staging / "data.txt").write_text("four")
    assert (final / "data.txt").read_text() == "four" and os.listdir(trash) == []


def test_atomic_replace_dir_into_an_empty_place(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "f").write_bytes(b"x")
    atomic_replace_dir(staging, tmp_path / "final")
    assert (tmp_path / "final" / "f").read_bytes() == b"x" and not staging.exists()
