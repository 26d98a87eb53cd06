"""Chapter text: titles, keywords and summaries from a chapter's own transcript or on-screen tags, never invented."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from indexer.sentences import Sentence, split_sentences  # noqa: F401 - split_sentences is part of this module's interface

logger = logging.getLogger(__name__)


class Encoder(Protocol):
    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


class MemoEncoder:
    """An encoder that encodes each distinct string once: the chapters of one file say many phrases again.

    Wrap the encoder per file (or per batch of files): it keeps every vector it made until it is dropped.
    """

    def __init__(self, encoder: Encoder) -> None:
        self.encoder = encoder
        self._seen: dict[str, np.ndarray] = {}

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("encode() takes a sequence of strings, not a single string")
        missing = list(dict.fromkeys(t for t in texts if t not in self._seen))
        if missing:
            self._seen.update(zip(missing, np.asarray(self.encoder.encode(missing), np.float32)))
        if not texts:
            dim = next(iter(self._seen.values())).shape[0] if self._seen else 0
            return np.zeros((0, dim), np.float32)
        return np.stack([self._seen[t] for t in texts])


@dataclass(frozen=True)
class TextOptions:
    keywords: int = 5
    summary_sentences: int = 2
    # MMR trade-off, relevance vs novelty: 0.6 keeps the most central first and still avoids near-repeats.
    mmr_lambda: float = 0.6
    keyword_lambda: float = 0.6
    # Encoding candidates is the whole cost (2-4 ms each on 2 shared cores): only this many per chapter reach the
    # encoder, picked by a free pre-score (frequency weighted by the centrality of the sentences they are in).
    max_candidates: int = 20
    max_ngram: int = 3
    # Sentences shorter than this ("Well, good luck with that.") are not used as a summary when longer ones exist.
    min_sentence_words: int = 4
    # A summary stops adding sentences past this many words (its first sentence always stays).
    max_summary_words: int = 60
    # Fewer transcript words than this and the chapter counts as without speech, if it has tags to show.
    min_speech_words: int = 8
    # A tag is on screen when its mean probability over the chapter's clips reaches this.
    tag_min_mass: float = 0.08
    title_tags: int = 2
    summary_tags: int = 5
    title_words: int = 6

    def __post_init__(self) -> None:
        for name in ("keywords", "summary_sentences", "max_candidates", "max_ngram", "title_tags", "summary_tags",
                     "title_words"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("mmr_lambda", "keyword_lambda"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 < self.tag_min_mass <= 1.0:
            raise ValueError(f"tag_min_mass must be in (0, 1], got {self.tag_min_mass}")


@dataclass
class ChapterText:
    title: str
    keywords: list[str]
    summary: str
    # The summary's sentences with their times (speech); empty when the summary comes from tags or nothing.
    sentences: list[Sentence] = field(default_factory=list)
    source: str = "none"  # "speech" | "screen" | "none"


# The only words a description may hold that are neither said nor tagged: the fixed frames of screen/none text.
TEMPLATE_WORDS = frozenset({"on", "screen", "no", "speech", "untitled"})

# Compact English stop words plus the fillers of unscripted speech; a keyphrase may not start or end with one.
STOP_WORDS = frozenset("""
a about above actually after again against ago ah all almost along already alright also although always am among an
and another any anybody anyone anything anyway are around as ask asked at away back basically be became because
become been before began being below best better between both but by bye came can cannot certainly clearly come
comes coming could definitely did do does doing done down during each eight eighteen either eleven else enough er
especially etc even ever every everybody everyone everything exactly far feel few fifteen fifty first five for forty
four from further generally get gets getting give given go goes going gone gonna good got gotta great had has have
having he hear heard hello her here hers herself hey hi him himself his hmm how however huh hundred i if in indeed
instead into is it its itself just keep kind kinda know known last least less let like likely literally little look
looking looks lot lots made make makes making many may maybe me mean means mhm might mine mm more most mostly much
must my myself need never new next nine nineteen ninety no nobody none nope nor not nothing now obviously of off
often oh ok okay on once one ones only onto or other others otherwise our ours ourselves out over own per perhaps
please pretty probably put quite rather really right said same say saying says second see seem seemed seems seven
seventy several shall she should simply since six sixteen sixty so some somebody someone something sometimes
somewhat soon sort sorta still such sure take taken talk talking tell ten than thank thanks that the their theirs
them themselves then there these they thing things think third thirteen thirty this those though thought thousand
three through thus to together told too took totally toward towards truly try twelve twenty two uh um under unless
until up upon us use used using usually very via wanna want wanted was way ways we well went were what whatever when
where whether which while who whole whom whose why will with within without would yeah yep yes yet you your yours
yourself yourselves
""".split())

# Inside a three-word phrase these join its ends ("king of france", "salt and pepper"); other stop words break it.
# Articles are no joiners: "toss the spaghetti", "add the pasta" are a verb and its object, not names of things.
_JOINERS = frozenset({"and", "de", "for", "in", "of", "on"})
_OBJECT_STARTS = frozenset({"a", "an", "the", "their", "its", "his", "her", "our", "my", "your", "this", "these",
                            "those", "every", "each", "some", "more", "you", "it", "them", "him", "us", "me"})
_SUBJECTS = frozenset({"i", "you", "we", "they", "he", "she", "it", "who", "which", "that"})
# Words kept lower case inside a title ("Capital in the 21st Century").
_TITLE_SMALL = frozenset({"a", "an", "and", "as", "at", "by", "de", "for", "from", "in", "of", "on", "or", "the", "to",
                          "with"})
_TOKEN = re.compile(r"[^\W_]+(?:['’][^\W_]+)*(?:-[^\W_]+(?:['’][^\W_]+)*)*")
_WORD = re.compile(r"[^\W_]+")
_CONTRACTION = re.compile(r"^(.*?)['’](s|t|re|ve|ll|d|m)$")


# ---------------------------------------------------------------------------------------------------------- ranking

def mmr(vectors: np.ndarray, query: np.ndarray, k: int, lam: float) -> list[int]:
    """Maximal marginal relevance: up to k row indices, in pick order, each like ``query`` and unlike those picked."""
    vectors = np.asarray(vectors, np.float32)
    if vectors.ndim != 2:
        raise ValueError(f"vectors must be (n, d), got shape {vectors.shape}")
    query = np.asarray(query, np.float32).reshape(-1)
    if len(vectors) and query.shape[0] != vectors.shape[1]:
        raise ValueError(f"query must have {vectors.shape[1]} values, got {query.shape[0]}")
    return _mmr(vectors @ query if len(vectors) else np.zeros(0, np.float32), vectors, k, lam)


def _mmr(relevance: np.ndarray, vectors: np.ndarray, k: int, lam: float,
         allowed: Callable[[int, list[int]], bool] | None = None) -> list[int]:
    """MMR over given relevance scores; ``allowed(i, picked)`` may veto a row (it is then never picked)."""
    n = len(relevance)
    picked: list[int] = []
    if n == 0 or k < 1:
        return picked
    sims = vectors @ vectors.T
    available = np.ones(n, bool)
    redundancy = np.full(n, -np.inf, np.float32)
    while len(picked) < k and available.any():
        score = lam * relevance - (1.0 - lam) * np.where(np.isfinite(redundancy), redundancy, 0.0)
        score = np.where(available, score, -np.inf)
        i = int(np.argmax(score))
        available[i] = False
        if allowed is not None and not allowed(i, picked):
            continue
        picked.append(i)
        redundancy = np.maximum(redundancy, sims[i])
    return picked


def _unit(v: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(v))
    return (v / norm).astype(np.float32) if norm > 0 else v.astype(np.float32)


def _centroid(vectors: np.ndarray) -> np.ndarray:
    """Unit mean of the non-zero rows (a sentence with no tokens has a zero vector); zeros if there are none."""
    live = vectors[np.linalg.norm(vectors, axis=1) > 0] if len(vectors) else vectors
    return _unit(live.mean(0)) if len(live) else np.zeros(vectors.shape[1] if vectors.ndim == 2 else 0, np.float32)


# ---------------------------------------------------------------------------------------------------------- keyphrases

@dataclass
class _Candidate:
    tokens: tuple[str, ...]  # lower case, as said
    norm: tuple[str, ...]  # singular forms, for merging "theory" and "theories"
    count: float = 0.0
    surface: dict[tuple[str, ...], int] = field(default_factory=dict)


def _is_stop(token: str) -> bool:
    t = token.lower()
    if t in STOP_WORDS or not any(c.isalpha() for c in t) or len(t) < 2:
        return True
    m = _CONTRACTION.match(t)
    # "wouldn't", "we're", "who's" are function words; "Piketty's" is a name.
    return bool(m and (m.group(2) != "s" or m.group(1) in STOP_WORDS))


def _past_tense(token: str) -> bool:
    """Most likely a verb's past form ("saved"), not a noun ending in -ed ("bed", "seed", "hundred")."""
    return len(token) > 4 and token.endswith("ed") and not token.endswith(("eed", "dred"))


def _singular(token: str) -> str:
    if len(token) > 4 and token.endswith("ies"):
        return token[:-3] + "y"
    if len(token) > 4 and token.endswith(("ses", "xes", "zes", "ches", "shes")):
        return token[:-2]
    if len(token) > 3 and token.endswith("s") and not token.endswith(("ss", "us", "is", "'s", "’s")):
        return token[:-1]
    return token


def _runs(text: str) -> list[list[str]]:
    """The text's tokens in runs that no punctuation interrupts (an n-gram never spans ", " or " - ")."""
    runs: list[list[str]] = [[]]
    last = 0
    for m in _TOKEN.finditer(text):
        if runs[-1] and text[last:m.start()].strip():
            runs.append([])
        runs[-1].append(m.group())
        last = m.end()
    return [r for r in runs if r]


def _candidates(texts: Sequence[str], weights: np.ndarray, max_ngram: int) -> tuple[list[_Candidate], set[str]]:
    """Distinct n-grams (1..max_ngram tokens, no stop word at either end) with weighted counts, and proper nouns."""
    found: dict[tuple[str, ...], _Candidate] = {}
    proper: set[str] = set()  # said capitalised somewhere other than at a sentence start: kept so in keywords
    for text, weight in zip(texts, weights):
        for r, run in enumerate(_runs(text)):
            for j, tok in enumerate(run):
                if (r or j) and tok[:1].isupper() and tok.lower() != "i":
                    proper.add(tok.lower())
            stops = [_is_stop(t) for t in run]
            # "New Jersey": a stop word said capitalised mid-sentence may start or end a name of several words.
            named = [s and (r or j) > 0 and t[:1].isupper() and t.lower() != "i" and not _CONTRACTION.match(t.lower())
                     for j, (t, s) in enumerate(zip(run, stops))]
            for n in range(1, max_ngram + 1):
                for j in range(len(run) - n + 1):
                    # A capitalised stop word may stand at an edge only next to a capitalised word inside the
                    # phrase: "New Jersey" yes, "Diane in New" (a name cut in half) no.
                    edges = ((j, j + 1), (j + n - 1, j + n - 2))
                    if any(stops[e] and not (n > 1 and named[e] and run[inner_][:1].isupper())
                           for e, inner_ in edges):
                        continue
                    inner = run[j + 1:j + n - 1]
                    if any(stops[j + 1 + m] and inner[m].lower() not in _JOINERS for m in range(len(inner))):
                        continue
                    surface = tuple(t.lower() for t in run[j:j + n])
                    if n > 1 and _past_tense(surface[-1]):
                        continue  # "goalkeeper saved", "Galileo discovered": a subject and its verb
                    # No tagger at hand, so the neighbours tell a verb: it ends a phrase when an object follows
                    # ("corals build | their skeletons", "debugger lets | you") and starts one after a subject.
                    if j + n < len(run) and run[j + n].lower() in _OBJECT_STARTS:
                        continue
                    if j > 0 and run[j - 1].lower() in _SUBJECTS:
                        continue
                    norm = tuple(_singular(t) for t in surface)
                    cand = found.setdefault(norm, _Candidate(tokens=surface, norm=norm))
                    cand.count += float(weight)
                    cand.surface[surface] = cand.surface.get(surface, 0) + 1
    for cand in found.values():
        cand.tokens = max(cand.surface.items(), key=lambda kv: (kv[1], -len(" ".join(kv[0]))))[0]
    return list(found.values()), proper


def _prescore(cands: list[_Candidate]) -> np.ndarray:
    """Free ranking before encoding: a phrase's own weighted count plus the mean weighted count of its words."""
    unigram = {c.norm[0]: c.count for c in cands if len(c.norm) == 1}
    return np.asarray([c.count + sum(unigram.get(t, 0.0) for t in c.norm if not _is_stop(t)) /
                       max(sum(1 for t in c.norm if not _is_stop(t)), 1) for c in cands], np.float64)


def _overlaps(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """True if the phrases share a content word (singular forms): "wealth tax" and "global wealth tax", but also
    "coral reefs" and "reef sharks": five keywords that all say "reef" describe less than five that do not."""
    return bool({t for t in a if not _is_stop(t)} & {t for t in b if not _is_stop(t)})


def _display(tokens: tuple[str, ...], proper: set[str]) -> str:
    return " ".join(t.capitalize() if t in proper and t[:1].isalpha() else t for t in tokens)


_MIN_RELATIVE_RELEVANCE = 0.4
_PART_MARGIN = 0.01


def keyphrases(texts: Sequence[str], target: np.ndarray, encoder: Encoder, k: int, *,
               text_vectors: np.ndarray | None = None, lam: float = 0.6, max_candidates: int = 20,
               max_ngram: int = 3) -> list[str]:
    """KeyBERT-style keyphrases: 1-3 word n-grams of ``texts``, ranked by cosine to ``target``, diversified by MMR.

    Each distinct candidate is encoded once in one batch; at most ``max_candidates`` are encoded, chosen by
    how often they (and their words) are said, each time weighted by how central its sentence is (with
    ``text_vectors``, the texts' unit vectors). No two chosen phrases share a word (singular and plural count as one).
    Words keep the case they were said in only when they are proper nouns (capitalised mid-sentence).
    """
    return [phrase for phrase, _ in _scored_keyphrases(texts, target, encoder, k, text_vectors, lam, max_candidates,
                                                       max_ngram)]


def _scored_keyphrases(texts: Sequence[str], target: np.ndarray, encoder: Encoder, k: int,
                       text_vectors: np.ndarray | None, lam: float, max_candidates: int,
                       max_ngram: int) -> list[tuple[str, float]]:
    """keyphrases(), each with how well it names the whole: relevance times log(1 + how much it is said)."""
    if isinstance(texts, str):
        raise TypeError("keyphrases() takes a sequence of texts, not a single string")
    if k < 1:
        return []
    target = _unit(np.asarray(target, np.float32).reshape(-1))
    if text_vectors is not None and len(text_vectors) == len(texts) and len(texts):
        weights = np.clip(np.asarray(text_vectors, np.float32) @ target, 0.05, None)
    else:
        weights = np.ones(len(texts), np.float32)
    cands, proper = _candidates(texts, weights, max_ngram)
    if not cands:
        return []
    pre = _prescore(cands)
    order = np.argsort(-pre, kind="stable")[:max_candidates]
    cands = [cands[i] for i in order]
    vectors = encoder.encode([" ".join(c.tokens) for c in cands])
    relevance = vectors @ target if np.linalg.norm(target) > 0 else pre[order].astype(np.float32)

    # A phrase about as relevant without its last word (within _PART_MARGIN) loses to that shorter phrase: the
    # last word adds nothing and is most often a verb no tagger told apart ("political philosophy develops").
    # Only the last word: without its first, "political philosophy" would lose to "philosophy"; and a wide
    # margin turns "global wealth tax" into "global wealth".
    said = relevance.astype(np.float32)
    relevance = said.copy()
    index = {c.norm: j for j, c in enumerate(cands)}
    for i, c in enumerate(cands):
        j = index.get(c.norm[:-1]) if len(c.norm) > 1 else None
        if j is not None and said[j] >= said[i] - _PART_MARGIN:
            relevance[i] = -1.0
    # MMR's novelty term would, once the topic's phrases are taken, reach for one about something else
    # entirely; a phrase far less relevant than the best is no keyword of this chapter.
    floor = _MIN_RELATIVE_RELEVANCE * float(said.max())

    def allowed(i: int, picked: list[int]) -> bool:
        return relevance[i] >= floor and not any(_overlaps(cands[i].norm, cands[j].norm) for j in picked)

    picked = _mmr(relevance, vectors, k, lam, allowed)
    return [(_display(cands[i].tokens, proper), float(said[i]) * float(np.log1p(pre[order][i]))) for i in picked]


# ---------------------------------------------------------------------------------------------------------- summaries

def _eligible(sentences: Sequence[Sentence], min_words: int, max_words: int) -> list[int]:
    """Rows worth a summary: whole sentences of a readable length, else any non-fragment, else all."""
    for ok in (lambda s: min_words <= s.words <= max_words, lambda s: s.words >= min_words, lambda s: s.words > 0):
        rows = [i for i, s in enumerate(sentences) if ok(s)]
        if rows:
            return rows
    return []


def summarize_sentences(sentences: Sequence[Sentence], vectors: np.ndarray, k: int, lam: float = 0.6, *,
                        min_words: int = 4, max_words: int = 60) -> list[Sentence]:
    """Up to k transcript sentences, central to the passage (cosine to its centroid) and unlike each other (MMR).

    Returned in time order, unchanged (verbatim text, own times). Fragments under ``min_words`` are used only
    when nothing longer was said; past the first, sentences stop once the summary would exceed ``max_words``.
    """
    vectors = np.asarray(vectors, np.float32)
    if len(vectors) != len(sentences):
        raise ValueError(f"need one vector per sentence, got {len(vectors)} for {len(sentences)}")
    rows = _eligible(sentences, min_words, max_words)
    if not rows or k < 1:
        return []
    centre = _centroid(vectors)
    block = vectors[rows]
    chosen: list[int] = []
    words = 0
    for j in _mmr(block @ centre, block, len(rows), lam):
        s = sentences[rows[j]]
        if chosen and words + s.words > max_words:
            continue
        chosen.append(rows[j])
        words += s.words
        if len(chosen) == k:
            break
    return [sentences[i] for i in sorted(chosen)]


def file_summary_sentences(sentences: Sequence[Sentence], vectors: np.ndarray, k: int, lam: float = 0.6, *,
                           spans: Sequence[tuple[float, float]] | None = None, min_words: int = 4,
                           max_words: int = 60) -> list[Sentence]:
    """A whole file's summary: up to k central, non-redundant sentences, in time order.

    With ``spans`` (the chapters' (start, end)), each pick comes from a chapter not yet used while any is
    left, so a summary covers the file rather than its longest chapter.
    """
    vectors = np.asarray(vectors, np.float32)
    if len(vectors) != len(sentences):
        raise ValueError(f"need one vector per sentence, got {len(vectors)} for {len(sentences)}")
    if not spans:
        return summarize_sentences(sentences, vectors, k, lam, min_words=min_words, max_words=max_words)
    rows = _eligible(sentences, min_words, max_words)
    if not rows or k < 1:
        return []
    group = [_span_of((sentences[i].start + sentences[i].end) / 2, spans) for i in rows]
    block = vectors[rows]
    used: set[int] = set()

    def allowed(j: int, picked: list[int]) -> bool:
        # Veto only while some unused chapter still has an eligible sentence.
        if group[j] in used and any(g not in used for g in group):
            return False
        used.add(group[j])
        return True

    # Vetoed rows are dropped from this pass, so a second pass without the rule fills what is left.
    picked = _mmr(block @ _centroid(vectors), block, k, lam, allowed)
    if len(picked) < k:
        rest = [j for j in range(len(rows)) if j not in picked]
        sub = block[rest]
        picked += [rest[j] for j in _mmr(sub @ _centroid(vectors), sub, k - len(picked), lam)]
    return [sentences[rows[j]] for j in sorted(picked)]


def _span_of(t: float, spans: Sequence[tuple[float, float]]) -> int:
    for i, (lo, hi) in enumerate(spans):
        if lo <= t < hi:
            return i
    return len(spans) - 1 if spans and t >= spans[-1][1] else 0


# ---------------------------------------------------------------------------------------------------------- tags

def clean_tag(name: str) -> str:
    """An ImageNet class name as a person says it: "impala (antelope)" -> "impala", "tabby, tabby cat" -> "tabby".

    The first of synonyms after "," or " / "; of "A or B" the first when it is a name by itself ("red wolf or
    maned wolf", "spiral or coil"), the whole when "or" shares a noun ("traffic or street sign").
    """
    name = re.sub(r"\s*\(.*?\)\s*", " ", str(name).split(",")[0].split(" / ")[0]).strip()
    first, sep, second = name.partition(" or ")
    if sep and (len(first.split()) > 1 or len(second.split()) == 1):
        return first.strip()
    return name


def screen_tags(concepts: Sequence[Sequence[Sequence[Any]]], min_mass: float) -> list[tuple[str, float]]:
    """Tags on screen over a chapter: mean probability per cleaned name over its clips, those reaching ``min_mass``.

    A clip without tags counts as showing nothing, so a name must be seen across the chapter, not in one clip.
    """
    mass: dict[str, float] = {}
    clips = 0
    for tags in concepts:
        clips += 1
        seen: dict[str, float] = {}
        for tag in tags or ():
            if len(tag) < 2:
                raise ValueError(f"a concept tag must be [name, prob], got {tag!r}")
            name = clean_tag(tag[0])
            if name:  # synonyms that clean to one name ("crane" the bird and the machine) add up
                seen[name] = seen.get(name, 0.0) + float(tag[1])
        for name, p in seen.items():
            mass[name] = mass.get(name, 0.0) + p
    if not clips:
        return []
    ranked = sorted(((n, m / clips) for n, m in mass.items()), key=lambda kv: (-kv[1], kv[0]))
    return [(n, m) for n, m in ranked if m >= min_mass]


# ---------------------------------------------------------------------------------------------------------- chapters

def title_case(phrase: str) -> str:
    """Capitalise each word's first letter except small joining words inside; other letters stay as said ("NASA")."""
    words = phrase.split()
    return " ".join(w if (0 < i < len(words) - 1 and w.lower() in _TITLE_SMALL) else w[:1].upper() + w[1:]
                    for i, w in enumerate(words))


# A phrase of several words names a thing more exactly than one word said a little more often.
_TITLE_WORD_BONUS = 0.3


def _title(scored: list[tuple[str, float]], max_words: int) -> str:
    # The keyphrase both on topic and said most names the chapter (by relevance alone "spaghetti cooks" beat
    # "tomato sauce"); a single word alone is vague, so the runner-up joins it after a comma (punctuation, not
    # an invented "and"). Cut to max_words, whole phrases only.
    ranked = sorted(scored, key=lambda ps: -ps[1] * (1.0 + _TITLE_WORD_BONUS * (len(ps[0].split()) - 1)))
    parts = [p for p, _ in ranked[:2 if len(ranked[0][0].split()) == 1 else 1]]
    if len(parts) > 1 and sum(len(p.split()) for p in parts) > max_words:
        parts = parts[:1]
    return ", ".join(title_case(p) for p in parts)


def describe_chapter(sentences: list[Sentence], sentence_vectors: np.ndarray | None,
                     concepts: Sequence[Sequence[Sequence[Any]]], encoder: Encoder,
                     options: TextOptions | None = None) -> ChapterText:
    """A chapter's title, keywords and summary from its sentences (speech) or, without speech, its on-screen tags.

    Every word of the result is a word of the chapter's transcript, of its tags, or of TEMPLATE_WORDS.
    ``sentence_vectors``: the sentences' unit vectors (None: encoded here); ``concepts``: per clip, [[name, prob], ...].
    """
    options = options or TextOptions()
    words = sum(s.words for s in sentences)
    tags = screen_tags(concepts, options.tag_min_mass)
    if sentences and (words >= options.min_speech_words or not tags):
        return _from_speech(sentences, sentence_vectors, encoder, options)
    if tags:
        names = [n for n, _ in tags]
        lead = "" if words else "No speech. "  # a few words were said: "No speech" would be false
        return ChapterText(title="On screen: " + ", ".join(names[:options.title_tags]),
                           keywords=names[:options.keywords],
                           summary=lead + "On screen: " + ", ".join(names[:options.summary_tags]) + ".",
                           sentences=[], source="screen")
    return ChapterText(title="Untitled", keywords=[], summary="", sentences=[], source="none")


def _from_speech(sentences: list[Sentence], vectors: np.ndarray | None, encoder: Encoder,
                 options: TextOptions) -> ChapterText:
    if vectors is None:
        vectors = encoder.encode([s.text for s in sentences])
    vectors = np.asarray(vectors, np.float32)
    if vectors.ndim != 2 or len(vectors) != len(sentences):
        raise ValueError(f"need one vector per sentence, got shape {vectors.shape} for {len(sentences)} sentences")
    target = _centroid(vectors)
    if not np.any(target):  # every sentence encoded to zero (no tokens): rank against the text as a whole
        target = _unit(encoder.encode([" ".join(s.text for s in sentences)])[0])
    scored = _scored_keyphrases([s.text for s in sentences], target, encoder, options.keywords, vectors,
                                options.keyword_lambda, options.max_candidates, options.max_ngram)
    keywords = [phrase for phrase, _ in scored]
    picked = summarize_sentences(sentences, vectors, options.summary_sentences, options.mmr_lambda,
                                 min_words=options.min_sentence_words, max_words=options.max_summary_words)
    title = _title(scored, options.title_words) if keywords else _short_title(picked or sentences,
                                                                                 options.title_words)
    return ChapterText(title=title, keywords=keywords, summary=" ".join(s.text for s in picked),
                       sentences=picked, source="speech")


def _short_title(sentences: Sequence[Sentence], max_words: int) -> str:
    """Only stop words were said ("Yes. Okay."): the first sentence's words, cut, stand as the title."""
    words = _WORD.findall(sentences[0].text) if sentences else []
    return " ".join(words[:max_words]).capitalize() if words else "Untitled"
