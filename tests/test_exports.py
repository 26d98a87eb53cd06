"""Exports read back by real parsers: WebVTT (webvtt-py) and SRT (srt) captions and chapters, the chapter list, plain text."""

from __future__ import annotations

import html
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import srt as srt_lib
import webvtt as webvtt_lib

from search.exports import FORMATS, CaptionOptions, caption_cues, chapter_list, srt, text, webvtt, webvtt_chapters

# About 70 words of narration, with the pace of speech: ~0.2-0.5 s a word, a breath after each sentence.
NARRATION = ("Deer live in the woods at the edge of the town. In the morning they come out to eat the young leaves "
             "of the bushes, and they watch the road for cars. A big rabbit lives in a burrow under the old tree; "
             "it comes out when the deer have gone. Later the birds arrive, and the whole field is busy until "
             "the sun goes down behind the hills again.")


def _timed(sentence_text: str, start: float = 0.0) -> dict:
    words, t = [], start
    for i, w in enumerate(sentence_text.split()):
        d = 0.18 + 0.03 * (len(w) % 7) + (0.1 if i % 5 == 0 else 0.0)
        words.append([round(t, 3), round(t + d, 3), " " + w, 0.9])
        t += d + (0.35 if w.endswith(".") else 0.05)
    return {"start": words[0][0], "end": words[-1][1], "text": " " + sentence_text, "words": words}


def _ms(ts: Any) -> int:
    """A webvtt-py Timestamp in milliseconds (its *_in_seconds properties drop them)."""
    return ((ts.hours * 60 + ts.minutes) * 60 + ts.seconds) * 1000 + ts.milliseconds


def _td_ms(td: timedelta) -> int:
    return round(td.total_seconds() * 1000)


def _check_limits(cues: list, options: CaptionOptions = CaptionOptions()) -> None:
    prev_end = -1
    for c in cues:
        assert 1 <= len(c.lines) <= options.lines, c
        assert all(len(line) <= options.line_chars - (len(c.speaker) + 2 if c.speaker and i == 0 else 0)
                   for i, line in enumerate(c.lines)), c
        assert c.end_ms > c.start_ms >= prev_end, c
        prev_end = c.end_ms


def test_long_segment_recut_at_word_times_and_read_back() -> None:
    seg = _timed(NARRATION, start=12.0)
    assert seg["end"] - seg["start"] > 25  # one ASR segment far over any cue limit
    cues = caption_cues([seg])
    assert len(cues) >= 6
    _check_limits(cues)
    assert all(c.end_ms - c.start_ms <= 7000 for c in cues)
    starts = {round(w[0] * 1000) for w in seg["words"]}
    ends = {round(w[1] * 1000) for w in seg["words"]}
    assert all(c.start_ms in starts and c.end_ms in ends for c in cues)  # cut at word times, nowhere else
    assert " ".join(" ".join(c.lines) for c in cues).split() == NARRATION.split()
    # Balanced lines: a two-line cue is not one full line and a stub.
    two = [c for c in cues if len(c.lines) == 2]
    assert two and all(abs(len(c.lines[0]) - len(c.lines[1])) <= 12 for c in two)

    vtt = webvtt([seg])
    assert vtt.startswith("WEBVTT\n\n")
    parsed = webvtt_lib.from_string(vtt, strict=True).captions
    assert [(_ms(p.start_time), _ms(p.end_time)) for p in parsed] == [(c.start_ms, c.end_ms) for c in cues]
    assert [p.text for p in parsed] == ["\n".join(c.lines) for c in cues]
    assert re.search(r"\d\d:\d\d:\d\d\.\d\d\d --> ", vtt)

    subs = list(srt_lib.parse(srt([seg])))
    assert [s.index for s in subs] == list(range(1, len(cues) + 1))
    assert [(_td_ms(s.start), _td_ms(s.end)) for s in subs] == [(c.start_ms, c.end_ms) for c in cues]
    assert " ".join(s.content for s in subs).split() == NARRATION.split()
    assert re.search(r"^00:00:12,\d\d\d --> ", srt([seg]), re.M)


def test_cues_end_at_a_sentence_end_and_at_pauses() -> None:
    seg = _timed("The rabbit sat still for a while. Then it ran into the long grass by the stream and hid there.")
    first = caption_cues([seg])[0]
    assert " ".join(first.lines) == "The rabbit sat still for a while."  # not "... while. Then it ran"
    words = [[0.0, 0.3, " Wait", 0.9], [0.35, 0.6, " here.", 0.9], [3.0, 3.4, " Now", 0.9], [3.45, 3.8, " go.", 0.9]]
    cues = caption_cues([{"start": 0.0, "end": 3.8, "text": " Wait here. Now go.", "words": words}])
    assert [(c.start_ms, c.end_ms, c.lines) for c in cues] == [(0, 600, ("Wait here.",)), (3000, 3800, ("Now go.",))]


def test_segments_without_words_overlaps_punctuation_tokens_and_empty_ones() -> None:
    segs = [
        {"start": 5.0, "end": 9.0, "text": " Second, with no word times at all.", "words": None},
        {"start": 0.0, "end": 5.4, "text": " Hello, world.", "words": [[0.5, 1.0, " Hello", 0.9], [1.0, 1.05, ",", 0.5],
                                                                      [1.2, 1.6, " world", 0.9], [1.6, 5.4, ".", 0.4]]},
        {"start": 9.0, "end": 10.0, "text": "   ", "words": None},
        {"start": 10.0, "end": 11.0, "text": "", "words": [[10.0, 10.5, " ", 0.1]]},
    ]
    cues = caption_cues(segs)
    # Time order; "," and "." given as tokens of their own stay on their word; the empty segments are gone.
    assert [c.lines for c in cues] == [("Hello, world.",), ("Second, with no word times at all.",)]
    # The first segment ran past the second's start: it gives way, so the cues never overlap.
    assert (cues[0].start_ms, cues[0].end_ms, cues[1].start_ms, cues[1].end_ms) == (500, 5000, 5000, 9000)
    _check_limits(cues)
    assert webvtt([]) == "WEBVTT\n\n" and webvtt_lib.from_string(webvtt([])).captions == []
    assert srt([]) == "" and list(srt_lib.parse(srt(segs[2:]))) == []


def test_speakers_on_a_real_call_transcript(shared_media: Path) -> None:
    """phone_call.stm (two speakers, reference times): voices in WebVTT, "Name: " in SRT, times kept."""
    segs = []
    for line in (shared_media / "phone_call.stm").read_text().splitlines():
        _file, _chan, speaker, start, end, *words = line.split()
        segs.append({"start": float(start), "end": float(end), "text": " ".join(words), "words": None,
                     "speaker": speaker})
    cues = caption_cues(segs)
    _check_limits(cues)
    # Every cue is inside its segment: none is stretched over the gaps between turns.
    assert all(any(round(s["start"] * 1000) <= c.start_ms and c.end_ms <= round(s["end"] * 1000) for s in segs)
               for c in cues)
    parsed = webvtt_lib.from_string(webvtt(segs), strict=True).captions
    assert [p.voice for p in parsed] == [c.speaker for c in cues]
    assert parsed[0].voice == "Diane" and parsed[1].voice == "Sheila"
    assert [(_ms(p.start_time), _ms(p.end_time)) for p in parsed] == [(6680, 7160), (7634, 8155)] + \
        [(c.start_ms, c.end_ms) for c in cues[2:]]
    subs = list(srt_lib.parse(srt(segs)))
    assert subs[0].content == "Diane: Hello?" and subs[1].content == "Sheila: Hello?"
    spoken = " ".join(re.sub(r"^(Diane|Sheila): ", "", s.content) for s in subs).split()
    assert spoken == " ".join(s["text"] for s in segs).split()
    assert all(len(line) <= 42 for s in subs for line in s.content.split("\n"))


HOSTILE = ["<script>alert('x')</script>", "before --> after", "Tom & Jerry", "two\n\nlines <b>bold</b>", ""]


def test_chapter_track_escapes_hostile_titles() -> None:
    chapters = [{"start": 60.0 * i, "end": 60.0 * (i + 1), "title": t, "keywords": [], "summary": ""}
                for i, t in enumerate(HOSTILE)]
    vtt = webvtt_chapters(chapters)
    parsed = webvtt_lib.from_string(vtt, strict=True).captions
    assert len(parsed) == len(HOSTILE)
    for p, title in zip(parsed, HOSTILE):
        assert "<" not in p.raw_text and "-->" not in p.raw_text and "\n" not in p.raw_text
        assert html.unescape(p.raw_text) == (" ".join(title.split()) or "Chapter 5")
    assert vtt.count("-->") == len(HOSTILE)  # only the timing lines
    assert [(_ms(p.start_time), _ms(p.end_time)) for p in parsed] == [(60000 * i, 60000 * (i + 1)) for i in range(5)]
    # Captions are escaped the same way.
    cap = webvtt([{"start": 0, "end": 2, "text": "a <i>tag</i> & --> arrow", "words": None}])
    assert html.unescape(webvtt_lib.from_string(cap).captions[0].raw_text) == "a <i>tag</i> & --> arrow"
    assert cap.count("-->") == 1
    # SRT has no escapes: the text goes as it is and reads back as it is.
    sub = list(srt_lib.parse(srt([{"start": 0, "end": 2, "text": "a <i>tag</i> & --> arrow", "words": None}])))
    assert [s.content for s in sub] == ["a <i>tag</i> & --> arrow"]


def test_chapter_times_hours_and_overlaps() -> None:
    chapters = [{"start": 3723.4567, "end": 7200.0, "title": "Late"}, {"start": 0.0, "end": 3723.5, "title": "Early"}]
    parsed = webvtt_lib.from_string(webvtt_chapters(chapters), strict=True).captions
    # Sorted, and the overlap (3723.457-3723.5) given to one chapter only; times to the millisecond.
    assert [(p.start, p.end, p.text) for p in parsed] == [("00:00:00.000", "01:02:03.500", "Early"),
                                                         ("01:02:03.500", "02:00:00.000", "Late")]
    with pytest.raises(ValueError, match="chapter 1 to end after it starts"):
        webvtt_chapters([{"start": 5.0, "end": 4.0, "title": "x"}])
    with pytest.raises(ValueError, match="number of seconds for chapter 1 start"):
        chapter_list([{"start": "soon", "end": 4.0, "title": "x"}])
    with pytest.raises(ValueError, match=r"\[start, end, word, prob\]"):
        srt([{"start": 0, "end": 1, "text": "x", "words": [[0.0, "oops"]]}])
    assert webvtt_chapters([]) == "WEBVTT\n\n" and webvtt_lib.from_string(webvtt_chapters([])).captions == []


def test_chapter_list_follows_the_paste_rules() -> None:
    short = [{"start": 0.4, "end": 65.9, "title": "Intro"}, {"start": 65.9, "end": 330.0, "title": "The deer"},
             {"start": 330.0, "end": 3599.0, "title": "Rabbits\nand birds"}, {"start": 3599.0, "end": 3600, "title": ""}]
    assert chapter_list(short) == "00:00 Intro\n01:05 The deer\n05:30 Rabbits and birds\n59:59 Chapter 4\n"
    long = [{"start": 0.0, "end": 600.0, "title": "A"}, {"start": 600.0, "end": 3723.0, "title": "B"},
            {"start": 3723.9, "end": 40000.0, "title": "C"}]
    assert chapter_list(long) == "0:00:00 A\n0:10:00 B\n1:02:03 C\n"
    assert chapter_list([]) == ""


def test_text_is_the_chapter_list_then_the_transcript_by_chapter() -> None:
    words = [[8.0, 8.5, " end", 0.9], [8.6, 9.4, " of", 0.9], [9.5, 9.9, " one.", 0.9], [10.2, 10.6, " Start", 0.9],
             [10.7, 11.2, " of", 0.9], [11.3, 11.9, " two.", 0.9]]
    segs = [{"start": 1.0, "end": 3.0, "text": " First words.", "words": None},
            {"start": 8.0, "end": 11.9, "text": " end of one. Start of two.", "words": words}]
    chapters = [{"start": 0.0, "end": 10.0, "title": "One"}, {"start": 10.0, "end": 20.0, "title": "Two"},
                {"start": 20.0, "end": 30.0, "title": "Quiet"}]
    assert text(segs, chapters) == ("00:00 One\n00:10 Two\n00:20 Quiet\n\n"
                                    "[00:00] One\nFirst words.\nend of one.\n\n"
                                    "[00:10] Two\nStart of two.\n\n"
                                    "[00:20] Quiet\n")
    assert text(segs, []) == "First words.\nend of one. Start of two.\n"
    assert text([], []) == ""
    assert set(FORMATS) == {"webvtt-chapters", "webvtt", "srt", "text"}
    assert FORMATS["text"](segs, chapters) == text(segs, chapters)
    assert FORMATS["srt"](segs, chapters) == srt(segs)
    assert FORMATS["webvtt"](segs, chapters) == webvtt(segs)
    assert FORMATS["webvtt-chapters"](segs, chapters) == webvtt_chapters(chapters)


def test_caption_options() -> None:
    seg = _timed(NARRATION)
    narrow = CaptionOptions(line_chars=20, lines=1, max_seconds=3.0)
    cues = caption_cues([seg], narrow)
    _check_limits(cues, narrow)
    assert all(c.end_ms - c.start_ms <= 3000 for c in cues)
    assert " ".join(" ".join(c.lines) for c in cues).split() == NARRATION.split()
    with pytest.raises(ValueError, match="line_chars >= 10"):
        CaptionOptions(line_chars=3)
