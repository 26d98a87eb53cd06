"""VideoBERT: input layout, masking, objectives on toy data, MiniLM initialisation, inference helpers, checkpoints."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from models.text_encoder import packaged_model_path
from models.videobert import (
    VideoBERT,
    VideoBertConfig,
    align_score,
    align_scores,
    fill_text,
    load_checkpoint,
    predict_next_visual,
    save_checkpoint,
)
from models.videobert_inputs import IGNORE, build_inputs, mask_tokens, shuffle_negatives

V = 16  # visual vocabulary of the toy problems
W0 = 110  # first "word" id of the tiny text vocabulary (BERT's special ids stay where they are)


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models: one thread is several times faster than two on cores shared with other processes."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_config(**kw: object) -> VideoBertConfig:
    base = dict(visual_vocab_size=V, text_vocab_size=W0 + 40, first_word_id=W0, hidden=64, layers=2, heads=4,
                intermediate=128, max_text_len=8, max_visual_len=6, dropout=0.0)
    base.update(kw)
    return VideoBertConfig(**base)  # type: ignore[arg-type]


def toy_pair(a: int, length: int = 4) -> tuple[list[int], list[int]]:
    """Category a (0..7): its video counts up from 2a, its text names a. Text and video predict each other."""
    # Three text tokens, two of them naming a: masking one still leaves the category readable.
    return [W0 + a, W0 + 10 + a % 4, W0 + 20 + a], [(2 * a + i) % V for i in range(length)]


def test_layout() -> None:
    c = tiny_config()
    b = build_inputs([[101, W0, W0 + 1, 102], [W0 + 2] * 20, None], [[3, 4], None, [5, 6, 7]], c)
    vis = c.visual_offset
    assert b["input_ids"].tolist() == [
        [101, W0, W0 + 1, c.sep_visual_id, vis + 3, vis + 4, 102, 0, 0, 0],
        [101] + [W0 + 2] * 8 + [102],  # text cut to max_text_len
        [101, c.sep_visual_id, vis + 5, vis + 6, vis + 7, 102, 0, 0, 0, 0],
    ]
    assert b["token_type_ids"][0].tolist() == [0, 0, 0, 1, 1, 1, 1, 0, 0, 0]
    assert b["token_type_ids"][1].sum() == 0
    assert b["attention_mask"].sum(1).tolist() == [7, 10, 6]
    assert b["text_mask"][0].tolist() == [False, True, True] + [False] * 7
    assert b["visual_mask"][0].tolist() == [False] * 4 + [True, True] + [False] * 4
    assert b["visual_mask"][2].nonzero().flatten().tolist() == [2, 3, 4]
    assert not b["text_mask"][2].any() and not b["visual_mask"][1].any()
    assert b["align_labels"].tolist() == [1.0, -1.0, -1.0]
    assert c.visual_id(3) == c.text_vocab_size + 3 and c.vocab_size == c.text_vocab_size + V + 2
    assert c.visual_mask_id == c.sep_visual_id + 1
    with pytest.raises(ValueError, match="visual tokens in"):
        build_inputs([[W0]], [[V]], c)
    with pytest.raises(ValueError, match="text or visual"):
        build_inputs([[]], [[]], c)
    with pytest.raises(ValueError, match="align_labels -1"):
        build_inputs([[W0]], None, c, align_labels=[1])


def test_masking() -> None:
    c = tiny_config(max_text_len=30, max_visual_len=30)
    g = torch.Generator().manual_seed(0)
    texts = [[W0 + (i * 7 + j) % 40 for j in range(5 + i % 20)] for i in range(200)]
    videos = [[(i + j) % V for j in range(1 + i % 30)] if i % 5 else None for i in range(200)]
    batch = build_inputs(texts, videos, c)
    masked, labels = mask_tokens(batch, c, g)
    assert masked["labels"] is labels or torch.equal(masked["labels"], labels)
    ids, new = batch["input_ids"], masked["input_ids"]
    chosen = labels != IGNORE
    # Labels are the original ids exactly where chosen; -100 everywhere else.
    assert torch.equal(labels[chosen], ids[chosen])
    # Only text and visual positions are ever chosen or changed: [CLS], [SEP], [>] and padding never.
    content = batch["text_mask"] | batch["visual_mask"]
    assert not (chosen & ~content).any()
    assert torch.equal(new[~content], ids[~content])
    assert not (new != ids)[~chosen].any()
    # Modalities are masked separately: a text slot only ever holds text ids, a visual slot visual ids.
    tpos, vpos = chosen & batch["text_mask"], chosen & batch["visual_mask"]
    assert ((new[tpos] < c.text_vocab_size)).all()
    assert ((new[vpos] >= c.visual_offset) & (new[vpos] <= c.visual_mask_id)).all()
    # 80 / 10 / 10 and about mask_prob of the positions (plus the one forced per row and modality).
    for pos, mask_id in ((tpos, c.mask_id), (vpos, c.visual_mask_id)):
        frac_mask = float((new[pos] == mask_id).float().mean())
        frac_kept = float((new[pos] == ids[pos]).float().mean())
        assert 0.7 < frac_mask < 0.9 and 0.04 < frac_kept < 0.2
    assert 0.13 < float(tpos.sum()) / float(batch["text_mask"].sum()) < 0.25
    assert 0.13 < float(vpos.sum()) / float(batch["visual_mask"].sum()) < 0.3
    # Every row with a modality has at least one masked position of it.
    assert (tpos.sum(1) >= 1).all()
    has_video = batch["visual_mask"].any(1)
    assert (vpos.sum(1)[has_video] >= 1).all() and (vpos.sum(1)[~has_video] == 0).all()
    # Reproducible for a seed.
    again, labels2 = mask_tokens(batch, c, torch.Generator().manual_seed(0))
    assert torch.equal(again["input_ids"], new) and torch.equal(labels2, labels)


def train(model: VideoBERT, steps: int, make_batch: Callable[[int], dict[str, torch.Tensor]],
          lr: float = 3e-3) -> None:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    for step in range(steps):
        out = model.loss(make_batch(step))
        opt.zero_grad()
        out["total"].backward()
        opt.step()


def test_mlm_losses_fall_and_next_clip_prediction_learns() -> None:
    torch.manual_seed(0)
    c = tiny_config()
    model = VideoBERT(c)
    lengths = [2, 3, 4, 5, 6]  # varied, so "next" means "after the last one", not "at slot 4"

    def make_batch(step: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(1000 + step)
        rows = [toy_pair(int(a), lengths[i % 5]) for i, a in enumerate(torch.randint(0, 8, (32,), generator=g))]
        # The paper's mix: text-video pairs, text-only and video-only rows.
        texts = [t if i % 4 != 3 else None for i, (t, _) in enumerate(rows)]
        videos = [v if i % 4 != 2 else None for i, (_, v) in enumerate(rows)]
        return mask_tokens(build_inputs(texts, videos, c), c, g)[0]

    eval_batch = make_batch(-1)
    model.eval()
    with torch.no_grad():
        before = model.loss(eval_batch)
    train(model, 200, make_batch)
    model.eval()
    with torch.no_grad():
        after = model.loss(eval_batch)
    assert after["text_mlm"] < 0.3 * before["text_mlm"]
    assert after["visual_mlm"] < 0.3 * before["visual_mlm"]
    assert after["text_acc"] > 0.8 and after["visual_acc"] > 0.7
    # Next-clip prediction: the video counts up, so after 2a (, 2a+1) comes 2a+1 (2a+2).
    hits = sum(predict_next_visual(model, [(2 * a + i) % V for i in range(k)], 1) == [(2 * a + k) % V]
               for a in range(8) for k in (1, 2))
    assert hits >= 12, hits
    assert len(predict_next_visual(model, [0, 1], 3)) == 3
    # Template filling: the word that names the category of the video.
    guesses = fill_text(model, [2 * 5 + i for i in range(4)], template=[c.mask_id, W0 + 11, W0 + 25],
                        top_k=3)
    assert len(guesses) == 1 and guesses[0][0][0] == W0 + 5
    assert all(w >= c.first_word_id for w, _ in guesses[0])
    probs = [p for _, p in guesses[0]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-6


def test_alignment_separates_aligned_from_shuffled_pairs() -> None:
    torch.manual_seed(1)
    # A from-scratch toy model finds the text/video match late: a heavier alignment term shortens the wait.
    c = tiny_config(align_weight=4.0)
    model = VideoBERT(c)

    def make_batch(step: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(step)
        cats = torch.randint(0, 8, (32,), generator=g).tolist()
        texts, videos = zip(*(toy_pair(a) for a in cats))
        texts, videos, labels = shuffle_negatives(texts, videos, g, 0.5, groups=cats)
        return mask_tokens(build_inputs(texts, videos, c, align_labels=labels), c, g)[0]

    first = make_batch(0)
    assert 0.3 < float((first["align_labels"] == 0).float().mean()) < 0.7
    train(model, 300, make_batch)
    # Fresh pairs, unmasked: aligned must score above every pair whose video comes from another category.
    aligned = [toy_pair(a) for a in range(8)]
    wrong = [(toy_pair(a)[0], toy_pair((a + k) % 8)[1]) for a in range(8) for k in (1, 3, 5)]
    pos = align_scores(model, *zip(*aligned))
    neg = align_scores(model, *zip(*wrong))
    auc = float((pos[:, None] > neg[None, :]).float().mean())
    assert auc > 0.9, auc
    assert float(pos.mean()) > float(neg.mean()) + 0.3
    assert abs(align_score(model, *aligned[2]) - float(pos[2])) < 1e-5
    with pytest.raises(ValueError, match="non-empty"):
        align_score(model, [], [1])


def test_shuffle_negatives_uses_other_groups() -> None:
    g = torch.Generator().manual_seed(3)
    texts = [[W0 + i] for i in range(40)]
    videos = [[i] for i in range(40)]  # unique, so each donor is identifiable
    groups = [i // 4 for i in range(40)]
    t, v, labels = shuffle_negatives(texts, videos, g, neg_fraction=1.0, groups=groups)
    assert t == texts and all(label == 0.0 for label in labels)
    for i, vid in enumerate(v):
        donor = videos.index(vid) if vid in videos else -1
        assert donor >= 0 and groups[donor] != groups[i]


def test_minilm_init_matches_bert_model() -> None:
    from transformers import AutoTokenizer, BertModel

    path = packaged_model_path()
    config = VideoBertConfig(visual_vocab_size=144, max_text_len=32, max_visual_len=8)
    model = VideoBERT.from_text_encoder(path, config).eval()
    bert = BertModel.from_pretrained(path, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    texts = [["now let me show you how to cut the onions"], ["a dog"]]
    ids = [tok(t[0])["input_ids"] for t in texts]
    batch = build_inputs(ids, None, config)
    with torch.no_grad():
        ours = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
        ref = bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   token_type_ids=batch["token_type_ids"]).last_hidden_state
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(ours[real], ref[real], atol=2e-5, rtol=1e-4)
    # Visual rows are new, distinct, and on the scale of the text rows.
    word = model.emb.word.weight.detach()
    visual = word[config.visual_offset:config.visual_offset + config.visual_vocab_size]
    assert torch.isfinite(visual).all() and torch.cdist(visual[:10], visual[:10]).fill_diagonal_(1).min() > 0.1
    assert 0.5 < float(visual.norm(dim=1).mean() / word[: config.text_vocab_size].norm(dim=1).mean()) < 2.0
    # Template filling with the real tokenizer: one ranked word list per [MASK].
    words = fill_text(model, [1, 2, 3], template="now let me show you how to [MASK] the [MASK]", tokenizer=tok,
                      top_k=4)
    assert len(words) == 2 and all(len(w) == 4 and isinstance(w[0][0], str) for w in words)
    # A smaller model takes MiniLM's first layers.
    small = VideoBERT.from_text_encoder(path, VideoBertConfig(visual_vocab_size=12, layers=2))
    torch.testing.assert_close(small.layers[1].q.weight, model.layers[1].q.weight)
    with pytest.raises(ValueError, match="matching"):
        VideoBERT.from_text_encoder(path, VideoBertConfig(visual_vocab_size=12, hidden=64, heads=4))


def _save(path: Path, model: VideoBERT, config: VideoBertConfig, extra: dict | None = None) -> Path:
    with path.open("wb") as f:
        save_checkpoint(f, model, config, extra)
    return path


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(2)
    c = tiny_config(dropout=0.1)
    model = VideoBERT(c)
    with torch.no_grad():
        model.mlm_bias.normal_()
    extra = {"step": 12, "metrics": {"visual_acc": 0.25}, "vocab": "vocab.npz"}
    path = _save(tmp_path / "vb.pt", model, c, extra)
    loaded, config, got = load_checkpoint(path)
    assert config == c and got == extra and not loaded.training
    sd, sd2 = model.state_dict(), loaded.state_dict()
    assert sd.keys() == sd2.keys()
    for k in sd:
        assert torch.equal(sd[k], sd2[k]), k
    batch = build_inputs([[W0, W0 + 1]], [[1, 2, 3]], c)
    model.eval()
    args = (batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    assert torch.equal(model(*args), loaded(*args))
    # numpy values in extra are stored as plain numbers (weights_only loading refuses numpy objects).
    buffer = io.BytesIO()  # any binary file object: the caller decides where (and how atomically) it goes
    save_checkpoint(buffer, model, c, {"auc": np.float32(0.75), "hist": np.arange(3)})
    buffer.seek(0)
    assert load_checkpoint(buffer)[2] == {"auc": 0.75, "hist": [0, 1, 2]}
    with pytest.raises(ValueError, match="extra.bad"):
        save_checkpoint(io.BytesIO(), model, c, {"bad": object()})
    # np.float64 and np.str_ subclass float and str: they too must become plain Python values, nested included.
    numpy_extra = {"f": np.float64(0.5), "i": np.int64(7), "s": np.str_("vocab.npz"), "b": np.bool_(True),
                   "nested": {"l": [np.float64(1.5), (np.int64(2), np.str_("x"))], "d": {"b": np.bool_(False)}}}
    _save(tmp_path / "np64.pt", model, c, numpy_extra)
    got64 = load_checkpoint(tmp_path / "np64.pt")[2]
    assert got64 == {"f": 0.5, "i": 7, "s": "vocab.npz", "b": True,
                     "nested": {"l": [1.5, [2, "x"]], "d": {"b": False}}}

    def types(v: object) -> list[type]:
        if isinstance(v, dict):
            return [t for x in v.values() for t in types(x)]
        if isinstance(v, list):
            return [t for x in v for t in types(x)]
        return [type(v)]

    assert set(types(got64)) == {float, int, str, bool}
    torch.save({"x": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a VideoBERT checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
