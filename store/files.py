"""Crash-safe file writes for the whole house: a file or a directory appears complete or not at all.

Three tools, all built on the same idea - write under a unique temporary name beside the target,
then ``os.replace`` it into place, and remove the temporary on any error:

* :func:`atomic_write` - a context manager that yields an open file; on a clean exit the file
  replaces ``path``. For anything that writes to a file object (``np.save``, ``torch.save``,
  ``json.dump``, ``pickle.dump``); a module that may not import ``store`` (``models/``) takes the
  file object from its caller::

      with atomic_write(path) as f:
          np.save(f, array, allow_pickle=False)

* :func:`staged_dir` - the same for a directory: yields an empty staging directory that, on a
  clean exit, replaces ``final`` whole (via :func:`atomic_replace_dir`).
* :func:`fsync_dir` - make a rename inside a directory durable.

Generations, for a directory that readers in other threads or processes open while one writer
replaces it: the writer stages each version as ``gen-NNNNNN/``, then switches the file
``CURRENT`` to its name (:func:`switch_current`, an :func:`atomic_write`), so a reader
(:func:`read_current`) finds one whole generation or the one before, never a missing or
half-written one; :func:`sweep_generations` removes those no reader can still be opening.

Concurrent writers of one path each write their own temporary file and the last rename wins, so a
reader never sees a half-written file. Temporary names start with a dot and end in ``.tmp``
(``.name.<hex>.tmp``) or contain ``.tmp-`` (staging directories), so a sweep can recognise them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_replace_dir",
    "atomic_write",
    "fsync_dir",
    "generation_number",
    "read_current",
    "staged_dir",
    "sweep_generations",
    "switch_current",
]


def _token() -> str:
    return uuid.uuid4().hex[:8]


def fsync_dir(path: Path | str) -> None:
    """Flush a directory's entries (the renames in it) to disk; a no-op where the OS refuses."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_write(
    path: Path | str, mode: str = "wb", *, encoding: str | None = None, fsync: bool = True
) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on a clean exit it replaces ``path``, on an error it is removed.

    ``mode`` is ``"wb"`` (bytes) or ``"w"`` (text, UTF-8 unless ``encoding`` says otherwise).
    With ``fsync`` (the default) the data and the rename are on disk when the block ends: the file
    is fsynced before the rename and its directory after it; ``fsync=False`` skips both, for
    files that are cheap to recompute. The parent directory must exist. The file gets the
    permissions a plain ``open`` would give it (0666 less the umask).
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"expected mode 'wb' or 'w', got {mode!r}")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{_token()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        text = {"encoding": encoding or "utf-8"} if mode == "w" else {}
        with os.fdopen(fd, mode, **text) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        fsync_dir(path.parent)


def atomic_replace_dir(staging: Path | str, final: Path | str, *, trash: Path | str | None = None) -> None:
    """Put the complete directory ``staging`` at ``final``, replacing what was there.

    A directory cannot be renamed over a non-empty one, so a previous ``final`` is first moved
    aside (into ``trash``, by default ``final``'s parent, which must be on the same filesystem)
    and removed once the new one is in place: a crash between the two renames leaves no
    ``final`` and a complete old copy in ``trash``, never a mix of the two.
    """
    staging, final = Path(staging), Path(final)
    old = None
    if final.exists():
        old = Path(trash or final.parent) / f".{final.name}.old-{_token()}"
        os.replace(final, old)
    os.replace(staging, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_dir(
    final: Path | str, *, staging_root: Path | str | None = None, fsync: bool = False
) -> Iterator[Path]:
    """Yield an empty staging directory that replaces ``final`` on a clean exit and is removed on an error.

    The staging directory is ``staging_root/.<final name>.tmp-<hex>`` (``staging_root`` defaults
    to ``final``'s parent; a previous ``final`` is moved aside there too). With ``fsync`` the
    staging directory's entries are flushed before the swap and ``final``'s parent after it; the
    files inside are the caller's to fsync (:func:`atomic_write` does).
    """
    final = Path(final)
    root = Path(staging_root) if staging_root is not None else final.parent
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".{final.name}.tmp-{_token()}"
    staging.mkdir()
    try:
        yield staging
        if fsync:
            fsync_dir(staging)
        final.parent.mkdir(parents=True, exist_ok=True)
        atomic_replace_dir(staging, final, trash=root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if fsync:
        fsync_dir(final.parent)


def generation_number(name: str) -> int | None:
    """The number of a generation directory name ``gen-NNNNNN``, or None for any other name."""
    digits = name[4:] if name.startswith("gen-") else ""
    return int(digits) if digits.isdigit() else None


def read_current(root: Path | str) -> str | None:
    """The generation ``root/CURRENT`` names, or None before the first switch."""
    try:
        return (Path(root) / "CURRENT").read_text().strip() or None
    except FileNotFoundError:
        return None


def switch_current(root: Path | str, name: str) -> None:
    """Make ``name`` (a complete directory in ``root``) the live generation, durably and in one step."""
    with atomic_write(Path(root) / "CURRENT") as f:
        f.write(name.encode())


def sweep_generations(root: Path | str, live: str | None, *, keep: int = 2) -> None:
    """Remove the generations of ``root`` that no reader can still be opening (writer only, under its lock).

    Kept: ``live`` and the ``keep - 1`` finished generations numbered just below it, because a
    reader that read ``CURRENT`` just before a switch may still be loading the one before.
    Removed: every other ``gen-NNNNNN`` (older ones, and newer ones a writer renamed into place
    but died before switching to) and the staging directories ``.gen-*`` unfinished writes left.
    """
    root = Path(root)
    if keep < 1:
        raise ValueError(f"expected keep >= 1, got {keep}")
    gens = [p.name for p in root.glob("gen-*") if p.is_dir()]
    done = sorted((g for g in gens if generation_number(g) is not None), key=lambda g: generation_number(g) or 0)
    kept = {live}
    if live in done:
        i = done.index(live)
        kept.update(done[max(0, i - keep + 1) : i])
    unfinished = [p.name for p in root.glob(".gen-*") if p.is_dir()]
    for g in gens + unfinished:
        if g not in kept:
            shutil.rmtree(root / g, ignore_errors=True)
