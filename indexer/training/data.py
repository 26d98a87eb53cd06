"""Training data for the joint models: clip features, ASR sentences and their clips, weak concept text, a held-out split."""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from store.catalog import Catalog, Media, MediaStatus
from store.features import FeatureStore

logger = logging.getLogger(__name__)

TRAIN = "train"
HELDOUT = "heldout"
_SENTENCE_END = re.compile(r"[.?!]['\")\]]*$")


@dataclass(frozen=True)
class DataOptions:
    """How the library becomes training examples; built from Settings at the entry points."""

    # The split unit is a block of one file, not the file: the dev library is one 10-minute film and
    # a handful of seconds-long clips, so a split by whole files leaves nothing (or everything) to train on.
    # A file shorter than one block is one unit, i.e. a split by media.
    split_block_seconds: float = 60.0
    heldout_fraction: float = 0.2
    seed: int = 0
    weak_window_clips: int = 4  # clips per weak (concept-tag) text example: ~6 s, about one spoken sentence
    weak_concepts: int = 2  # concept names in a weak sentence
    weak_min_prob: float = 0.05
    max_sentence_words: int = 40
    max_pair_clips: int = 16
    sequence_clips: int = 16  # clips per video-only sequence (visual MLM, CBT)

    def __post_init__(self) -> None:
        if self.split_block_seconds <= 0:
            raise ValueError(f"split_block_seconds must be > 0, got {self.split_block_seconds}")
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must be in [0, 1), got {self.heldout_fraction}")
        for name in ("weak_window_clips", "weak_concepts", "max_sentence_words", "max_pair_clips", "sequence_clips"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class Sentence:
    start: float
    end: float
    text: str


@dataclass
class MediaItem:
    """One indexed file as the trainer sees it."""

    media_id: int
    content_hash: str
    path: str
    clip_times: np.ndarray  # float32 [N, 2]
    features: np.ndarray | None  # float16 [N, F]; None for audio-only media
    concepts: list[list[Any]]  # per clip [[name, prob], ...], best first ([] where none)
    sentences: list[Sentence]
    clip_split: np.ndarray = field(default_factory=lambda: np.zeros(0, "U7"))  # TRAIN / HELDOUT per clip


@dataclass(frozen=True)
class Pair:
    """A text and the clips [first, last] of one file it goes with; first = -1 for text without video."""

    media: int  # index into TrainingData.media
    first: int
    last: int
    text: str
    weak: bool  # True: the text is the clips' concept tags, not speech
    split: str


@dataclass(frozen=True)
class Sequence_:
    """A run of consecutive clips [first, last] of one file inside one split block (video-only examples)."""

    media: int
    first: int
    last: int
    split: str


@dataclass
class TrainingData:
    media: list[MediaItem]
    pairs: list[Pair]  # text with video: ASR sentences (weak=False) and concept text (weak=True)
    texts: list[Pair]  # text without video (speech of audio-only media)
    sequences: list[Sequence_]

    def features(self, pair: Pair | Sequence_) -> np.ndarray:
        feats = self.media[pair.media].features
        if feats is None or pair.first < 0:
            raise ValueError("this example has no video")
        return feats[pair.first : pair.last + 1]

    def summary(self) -> dict[str, int]:
        out: dict[str, int] = {"media": len(self.media)}
        out["video_media"] = sum(1 for m in self.media if m.features is not None)
        out["clips_with_features"] = sum(len(m.features) for m in self.media if m.features is not None)
        for split in (TRAIN, HELDOUT):
            out[f"{split}_pairs"] = sum(1 for p in self.pairs if p.split == split and not p.weak)
            out[f"{split}_weak_pairs"] = sum(1 for p in self.pairs if p.split == split and p.weak)
            out[f"{split}_texts"] = sum(1 for p in self.texts if p.split == split)
            out[f"{split}_sequences"] = sum(1 for s in self.sequences if s.split == split)
            out[f"{split}_clips"] = sum(int((m.clip_split == split).sum()) for m in self.media if m.features is not None)
        return out


# -- sentences ------------------------------------------------------------------------------------


def split_sentences(segments: Sequence[tuple[float, float, str, Sequence[Sequence[Any]] | None]],
                    max_words: int = 40) -> list[Sentence]:
    """ASR segments -> sentences with times: cut after words ending in . ? ! and every ``max_words`` words.

    Segments without word timings stay whole (one sentence each).
    """
    out: list[Sentence] = []
    for start, end, text, words in segments:
        if not words:
            if text.strip():
                out.append(Sentence(float(start), float(end), " ".join(text.split())))
            continue
        run: list[tuple[float, float, str]] = []
        for w in words:
            token = str(w[2]).strip()
            if not token:
                continue
            run.append((float(w[0]), float(w[1]), token))
            if _SENTENCE_END.search(token) or len(run) >= max_words:
                out.append(Sentence(run[0][0], run[-1][1], " ".join(t for _, _, t in run)))
                run = []
        if run:
            out.append(Sentence(run[0][0], run[-1][1], " ".join(t for _, _, t in run)))
    return out


def weak_text(concepts: Sequence[Sequence[Sequence[Any]]], top: int = 2, min_prob: float = 0.05) -> str:
    """The concept tags of a few clips as a short sentence ("a video of a bicycle and a taxi"); "" if none qualify."""
    mass: dict[str, float] = {}
    for clip in concepts:
        for name, prob in clip or []:
            if float(prob) >= min_prob:
                mass[str(name)] = mass.get(str(name), 0.0) + float(prob)
    names = [n for n, _ in sorted(mass.items(), key=lambda kv: (-kv[1], kv[0]))[:top]]
    if not names:
        return ""
    # Parentheses disambiguate ImageNet names ("crane (bird)"); as words they read fine without them.
    names = [" ".join(n.replace("(", " ").replace(")", " ").split()) for n in names]
    return "a video of " + " and ".join(f"a {n}" for n in names)


# -- the split ------------------------------------------------------------------------------------


def _unit_hash(content_hash: str, block: int, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{content_hash}:{block}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def clip_blocks(clip_times: np.ndarray, block_seconds: float) -> np.ndarray:
    """The split block of every clip: its midpoint's block (a clip straddling a boundary has one block)."""
    mids = clip_times.mean(axis=1) if len(clip_times) else np.zeros(0)
    return np.floor(mids / block_seconds).astype(np.int64)


def assign_splits(media: Sequence[MediaItem], options: DataOptions) -> None:
    """Set ``clip_split`` on every item: deterministic per (content hash, block, seed), independent of the library.

    Video and audio-only units are split separately, and each side with two or more units gets at
    least one held-out unit (the one with the smallest hash) so held-out metrics always exist.
    """
    units: dict[bool, dict[tuple[str, int], float]] = {True: {}, False: {}}
    blocks_of: list[np.ndarray] = []
    for m in media:
        blocks = clip_blocks(m.clip_times, options.split_block_seconds)
        blocks_of.append(blocks)
        for b in np.unique(blocks).tolist():
            units[m.features is not None][(m.content_hash, b)] = _unit_hash(m.content_hash, b, options.seed)
    held: set[tuple[str, int]] = set()
    for side in units.values():
        chosen = {u for u, h in side.items() if h < options.heldout_fraction}
        if not chosen and len(side) >= 2 and options.heldout_fraction > 0:
            chosen = {min(side, key=lambda u: side[u])}
        if len(chosen) == len(side) and len(side) >= 2:
            chosen.discard(max(chosen, key=lambda u: side[u]))  # never hold everything out
        held |= chosen
    for m, blocks in zip(media, blocks_of):
        m.clip_split = np.array([HELDOUT if (m.content_hash, int(b)) in held else TRAIN for b in blocks.tolist()], "U7")


def _split_at(m: MediaItem, t: float) -> str:
    if not len(m.clip_times):
        return TRAIN
    row = int(np.clip(np.searchsorted(m.clip_times[:, 0], t, side="right") - 1, 0, len(m.clip_times) - 1))
    return str(m.clip_split[row])


# -- building the examples ------------------------------------------------------------------------


def build_examples(media: list[MediaItem], options: DataOptions) -> TrainingData:
    """Pairs (sentence + overlapping clips, or concept text + clips), text-only sentences and clip sequences."""
    assign_splits(media, options)
    pairs: list[Pair] = []
    texts: list[Pair] = []
    sequences: list[Sequence_] = []
    for mi, m in enumerate(media):
        n = len(m.clip_times)
        if m.features is None or n == 0:
            texts += [Pair(mi, -1, -1, s.text, False, _split_at(m, (s.start + s.end) / 2)) for s in m.sentences]
            continue
        starts, ends = m.clip_times[:, 0], m.clip_times[:, 1]
        blocks = clip_blocks(m.clip_times, options.split_block_seconds)
        spoken = np.zeros(n, bool)
        for s in m.sentences:
            rows = np.flatnonzero((ends > s.start) & (starts < s.end))
            if not len(rows):
                continue
            spoken[rows] = True
            first = int(rows[0])
            last = int(min(rows[-1], first + options.max_pair_clips - 1))
            # A pair stays inside its first clip's split block: a sentence running on into a block of the
            # other split must not carry held-out clips into training (or training clips into held-out).
            for i in range(first + 1, last + 1):
                if m.clip_split[i] != m.clip_split[first] or blocks[i] != blocks[first]:
                    last = i - 1
                    break
            pairs.append(Pair(mi, first, last, s.text, False, str(m.clip_split[first])))
        # Runs of clips inside one split block: the unit of weak pairs and video-only sequences.
        bounds = [0] + [i for i in range(1, n) if m.clip_split[i] != m.clip_split[i - 1] or blocks[i] != blocks[i - 1]] + [n]
        for a, b in zip(bounds[:-1], bounds[1:]):
            split = str(m.clip_split[a])
            for first in range(a, b, options.sequence_clips):
                sequences.append(Sequence_(mi, first, min(b, first + options.sequence_clips) - 1, split))
            for first in range(a, b, options.weak_window_clips):
                last = min(b, first + options.weak_window_clips) - 1
                if spoken[first : last + 1].any():
                    continue
                text = weak_text(m.concepts[first : last + 1], options.weak_concepts, options.weak_min_prob)
                if text:
                    pairs.append(Pair(mi, first, last, text, True, split))
    data = TrainingData(media, pairs, texts, sequences)
    logger.info("training data: %s", data.summary())
    return data


def load_media(catalog: Catalog, store: FeatureStore, options: DataOptions) -> list[MediaItem]:
    """Every indexed file with its clip times, stored features (if any) and sentences, ordered by content hash."""
    items: list[MediaItem] = []
    with catalog.session() as session:
        rows = session.scalars(
            select(Media).where(Media.status == MediaStatus.INDEXED)
            .options(selectinload(Media.clips), selectinload(Media.segments))
        ).all()
        raw = [
            (m.id, m.content_hash or "", m.path, [(c.start, c.end, c.concepts or []) for c in m.clips],
             [(s.start, s.end, s.text, s.words) for s in m.segments])
            for m in rows
        ]
    for media_id, key, path, clips, segments in raw:
        if not key or not store.exists(key):
            logger.warning("skipping media %s: its feature files are missing", media_id)
            continue
        features = store.load(key, "features") if store.has(key, "features") else None
        if features is not None and len(features) != len(clips):
            logger.warning("skipping media %s: %d feature rows for %d clips", media_id, len(features), len(clips))
            continue
        times = np.asarray([[s, e] for s, e, _ in clips], np.float32).reshape(-1, 2)
        items.append(MediaItem(media_id, key, path, times, features, [c for _, _, c in clips],
                               split_sentences(segments, options.max_sentence_words)))
    # Content-hash order: the same library gives the same data (and split) whatever the ids.
    items.sort(key=lambda m: (m.content_hash, m.media_id))
    return items


def prepare(catalog: Catalog, store: FeatureStore, options: DataOptions = DataOptions()) -> TrainingData:
    """The whole library as training examples (the training driver's first stage)."""
    return build_examples(load_media(catalog, store, options), options)
