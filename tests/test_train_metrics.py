"""Held-out metrics tell the truth about small libraries: sizes recorded, too-small samples never activate a model, and `vidx train` says so."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from indexer.training.batches import Corpus
from indexer.training.data import HELDOUT, MediaItem, Pair, Sequence_, TrainingData
from indexer.training.metrics import (
    MIN_TRIALS,
    auc_standard_error,
    distinct_groups,
    evaluate,
    judge,
    left_off,
    recommend,
    too_small,
)

# The values that would switch both models on (CBT beats the concept tags, the rerank beats CBT).
WINNING = {"cbt_v2t_r1": 0.6, "cbt_t2v_r1": 0.6, "conse_v2t_r1": 0.5, "conse_t2v_r1": 0.5, "align_auc": 0.7,
           "align_t2v_r1": 0.7, "cbt_r1": 0.6, "visual_mlm_acc": 0.5, "visual_mlm_baseline_acc": 0.1,
           "text_mlm_acc": 0.4}
LARGE = {"visual_masked_distinct": 80, "visual_sequences": 8, "text_masked_distinct": 300, "text_examples": 40,
         "align_positives": 20, "align_negatives": 20, "retrieval_queries": 40}
# What an 18-file library gave: "visual MLM acc 1.000 (most-frequent token 0.000)" on a handful of tokens.
TINY = {"visual_masked_distinct": 5, "visual_sequences": 1, "text_masked_distinct": 12, "text_examples": 2,
        "align_positives": 2, "align_negatives": 1, "retrieval_queries": 3, "visual_mlm_acc": 1.0,
        "visual_mlm_baseline_acc": 0.0}


def test_auc_standard_error_and_the_minimum_it_sets() -> None:
    assert auc_standard_error(18, 18) <= 0.1 < auc_standard_error(17, 17)
    assert auc_standard_error(13, 13) == pytest.approx(0.1153, abs=1e-4)  # the dev library's 26 pairs
    assert auc_standard_error(20, 0) is None and auc_standard_error(0, 0) is None
    # The share-of-trials minimum is where the worst-case binomial error reaches 0.1.
    assert 0.5 / np.sqrt(MIN_TRIALS) <= 0.1 < 0.5 / np.sqrt(MIN_TRIALS - 1)


def test_judge_marks_each_metric_with_its_size() -> None:
    big = judge({**WINNING, **LARGE})
    assert all(v["judgeable"] for v in big.values())
    assert big["visual_mlm_acc"]["n"] == 80 and big["align_auc"]["n"] == 40 and big["cbt_t2v_r1"]["n"] == 40
    small = judge({**WINNING, **TINY})
    assert not any(v["judgeable"] for v in small.values())
    assert (small["visual_mlm_acc"]["n"], small["text_mlm_acc"]["n"], small["align_auc"]["n"],
            small["conse_v2t_r1"]["n"]) == (5, 12, 3, 3)
    # Enough masked tokens from one sequence are still one shot's worth of evidence.
    assert not judge({**WINNING, **LARGE, "visual_sequences": 1})["visual_mlm_acc"]["judgeable"]
    # The dev library: 26 pairs are enough for R@1 (26 queries) and not for the AUC (13 of each class).
    dev = judge({**WINNING, **LARGE, "align_positives": 13, "align_negatives": 13, "retrieval_queries": 26})
    assert dev["cbt_v2t_r1"]["judgeable"] and not dev["align_auc"]["judgeable"]
    # No value, or sizes not recorded (a metrics dict from before sizes were kept): not judgeable.
    assert not judge({**LARGE, **WINNING, "align_auc": None})["align_auc"]["judgeable"]
    assert not any(v["judgeable"] for v in judge(WINNING).values())


def test_recommend_never_activates_on_a_sample_too_small() -> None:
    assert recommend({**WINNING, **LARGE}, "auto") == {"cbt": True, "videobert": True}
    assert recommend({**WINNING, **TINY}, "auto") == {"cbt": False, "videobert": False}
    assert recommend(WINNING, "auto") == {"cbt": False, "videobert": False}  # sizes unknown
    # Retrieval judgeable, the AUC not: CBT on, the rerank off however good its numbers.
    mixed = {**WINNING, **LARGE, "align_positives": 13, "align_negatives": 13, "align_auc": 0.95}
    assert recommend(mixed, "auto") == {"cbt": True, "videobert": False}
    assert left_off(mixed, "auto") == {"videobert": too_small(26)}
    assert left_off({**WINNING, **TINY}, "auto") == {"cbt": too_small(3), "videobert": too_small(3)}
    losing = {**WINNING, **LARGE, "cbt_v2t_r1": 0.4, "cbt_t2v_r1": 0.4, "align_t2v_r1": 0.45}
    assert left_off(losing, "auto") == {"cbt": "did not beat its baseline on held-out data",
                                        "videobert": "did not beat its baseline on held-out data"}
    # A person's --activate always / never is theirs to make, whatever the sizes.
    assert recommend({**WINNING, **TINY}, "always") == {"videobert": True, "cbt": True}
    assert recommend({**WINNING, **LARGE}, "never") == {"videobert": False, "cbt": False}
    assert left_off({**WINNING, **LARGE}, "never") == {"videobert": "--activate never", "cbt": "--activate never"}
    assert left_off({**WINNING, **TINY}, "always") == {}
    assert too_small(7) == "held-out too small to judge (7)"


def _fake_train(monkeypatch: pytest.MonkeyPatch, heldout: dict[str, Any], mode: str) -> None:
    import indexer.training.loop

    result = SimpleNamespace(run="run-0003", job_id=2, resumed=False, seconds=1.0, versions={"videobert": 5, "cbt": 6},
                             recommended=recommend(heldout, mode),
                             metrics={"heldout": heldout, "left_off": left_off(heldout, mode)})
    monkeypatch.setattr(indexer.training.loop, "train_library", lambda *a, **k: result)


def test_cli_train_says_too_small_instead_of_a_number(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vidx.cli import app as cli

    heldout = {**WINNING, **TINY}
    _fake_train(monkeypatch, heldout, "auto")
    res = CliRunner().invoke(cli, ["train", "--device", "cpu", "--json", "--data-dir", str(tmp_path / "lib")])
    assert res.exit_code == 0, res.output
    err = " ".join(res.stderr.split())  # rich wraps long lines
    assert "visual MLM acc: held-out too small to judge (5)" in err
    assert "1.000" not in err  # the meaningless number is not shown
    assert "R@1: held-out too small to judge (3)" in err and "alignment AUC: held-out too small to judge (3)" in err
    assert ("left off: cbt (held-out too small to judge (3)), videobert (held-out too small to judge (3))" in err)
    report = json.loads(res.stdout)
    assert report["activated"] == []
    assert report["metrics"]["heldout"]["visual_mlm_acc"] == 1.0  # the JSON keeps every number for who wants it


def test_cli_train_shows_numbers_with_their_sizes_when_judgeable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vidx.cli import app as cli

    heldout = {**WINNING, **LARGE, "cbt_v2t_r1": 0.4, "cbt_t2v_r1": 0.4, "align_t2v_r1": 0.45}
    _fake_train(monkeypatch, heldout, "auto")
    res = CliRunner().invoke(cli, ["train", "--device", "cpu", "--data-dir", str(tmp_path / "lib")])
    assert res.exit_code == 0, res.output
    err = " ".join(res.stderr.split())
    assert "visual MLM acc 0.500 (most-frequent token 0.100; 80 masked tokens)" in err
    assert "alignment AUC 0.700 (40 pairs)" in err and "; 40 queries)" in err and "too small" not in err
    assert "left off: cbt (did not beat its baseline on held-out data), videobert (did not beat" in err


# -- the sizes evaluate() records, on tiny models and a synthetic library ---------------------------


V, W0, DIM, FEAT = 16, 110, 16, 8


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class _Encoder:
    """Stands in for MiniLM: a fixed unit vector per text."""

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.stack([np.random.default_rng(sum(map(ord, t))).normal(size=DIM) for t in texts]).astype(np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def _library(pairs_per_file: int, sequences_per_file: int) -> Corpus:
    """Two 300 s files of 1.5 s clips, all held out: sentences every 15 s (each a distinct text) and 16-clip sequences."""
    media, pairs, seqs, text_ids = [], [], [], {}
    rng = np.random.default_rng(0)
    for m in range(2):
        n = 200
        times = np.array([[i * 1.5, (i + 1) * 1.5] for i in range(n)], np.float32)
        media.append(MediaItem(m + 1, f"{m:02d}" * 16, f"/m/{m}.mp4", times,
                               rng.normal(size=(n, FEAT)).astype(np.float16), [[] for _ in range(n)], [],
                               np.array([HELDOUT] * n)))
        for k in range(pairs_per_file):
            text = f"file {m} sentence {k}"
            pairs.append(Pair(m, 10 * k, 10 * k + 3, text, False, HELDOUT))
            text_ids[text] = [W0 + (m * 7 + k) % 40, W0 + k % 40, W0 + 3]
        seqs += [Sequence_(m, 16 * k, 16 * k + 15, HELDOUT) for k in range(sequences_per_file)]
    corpus = Corpus(TrainingData(media, pairs, [], seqs), _Encoder(), 30.0, text_ids)
    corpus.tokens = [rng.integers(0, V, 200) for _ in media]
    return corpus


def _evaluate(corpus: Corpus) -> dict[str, Any]:
    from models.cbt import CBT, CBTConfig
    from models.videobert import VideoBERT, VideoBertConfig

    torch.manual_seed(0)
    vb = VideoBERT(VideoBertConfig(visual_vocab_size=V, text_vocab_size=W0 + 40, first_word_id=W0, hidden=32, layers=1,
                                   heads=2, intermediate=64, max_text_len=8, max_visual_len=16, dropout=0.0)).eval()
    cbt = CBT(CBTConfig(feature_dim=FEAT, hidden=32, layers=1, heads=2, intermediate=64, text_dim=DIM, max_len=16,
                        dropout=0.0)).eval()
    conse = {m: np.random.default_rng(m).normal(size=(200, DIM)).astype(np.float32) for m in range(2)}
    return evaluate(vb, cbt, corpus, 0, lambda m: conse[m], 0, "cpu", lambda f, d: None)


def test_evaluate_records_sizes_and_a_tiny_heldout_switches_nothing_on() -> None:
    h = _evaluate(_library(pairs_per_file=1, sequences_per_file=1))
    # Two pairs make one group of two: not scored at all (R@1 among 2 is a coin toss).
    assert h["retrieval_groups"] == 0 and h["retrieval_queries"] == 0 and h["cbt_v2t_r1"] is None
    assert h["visual_sequences"] == 2 and 0 < h["visual_masked_distinct"] <= h["visual_masked"]
    assert h["align_positives"] + h["align_negatives"] == 2
    assert h["samples"] == judge(h) and not any(v["judgeable"] for v in h["samples"].values())
    assert recommend(h, "auto") == {"cbt": False, "videobert": False}


def test_evaluate_on_a_larger_heldout_is_judgeable() -> None:
    h = _evaluate(_library(pairs_per_file=18, sequences_per_file=6))
    # 36 distinct texts in groups of 16, 16 and 4.
    assert (h["retrieval_groups"], h["retrieval_queries"], h["retrieval_candidates"]) == (3, 36, 16)
    assert h["samples"]["cbt_v2t_r1"]["judgeable"] and h["samples"]["align_t2v_r1"]["n"] == 36
    # Five maskings of 12 sequences of 16 tokens: more trials than one masking, fewer than five times as many.
    assert h["visual_sequences"] == 12 and h["visual_masked"] / 5 < h["visual_masked_distinct"] < h["visual_masked"]
    assert h["samples"]["visual_mlm_acc"] == {"n": h["visual_masked_distinct"], "judgeable": True}
    se = auc_standard_error(h["align_positives"], h["align_negatives"])
    assert h["samples"]["align_auc"]["judgeable"] == (se is not None and se <= 0.1)
    assert h["text_masked_distinct"] >= MIN_TRIALS and h["samples"]["text_mlm_acc"]["judgeable"]


def test_distinct_groups_drops_a_last_group_below_the_minimum() -> None:
    pairs = [Pair(0, i, i, f"t{i}", False, HELDOUT) for i in range(19)]
    sizes = [len(g) for g in distinct_groups(pairs, 16, np.random.default_rng(0))]
    assert sizes == [16, 3]
    assert [len(g) for g in distinct_groups(pairs, 16, np.random.default_rng(0), min_size=4)] == [16]
