"""Transcript sentences at word times: Whisper segments cut at sentence ends, each sentence verbatim with its times."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’)\]]*$")
# "Mr. Smith", "e.g. this": a full stop that does not end a sentence.
_ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "prof", "st", "sr", "jr", "vs", "etc", "e.g", "i.e", "fig", "mt",
                            "approx", "dept", "inc", "ltd", "u.s", "a.m", "p.m"})
# An unpunctuated transcript still gets sentences: a segment end closes one after this pause or this many words.
_PAUSE_S = 1.5
_MAX_WORDS = 40
_WORD = re.compile(r"[^\W_]+")


@dataclass
class Sentence:
    start: float
    end: float
    text: str

    @property
    def words(self) -> int:
        return len(self.text.split())


def split_sentences(segments: Sequence[tuple[float, float, str, list | None]]) -> list[Sentence]:
    """Whisper segments (start, end, text, words) -> sentences, cut after . ! ? at the times of the words.

    A segment may hold several sentences and a sentence may run over several segments: the words are
    one stream. A sentence's text is cut from its segments' text at its words (so "4%" stays "4%"), its
    times are those of its first and last word. A segment without word times has its words' times spread
    over its span by character count. A transcript without punctuation would make one endless sentence,
    so a segment end also closes a sentence after a pause of ``_PAUSE_S`` or once it holds ``_MAX_WORDS`` words.
    """
    stream: list[_Word] = []
    for index, seg in enumerate(segments):
        if len(seg) != 4:
            raise ValueError(f"a segment must be (start, end, text, words), got {seg!r}")
        start, end, text, words = seg
        timed = _segment_words(index, float(start), float(end), str(text or ""), words)
        if timed:
            timed[-1].segment_end = True
        stream.extend(timed)
    texts = [str(seg[2] or "") for seg in segments]
    out: list[Sentence] = []
    pending: list[_Word] = []
    for i, word in enumerate(stream):
        pending.append(word)
        following = stream[i + 1] if i + 1 < len(stream) else None
        close = following is None or _ends_sentence(word.text, following.text)
        if not close and word.segment_end and following is not None:
            close = following.start - word.end >= _PAUSE_S or len(pending) >= _MAX_WORDS
        if close:
            out.append(Sentence(start=pending[0].start, end=max(pending[-1].end, pending[0].start),
                                text=_sentence_text(pending, texts)))
            pending = []
    return out


@dataclass
class _Word:
    start: float
    end: float
    text: str
    segment: int
    span: tuple[int, int] | None  # where the word lies in its segment's text, if it could be found there
    segment_end: bool = False


def _segment_words(index: int, start: float, end: float, text: str, words: list | None) -> list[_Word]:
    """One segment's words: its timed words, or its text's words with times spread by characters."""
    if words:
        out, pos, aligned = [], 0, True
        for w in words:
            if len(w) < 3:
                raise ValueError(f"a word must be [start, end, word, prob], got {w!r}")
            word = str(w[2]).strip()
            if not word:
                continue
            at = text.find(word, pos) if aligned else -1
            aligned = at >= 0
            out.append(_Word(float(w[0]), float(w[1]), word, index, (at, at + len(word)) if aligned else None))
            if aligned:
                pos = at + len(word)
        if not aligned:  # words and text disagree: the words alone are the transcript
            for w in out:
                w.span = None
        return out
    out, total = [], len(text)
    span = max(end - start, 0.0)
    for m in re.finditer(r"\S+", text):
        out.append(_Word(start + span * m.start() / max(total, 1), start + span * m.end() / max(total, 1),
                         m.group(), index, (m.start(), m.end())))
    return out


def _sentence_text(words: list[_Word], texts: list[str]) -> str:
    """The transcript's own text from the first to the last word, segment by segment, joined by spaces."""
    parts: list[str] = []
    i = 0
    while i < len(words):
        j = i
        while j + 1 < len(words) and words[j + 1].segment == words[i].segment:
            j += 1
        first, last = words[i], words[j]
        if first.span is not None and last.span is not None:
            parts.append(texts[first.segment][first.span[0]:last.span[1]].strip())
        else:
            parts.append(" ".join(w.text for w in words[i:j + 1]))
        i = j + 1
    return " ".join(p for p in parts if p)


def _ends_sentence(word: str, following: str | None) -> bool:
    if not _SENTENCE_END.search(word):
        return False
    if word.rstrip("\"'”’)]").endswith((".", "…")) and not word.rstrip("\"'”’)]").endswith(".."):
        stem = word.rstrip("\"'”’)].").lower()
        if stem in _ABBREVIATIONS or (len(stem) == 1 and stem.isalpha()):
            return False  # "Mr. Dashwood", "J. R. R. Tolkien"
        if following is not None and following[:1].islower():
            return False  # a full stop followed by lower case is an abbreviation, not an end
    return True
