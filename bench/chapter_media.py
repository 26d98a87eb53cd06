"""Builds the chapter evaluation videos from ../shared/media (parts and their times known) and their manifest.

    .venv/bin/python bench/chapter_media.py [--media ../shared/media] [--out bench/out/chapters]
    .venv/bin/python bench/chapter_media.py --manifest bench/chapters.json   # rewrite the manifest too

Each video is a row of parts, each part one source (a file trimmed, or repeated, or the five librivox
sentences joined) brought to 640x360, 25 fps, 48 kHz mono; an audio-only source plays over a still
frame of Big Buck Bunny, the same one for every speech part of a video. Every part lasts at least
20 s and a whole number of frames, so its start in the video is exact. In "readings2" the silence
before and after each recording is cut, so at its joins only the words change, with no pause.

The keywords are what a person would search for: for pictures, chosen by looking at frames of each
part; for speech, from the reference transcripts (phone_call.stm, the librivox .txt files, JFK's
line). talk.wav has no reference: its words were read from the repository's own ASR (`vidx show`),
and it is split once, where it turns from political philosophy in general to Piketty's wealth tax
(35.8 s, between "... by other scholars." and "Thomas Piketty in his book").
The same inputs give the same files; a video is rebuilt only when its recipe changes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
SHARED_MEDIA = REPO.parent / "shared" / "media"
DEFAULT_OUT = REPO / "bench" / "out" / "chapters"
MANIFEST = REPO / "bench" / "chapters.json"

FPS = 25
WIDTH, HEIGHT = 640, 360
RATE = 48000
# Bumped when the way parts are rendered changes, so cached videos are rebuilt.
RECIPE_VERSION = 2

LIBRIVOX = [f"librivox/sense_and_sensibility_01_austen_64kb-{n}.wav" for n in ("0870", "0880", "0890", "0920", "0930")]

# Stills for the audio-only parts: frames of Big Buck Bunny, one per video, so within a video the
# picture stays the same across speech parts and only the words (and speakers) change.
STILLS = {"meadow": 180.0, "forest": 340.0, "owl": 380.0, "sky": 60.0}


@dataclass(frozen=True)
class Part:
    """One part: ``files`` played in order (``repeat`` times), from ``trim[0]`` for ``trim[1]`` s if given."""

    files: tuple[str, ...]
    keywords: tuple[str, ...]
    repeat: int = 1
    trim: tuple[float, float] | None = None
    still: str | None = None  # a key of STILLS for audio-only files
    # Cut the silence before the first and after the last word (audio-only parts), so at a join
    # the speech runs on with no more pause than between two sentences: only the words change.
    cut_silence: bool = False

    @property
    def source(self) -> str:
        name = self.files[0].split("/")[0] if len(self.files) > 1 else self.files[0]
        extra = f" x{self.repeat}" if self.repeat > 1 else ""
        span = f" [{self.trim[0]:g}, {self.trim[0] + self.trim[1]:g}]" if self.trim else ""
        return f"{name}{span}{extra}"


@dataclass(frozen=True)
class Video:
    id: str
    parts: tuple[Part, ...]
    note: str = ""


TALK_SPLIT = 35.8  # between "... by other scholars." (ends 35.6 s) and "Thomas Piketty in his book" (36.0 s)

VIDEOS: tuple[Video, ...] = (
    Video("films", (
        Part(("world_night.mp4",), ("earth", "night", "planet", "space"), trim=(0.0, 30.48)),
        Part(("bikes.mp4",), ("bicycle", "street", "car", "taxi"), repeat=2),
        Part(("bunny_burrow.mp4",), ("rabbit", "bunny", "burrow"), repeat=4),
        Part(("carphone.mp4",), ("man", "car", "suit", "bow tie"), repeat=5),
        Part(("deer.mp4",), ("deer", "bushes"), repeat=21),
        Part(("big_buck_bunny_full.mp4",), ("rodents", "squirrel", "rabbit", "tree"), trim=(214.72, 21.28)),
    ), "six silent or music-only films joined: every boundary a change of picture"),
    Video("mixed", (
        Part(("phone_call.wav",), ("Chicago", "New Jersey", "Texas", "phone call"), still="meadow"),
        Part(("carphone.mp4",), ("man", "car", "suit", "bow tie"), repeat=5),
        Part(("jfk.wav",), ("country", "Americans", "ask not"), repeat=2, still="meadow"),
        Part(("world_night.mp4",), ("earth", "night", "planet", "space"), trim=(0.0, 30.48)),
        Part(tuple(LIBRIVOX), ("Dashwood", "amiable", "selfish", "ill disposed"), still="meadow"),
    ), "speech over a still frame alternating with films"),
    Video("lecture", (
        Part(("talk.wav",), ("political philosophy", "theories", "Dublin"), trim=(0.0, TALK_SPLIT), still="forest"),
        Part(("talk.wav",), ("Piketty", "wealth tax", "capital"), trim=(TALK_SPLIT, 60.0 - TALK_SPLIT),
             still="forest"),
        Part(("phone_call.wav",), ("Chicago", "New Jersey", "Texas", "phone call"), still="forest"),
    ), "one still frame: a topic change inside talk.wav, then a different recording"),
    Video("readings", (
        Part(tuple(LIBRIVOX), ("Dashwood", "amiable", "selfish", "ill disposed"), still="owl"),
        Part(("jfk.wav",), ("country", "Americans", "ask not"), repeat=2, still="owl"),
        Part(("phone_call.wav",), ("Chicago", "New Jersey", "Texas", "phone call"), still="owl"),
    ), "one still frame: the librivox passage, jfk, the phone call; only the words change"),
    Video("readings2", (
        Part(("jfk.wav",), ("country", "Americans", "ask not"), repeat=3, still="sky", cut_silence=True),
        Part(tuple(LIBRIVOX), ("Dashwood", "amiable", "selfish", "ill disposed"), still="sky", cut_silence=True),
        Part(("phone_call.wav",), ("Chicago", "New Jersey", "Texas", "phone call"), still="sky", cut_silence=True),
    ), "the same recordings in another order over another still frame, the silences at the joins cut"),
)


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True, timeout=600)


def probe_duration(path: Path) -> float:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(path)],
                         check=True, capture_output=True, text=True, timeout=60).stdout
    return float(out.strip())


def _has_audio(path: Path) -> bool:
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "a", "-show_entries", "stream=index",
                          "-of", "csv=p=0", str(path)], check=True, capture_output=True, text=True, timeout=60).stdout
    return bool(out.strip())


def _frames(seconds: float) -> float:
    """``seconds`` rounded down to whole frames, so part starts are exact frame times."""
    return math.floor(seconds * FPS + 1e-6) / FPS


def part_duration(part: Part, media: Path) -> float:
    """A film part's length: its trim, or its files' lengths times ``repeat``, in whole frames."""
    if part.trim is not None:
        return _frames(part.trim[1])
    return _frames(part.repeat * sum(probe_duration(media / f) for f in part.files))


_VIDEO_FILTER = (f"scale={WIDTH}:{HEIGHT}:force_original_aspect_ratio=decrease,"
                 f"pad={WIDTH}:{HEIGHT}:(ow-iw)/2:(oh-ih)/2,setsar=1,fps={FPS},format=yuv420p")
_AUDIO_FILTER = f"aresample={RATE},aformat=channel_layouts=mono"
_CODEC = ["-c:v", "libx264", "-preset", "ultrafast", "-crf", "18", "-threads", "2", "-c:a", "pcm_s16le",
          "-fflags", "+bitexact", "-flags:v", "+bitexact", "-flags:a", "+bitexact", "-map_metadata", "-1"]


def _still(name: str, media: Path, work: Path) -> Path:
    out = work / f"still_{name}.png"
    if not out.is_file():
        _ffmpeg("-ss", f"{STILLS[name]}", "-i", str(media / "big_buck_bunny_full.mp4"), "-frames:v", "1",
                "-vf", _VIDEO_FILTER.replace(",format=yuv420p", ""), str(out))
    return out


_CUT_SILENCE = ("silenceremove=start_periods=1:start_threshold=-40dB:detection=peak,areverse,"
                "silenceremove=start_periods=1:start_threshold=-40dB:detection=peak,areverse")


def _render_part(part: Part, media: Path, work: Path, out: Path) -> float:
    """One part as a lossless-audio segment of whole frames; returns its duration."""
    sources = [media / f for f in part.files] * part.repeat
    trim = ["-ss", f"{part.trim[0]}"] if part.trim else []
    n = len(sources)
    if part.still is not None:
        # The speech first, so its length (after any silence cut) sets the part's.
        wav = out.with_suffix(".wav")
        inputs = [a for s in sources for a in (*trim, "-i", str(s))]
        graph = ("".join(f"[{i}:a]{_AUDIO_FILTER}[a{i}];" for i in range(n))
                 + "".join(f"[a{i}]" for i in range(n)) + f"concat=n={n}:v=0:a=1"
                 + (f",{_CUT_SILENCE}" if part.cut_silence else "") + "[a]")
        limit = ["-t", f"{part.trim[1]:.3f}"] if part.trim else []
        _ffmpeg(*inputs, "-filter_complex", graph, "-map", "[a]", *limit, "-c:a", "pcm_s16le", str(wav))
        seconds = _frames(probe_duration(wav))
        _ffmpeg("-loop", "1", "-framerate", str(FPS), "-i", str(_still(part.still, media, work)), "-i", str(wav),
                "-filter_complex", f"[0:v]{_VIDEO_FILTER}[v];[1:a]apad[a]", "-map", "[v]", "-map", "[a]",
                "-t", f"{seconds:.3f}", *_CODEC, str(out))
        return seconds
    if part.cut_silence:
        raise ValueError("cut_silence is for audio-only parts")
    seconds = part_duration(part, media)
    inputs = [a for s in sources for a in (*trim, "-i", str(s))]
    graph = "".join(f"[{i}:v]{_VIDEO_FILTER}[v{i}];" for i in range(n))
    if all(_has_audio(s) for s in sources):
        graph += "".join(f"[{i}:a]{_AUDIO_FILTER}[a{i}];" for i in range(n))
        graph += "".join(f"[v{i}][a{i}]" for i in range(n)) + f"concat=n={n}:v=1:a=1[v][a0];[a0]apad[a]"
    else:
        # A silent film gets a silent track, so every part (and the concat) has audio.
        inputs += ["-f", "lavfi", "-i", f"anullsrc=r={RATE}:cl=mono"]
        graph += "".join(f"[v{i}]" for i in range(n)) + f"concat=n={n}:v=1:a=0[v];[{n}:a]anull[a]"
    _ffmpeg(*inputs, "-filter_complex", graph, "-map", "[v]", "-map", "[a]", "-t", f"{seconds:.3f}", *_CODEC,
            str(out))
    return seconds


def _recipe(video: Video, media: Path) -> str:
    payload = {"version": RECIPE_VERSION, "video": asdict(video), "stills": STILLS,
               "sizes": {f: (media / f).stat().st_size for p in video.parts for f in p.files}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def build_video(video: Video, media: Path, out_dir: Path) -> tuple[Path, list[dict[str, object]]]:
    """The video's file (built unless an identical recipe already made it) and its parts with times."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{video.id}.mp4"
    stamp = out_dir / f"{video.id}.recipe.json"
    recipe = _recipe(video, media)
    if target.is_file() and stamp.is_file():
        made = json.loads(stamp.read_text())
        if made.get("recipe") == recipe:
            return target, made["parts"]
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        work = Path(tmp)
        segments, durations = [], []
        for i, part in enumerate(video.parts):
            seg = work / f"part{i}.mkv"
            durations.append(_render_part(part, media, work, seg))
            segments.append(seg)
        inputs = [a for s in segments for a in ("-i", str(s))]
        n = len(segments)
        graph = "".join(f"[{i}:v][{i}:a]" for i in range(n)) + f"concat=n={n}:v=1:a=1[v][a]"
        partial = work / target.name
        _ffmpeg(*inputs, "-filter_complex", graph, "-map", "[v]", "-map", "[a]", "-c:v", "libx264",
                "-preset", "veryfast", "-crf", "23", "-threads", "2", "-c:a", "aac", "-b:a", "96k",
                "-fflags", "+bitexact", "-flags:v", "+bitexact", "-flags:a", "+bitexact", "-map_metadata",
                "-1", "-movflags", "+faststart", str(partial))
        partial.replace(target)
    parts, t = [], 0.0
    for part, d in zip(video.parts, durations):
        parts.append({"start": round(t, 3), "end": round(t + d, 3), "keywords": list(part.keywords),
                      "source": part.source, "picture": f"still:{part.still}" if part.still else part.files[0],
                      "silence_cut": part.cut_silence})
        t += d
    stamp.write_text(json.dumps({"recipe": recipe, "parts": parts}, indent=1))
    logger.info("built %s (%.1f s)", target, t)
    return target, parts


def build_all(media: Path = SHARED_MEDIA, out_dir: Path = DEFAULT_OUT) -> list[tuple[Video, Path, list[dict[str, object]]]]:
    if not media.is_dir():
        raise ValueError(f"expected the shared media folder at {media}")
    return [(v, *build_video(v, media, out_dir)) for v in VIDEOS]


def manifest(built: list[tuple[Video, Path, list[dict[str, object]]]], relative_to: Path) -> dict[str, object]:
    def rel(p: Path) -> str:
        try:
            return str(p.resolve().relative_to(relative_to.resolve()))
        except ValueError:
            return str(p.resolve())

    return {"name": "chapters",
            "note": "built by bench/chapter_media.py from ../shared/media; a boundary is a part start other than 0",
            "media": [{"id": v.id, "path": rel(path), "note": v.note, "parts": parts} for v, path, parts in built]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--media", type=Path, default=SHARED_MEDIA)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--manifest", type=Path, default=None, help="write the manifest here (paths relative to it)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    built = build_all(args.media, args.out)
    for v, path, parts in built:
        print(f"{path}: {len(parts)} parts, {parts[-1]['end']:.2f} s (file {probe_duration(path):.2f} s)")
    if args.manifest is not None:
        args.manifest.write_text(json.dumps(manifest(built, args.manifest.parent), indent=1) + "\n")
        print(f"wrote {args.manifest}")


if __name__ == "__main__":
    main()
