"""A file's chapters and transcript as the files people use elsewhere: WebVTT chapters and captions, SRT, the "00:00 Title" list, plain text."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Chapters = Sequence[Mapping[str, Any]]  # dicts with start, end, title (keywords, summary unused here)
Segments = Sequence[Mapping[str, Any]]  # dicts with start, end, text, words [[start, end, word, prob], ...] | None
_SPACE = re.compile(r"\s+")
_SENTENCE_END = re.compile(r"[.?!…]['\")\]]*$")
_CLAUSE_END = re.compile(r"[,;:]['\")\]]*$")


@dataclass(frozen=True)
class CaptionOptions:
    """How captions are cut: the usual broadcast limits (2 lines of ~42 characters, a few seconds on screen)."""

    line_chars: int = 42
    lines: int = 2
    max_seconds: float = 7.0
    pause_seconds: float = 1.5  # a silence this long ends a cue, so a caption never stays up over it

    def __post_init__(self) -> None:
        if self.line_chars < 10 or self.lines < 1 or self.max_seconds <= 0 or self.pause_seconds <= 0:
            raise ValueError(f"expected line_chars >= 10, lines >= 1, max_seconds > 0 and pause_seconds > 0, got "
                             f"{self.line_chars}, {self.lines}, {self.max_seconds}, {self.pause_seconds}")


@dataclass(frozen=True)
class Cue:
    """One caption: times in whole milliseconds (what the formats can say), its wrapped lines, its speaker."""

    start_ms: int
    end_ms: int
    lines: tuple[str, ...]
    speaker: str | None = None


@dataclass(frozen=True)
class _Word:
    start: float
    end: float
    text: str


# -- times ------------------------------------------------------------------------------------------


def _ms(t: Any, what: str) -> int:
    try:
        value = float(t)
    except (TypeError, ValueError):
        raise ValueError(f"expected a number of seconds for {what}, got {t!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"expected a finite number of seconds for {what}, got {t!r}")
    return max(0, round(value * 1000))


def _timestamp(ms: int, sep: str) -> str:
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, milli = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{milli:03d}"


def _clock(seconds: int, hours: bool) -> str:
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if hours else f"{m:02d}:{s:02d}"


def _vtt_escape(text: str) -> str:
    # WebVTT cue text knows three character references that matter; escaping ">" also turns "-->" into "--&gt;".
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _one_line(text: Any) -> str:
    return _SPACE.sub(" ", str(text or "")).strip()


# -- chapters ---------------------------------------------------------------------------------------


def _chapter_spans(chapters: Chapters) -> list[tuple[int, int, str]]:
    """(start ms, end ms, one-line title) in time order, overlaps clipped; a chapter left with no time is dropped."""
    rows: list[tuple[int, int, str]] = []
    for i, c in enumerate(chapters):
        start, end = _ms(c.get("start"), f"chapter {i + 1} start"), _ms(c.get("end"), f"chapter {i + 1} end")
        if end < start:
            raise ValueError(f"expected chapter {i + 1} to end after it starts, got start {c.get('start')}, "
                             f"end {c.get('end')}")
        rows.append((start, end, _one_line(c.get("title"))))
    rows.sort(key=lambda r: (r[0], r[1]))
    out: list[tuple[int, int, str]] = []
    for start, end, title in rows:
        if out and start < out[-1][1]:
            start = out[-1][1]  # a chapter track's cues must not overlap (players show one chapter at a time)
        if end > start:
            out.append((start, end, title or f"Chapter {len(out) + 1}"))
    return out


def webvtt_chapters(chapters: Chapters) -> str:
    """A WebVTT file for ``<track kind="chapters">``: one cue per chapter, its text the escaped title."""
    cues = [f"{i}\n{_timestamp(s, '.')} --> {_timestamp(e, '.')}\n{_vtt_escape(t)}"
            for i, (s, e, t) in enumerate(_chapter_spans(chapters), start=1)]
    return "WEBVTT\n\n" + "".join(c + "\n\n" for c in cues)


def chapter_list(chapters: Chapters) -> str:
    """The "00:00 Title" lines people paste under a video (YouTube's rules: the first at 00:00).

    Times are whole seconds, rounded down so a line never points past its chapter's start; mm:ss
    throughout when every chapter starts within the first hour, else h:mm:ss throughout.
    """
    spans = _chapter_spans(chapters)
    if not spans:
        return ""
    hours = spans[-1][0] >= 3_600_000
    lines = [f"{_clock(0 if i == 0 else s // 1000, hours)} {t}" for i, (s, _, t) in enumerate(spans)]
    return "\n".join(lines) + "\n"


# -- captions ---------------------------------------------------------------------------------------


def _words(segment: Mapping[str, Any], index: int) -> list[_Word]:
    """A segment's words with times: the ASR word times where there are any, else spread over the segment
    by length. Punctuation the ASR gives as a token of its own stays on the word before it."""
    start = float(_ms(segment.get("start"), f"segment {index + 1} start")) / 1000
    end = max(start, float(_ms(segment.get("end"), f"segment {index + 1} end")) / 1000)
    out: list[_Word] = []
    for w in segment.get("words") or []:
        if not isinstance(w, Sequence) or len(w) < 3:
            raise ValueError(f"expected words as [start, end, word, prob] in segment {index + 1}, got {w!r}")
        raw = str(w[2])
        token = raw.strip()
        if not token:
            continue
        ws = max(_ms(w[0], f"a word start in segment {index + 1}") / 1000, out[-1].end if out else 0.0)
        we = max(_ms(w[1], f"a word end in segment {index + 1}") / 1000, ws)
        if out and raw[:1] != " " and not token[0].isalnum():
            out[-1] = _Word(out[-1].start, we, out[-1].text + token)  # "," or "'s" given apart from its word
        else:
            out.append(_Word(ws, we, token))
    if out:
        return out
    tokens = _one_line(segment.get("text")).split(" ")
    if tokens == [""]:
        return []
    total = sum(len(t) for t in tokens) + len(tokens) - 1  # the spaces between words take time too
    t, per_char = start, (end - start) / total
    for token in tokens:
        out.append(_Word(t, t + len(token) * per_char, token))
        t += (len(token) + 1) * per_char
    return out


def _wrap(words: Sequence[str], options: CaptionOptions, reserved: int) -> tuple[str, ...] | None:
    """The words in at most ``options.lines`` lines of ``line_chars`` (the first line ``reserved`` shorter),
    as even as possible; None when they do not fit."""

    def fill(width: int) -> list[str] | None:
        lines: list[str] = []
        line = ""
        for w in words:
            room = width - (reserved if not lines else 0)
            if line and len(line) + 1 + len(w) > room:
                lines.append(line)
                line = w
            else:
                line = f"{line} {w}" if line else w
            if len(line) > width - (reserved if not lines else 0):
                return None
        lines.append(line)
        return lines if len(lines) <= options.lines else None

    widest = fill(options.line_chars)
    if widest is None:
        return None
    # As few lines as fit, then the narrowest width that keeps that count: balanced lines, not a full one and a stub.
    lo, hi = 1, options.line_chars
    while lo < hi:
        mid = (lo + hi) // 2
        got = fill(mid)
        if got is None or len(got) > len(widest):
            lo = mid + 1
        else:
            hi = mid
    return tuple(fill(lo) or widest)


def _cut(words: list[_Word], options: CaptionOptions, reserved: int) -> list[list[_Word]]:
    """Consecutive words in cues that fit the limits; a cue that has to end ends at a sentence end (or else
    a clause end) where there is one late enough in it, so cues read as phrases."""

    def fits(run: list[_Word]) -> bool:
        if len(run) == 1:
            return True  # one word longer than the limits is still said
        return (run[-1].end - run[0].start <= options.max_seconds
                and _wrap([w.text for w in run], options, reserved) is not None)

    def split(run: list[_Word]) -> tuple[list[_Word], list[_Word]]:
        # The latest sentence end past the first third of the cue, else the latest clause end past its half.
        total = sum(len(w.text) + 1 for w in run)
        for pattern, share in ((_SENTENCE_END, 1 / 3), (_CLAUSE_END, 1 / 2)):
            seen, best = 0, None
            for j, w in enumerate(run[:-1]):
                seen += len(w.text) + 1
                if seen >= share * total and pattern.search(w.text):
                    best = j
            if best is not None:
                return run[: best + 1], run[best + 1 :]
        return run, []

    cues: list[list[_Word]] = []
    run: list[_Word] = []
    for w in words:
        if run and w.start - run[-1].end >= options.pause_seconds:
            cues.append(run)
            run = []
        elif run and not fits(run + [w]):
            head, run = split(run)
            cues.append(head)
            if run and not fits(run + [w]):
                cues.append(run)
                run = []
        run.append(w)
    if run:
        cues.append(run)
    return cues


def caption_cues(segments: Segments, options: CaptionOptions = CaptionOptions()) -> list[Cue]:
    """The transcript as caption cues: long segments re-cut at word times, times in time order, no overlaps,
    segments without words dropped. A segment's ``speaker`` (where diarisation gave one) goes with its cues."""
    cues: list[Cue] = []
    order = sorted(range(len(segments)), key=lambda i: _ms(segments[i].get("start"), f"segment {i + 1} start"))
    for i in order:
        seg = segments[i]
        speaker = _one_line(seg.get("speaker")) or None
        # "Name: " goes before the first line in SRT; a long name may take at most half of it.
        reserved = min(len(speaker) + 2, options.line_chars // 2) if speaker else 0
        for run in _cut(_words(seg, i), options, reserved):
            lines = _wrap([w.text for w in run], options, reserved) or (" ".join(w.text for w in run),)
            start, end = round(run[0].start * 1000), round(run[-1].end * 1000)
            if cues and start < cues[-1].end_ms:
                # Overlapping segments: the earlier cue gives way, so each cue is on screen alone.
                prev = cues[-1]
                if start > prev.start_ms:
                    cues[-1] = Cue(prev.start_ms, start, prev.lines, prev.speaker)
                else:
                    start = prev.end_ms
            end = max(end, start + 1)  # a cue's end must come after its start
            cues.append(Cue(start, end, lines, speaker))
    return cues


def webvtt(segments: Segments, options: CaptionOptions = CaptionOptions()) -> str:
    """Captions as WebVTT (``<track kind="captions">``); a speaker becomes a ``<v Speaker>`` voice span."""
    blocks: list[str] = []
    for i, c in enumerate(caption_cues(segments, options), start=1):
        text = "\n".join(_vtt_escape(line) for line in c.lines)
        if c.speaker:
            text = f"<v {_vtt_escape(c.speaker)}>{text}</v>"
        blocks.append(f"{i}\n{_timestamp(c.start_ms, '.')} --> {_timestamp(c.end_ms, '.')}\n{text}\n\n")
    return "WEBVTT\n\n" + "".join(blocks)


def srt(segments: Segments, options: CaptionOptions = CaptionOptions()) -> str:
    """Captions as SRT: 1-based numbers, comma milliseconds; a speaker as "Speaker: " before the first line."""
    blocks: list[str] = []
    for i, c in enumerate(caption_cues(segments, options), start=1):
        lines = list(c.lines)
        if c.speaker:
            lines[0] = f"{c.speaker}: {lines[0]}"
        blocks.append(f"{i}\n{_timestamp(c.start_ms, ',')} --> {_timestamp(c.end_ms, ',')}\n" + "\n".join(lines) + "\n\n")
    return "".join(blocks)


# -- plain text -------------------------------------------------------------------------------------


def text(segments: Segments, chapters: Chapters) -> str:
    """The chapter list (as :func:`chapter_list`, ready to paste), then the transcript under chapter headings.

    Each heading is "[time] Title"; each transcript line one segment's words that fall in that
    chapter (a segment across a boundary is split there at its word times). Without chapters, the
    transcript alone; a chapter without speech keeps its heading.
    """
    spans = _chapter_spans(chapters)
    hours = bool(spans) and spans[-1][0] >= 3_600_000
    parts: dict[int, list[str]] = {k: [] for k in range(max(len(spans), 1))}
    order = sorted(range(len(segments)), key=lambda i: _ms(segments[i].get("start"), f"segment {i + 1} start"))
    for i in order:
        line: list[str] = []
        current = None
        for w in _words(segments[i], i):
            mid = (w.start + w.end) * 500
            k = next((j for j, (_, e, _t) in enumerate(spans) if mid < e), len(spans) - 1) if spans else 0
            if current is not None and k != current and line:
                parts[current].append(" ".join(line))
                line = []
            current = k
            line.append(w.text)
        if current is not None and line:
            parts[current].append(" ".join(line))
    if not spans:
        return "".join(line + "\n" for line in parts[0])
    out = [chapter_list(chapters)]
    for k, (s, _, title) in enumerate(spans):
        out.append(f"\n[{_clock(0 if k == 0 else s // 1000, hours)}] {title}\n" + "".join(line + "\n" for line in parts[k]))
    return "".join(out)


Format = Callable[[Segments, Chapters], str]
# `vidx export --format NAME`: each takes (segments, chapters); "json" (everything) is the caller's.
FORMATS: dict[str, Format] = {
    "webvtt-chapters": lambda segments, chapters: webvtt_chapters(chapters),
    "webvtt": lambda segments, chapters: webvtt(segments),
    "srt": lambda segments, chapters: srt(segments),
    "text": text,
}
SUFFIXES: dict[str, str] = {"webvtt-chapters": ".vtt", "webvtt": ".vtt", "srt": ".srt", "text": ".txt"}
