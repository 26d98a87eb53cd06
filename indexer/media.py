"""Locates the ffmpeg binary: the system one first, else the one imageio-ffmpeg ships."""

from __future__ import annotations

import functools
import logging
import shutil

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def ffmpeg_exe() -> str:
    """Path of an ffmpeg executable; the system binary wins so distro builds (and their codecs) are used."""
    system = shutil.which("ffmpeg")
    if system:
        logger.debug("using system ffmpeg at %s", system)
        return system
    try:
        # Imported here: imageio-ffmpeg is only the fallback and costs an import when a system ffmpeg exists.
        import imageio_ffmpeg

        bundled = imageio_ffmpeg.get_ffmpeg_exe()
    except Exception as e:  # ImportError, or RuntimeError when the package ships no binary for this platform
        raise RuntimeError(
            "ffmpeg not found: expected an 'ffmpeg' on PATH or the imageio-ffmpeg package with its bundled binary"
        ) from e
    logger.debug("using imageio-ffmpeg's ffmpeg at %s", bundled)
    return bundled
