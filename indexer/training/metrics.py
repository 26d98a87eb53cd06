"""Held-out metrics of a trained run against their baselines, and the rule that decides which models to switch on."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from indexer.training.batches import Corpus
from indexer.training.data import HELDOUT, Pair
from indexer.training.registry import KINDS
from store.features import FeatureStore

Report = Callable[[float, str], None]  # (fraction of the evaluation done, detail)

# -- how large a held-out set must be to mean anything ----------------------------------------------
# A held-out number may decide an activation only when its standard error is at most ~0.1, so that the
# gaps the rule acts on (0.2 and more between a model and its baseline) are two standard errors.
# * A share of n trials (a masked-token accuracy, an R@1): SE = sqrt(p(1-p)/n) <= 0.5/sqrt(n), so
#   n >= 25. An 18-file library printed "visual MLM acc 1.000" on a handful of masked tokens: with
#   n = 5 the SE is up to 0.22 and 1.000 is as likely luck as learning.
# * R@1 among k candidates: k = 1 is 1.0 by construction and k = 2 or 3 is half or a third by chance;
#   from 4 up a hit says something, so groups smaller than that are not scored, and the n of an R@1
#   is its queries in groups of at least 4.
# * Masked visual tokens of one sequence are near copies (a shot is one token repeated), so tokens
#   from fewer than 4 held-out sequences are fewer independent trials than they look.
# * An AUC with P aligned and N misaligned pairs has SE sqrt((P+N+1)/(12PN)) at chance (Hanley and
#   McNeil 1982): <= 0.1 from 18 of each. The dev library's 26 held-out pairs give 0.115, and its
#   AUC went 0.758 -> 0.497 from a changed block assignment alone (BENCHMARKS.md, Training).
MIN_TRIALS = 25
MIN_CANDIDATES = 4
MIN_SEQUENCES = 4
MAX_AUC_SE = 0.1
# Which sample each metric stands on (a key of judge()'s sizes).
_SAMPLE = {"visual_mlm_acc": "visual", "visual_mlm_baseline_acc": "visual", "text_mlm_acc": "text",
           "align_auc": "align", "cbt_v2t_r1": "retrieval", "cbt_t2v_r1": "retrieval", "conse_v2t_r1": "retrieval",
           "conse_t2v_r1": "retrieval", "align_t2v_r1": "retrieval", "cbt_r1": "retrieval"}


def _count(heldout: dict[str, Any], key: str) -> int:
    v = heldout.get(key)
    return int(v) if isinstance(v, (int, float)) and v == v else 0


def auc_standard_error(positives: int, negatives: int) -> float | None:
    """The standard error of an AUC of 0.5 over these many pairs of each class (Hanley-McNeil); None without both."""
    if positives < 1 or negatives < 1:
        return None
    return float(np.sqrt((positives + negatives + 1) / (12.0 * positives * negatives)))


def judge(heldout: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per held-out metric, the size of the sample it was measured on (``n``) and whether that is enough to act
    on (``judgeable``, by the minimums above). A size the dict does not record counts as 0: a metric of
    unknown size is not judgeable."""
    se = auc_standard_error(_count(heldout, "align_positives"), _count(heldout, "align_negatives"))
    sizes = {
        "visual": (_count(heldout, "visual_masked_distinct"),
                   _count(heldout, "visual_masked_distinct") >= MIN_TRIALS
                   and _count(heldout, "visual_sequences") >= MIN_SEQUENCES),
        "text": (_count(heldout, "text_masked_distinct"), _count(heldout, "text_masked_distinct") >= MIN_TRIALS),
        "align": (_count(heldout, "align_positives") + _count(heldout, "align_negatives"),
                  se is not None and se <= MAX_AUC_SE),
        "retrieval": (_count(heldout, "retrieval_queries"), _count(heldout, "retrieval_queries") >= MIN_TRIALS),
    }
    return {k: {"n": sizes[s][0], "judgeable": bool(sizes[s][1] and heldout.get(k) is not None)}
            for k, s in _SAMPLE.items()}


def auc(scores: Sequence[float], labels: Sequence[float]) -> float | None:
    """ROC AUC by the rank-sum formula (ties count half); None without both classes."""
    s, y = np.asarray(scores, float), np.asarray(labels, float)
    pos, neg = s[y == 1], s[y == 0]
    if not len(pos) or not len(neg):
        return None
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return round(float(greater / (len(pos) * len(neg))), 4)


def r1(sim: np.ndarray) -> float:
    """Share of rows whose best column is the diagonal one (ties broken against it)."""
    diag = np.diag(sim)
    return float(np.mean([(sim[i] > diag[i]).sum() == 0 and (sim[i] == diag[i]).sum() == 1 for i in range(len(sim))]))


def distinct_groups(pairs: Sequence[Pair], size: int, rng: np.random.Generator, min_size: int = 2) -> list[list[Pair]]:
    """Pairs in groups of up to ``size`` with distinct texts (in-batch negatives must differ), deterministic;
    a last group smaller than ``min_size`` is dropped."""
    order = rng.permutation(len(pairs)).tolist()
    groups: list[list[Pair]] = []
    current: list[Pair] = []
    seen: set[str] = set()
    for i in order:
        p = pairs[i]
        if p.text in seen:
            continue  # a repeated (weak) text would be its own in-batch negative
        current.append(p)
        seen.add(p.text)
        if len(current) == size:
            groups.append(current)
            current, seen = [], set()
    if len(current) >= max(min_size, 2):
        groups.append(current)
    return groups


def _unit(v: np.ndarray) -> np.ndarray:
    m = v.mean(0)
    n = np.linalg.norm(m)
    return m / n if n > 0 else m


def masked_token_accuracy(vb: Any, corpus: Corpus, most_frequent_token: int, gen: Any, device: str) -> dict[str, Any]:
    """Visual masked-token accuracy on held-out clip sequences (against always guessing the most frequent
    token) and text masked-token accuracy on held-out sentences."""
    import torch

    from models.videobert_inputs import build_inputs, mask_tokens

    c = vb.config
    data = corpus.data
    seqs = [s for s in data.sequences if s.split == HELDOUT]
    texts = [p for p in data.texts if p.split == HELDOUT] + [p for p in data.pairs if p.split == HELDOUT]
    vis_hit = vis_base = vis_n = txt_hit = txt_n = 0
    # (batch, row, position) masked at least once: the five maskings repeat positions, so these, not
    # vis_n / txt_n, are the number of trials the accuracies stand on.
    vis_seen: set[tuple[int, int, int]] = set()
    txt_seen: set[tuple[int, int, int]] = set()
    mft = c.visual_offset + most_frequent_token
    batches = [([None] * len(seqs[i:i + 64]), [corpus.visual(s) for s in seqs[i:i + 64]]) for i in range(0, len(seqs), 64)]
    batches += [([corpus.text_ids[p.text] for p in texts[i:i + 64]], [None] * len(texts[i:i + 64]))
                for i in range(0, len(texts), 64)]
    with torch.no_grad():
        # Five maskings of the same held-out rows: a small library masks only a few dozen tokens per pass.
        for k, (rows_t, rows_v) in enumerate(batches * 5):
            masked, labels = mask_tokens(build_inputs(rows_t, rows_v, c, device=device), c, gen)
            hidden = vb(masked["input_ids"], masked["token_type_ids"], masked["attention_mask"])
            vis = labels >= c.visual_offset
            txt = (labels >= 0) & (labels < c.text_vocab_size)
            b = k % len(batches)
            vis_seen.update((b, r, q) for r, q in vis.nonzero().cpu().tolist())
            txt_seen.update((b, r, q) for r, q in txt.nonzero().cpu().tolist())
            if int(vis.sum()):
                pred = vb.visual_logits(hidden[vis]).argmax(-1) + c.visual_offset
                vis_hit += int((pred == labels[vis]).sum())
                vis_base += int((labels[vis] == mft).sum())
                vis_n += int(vis.sum())
            if int(txt.sum()):
                txt_hit += int((vb.text_logits(hidden[txt]).argmax(-1) == labels[txt]).sum())
                txt_n += int(txt.sum())
    return {
        "visual_mlm_acc": round(vis_hit / vis_n, 4) if vis_n else None,
        "visual_mlm_baseline_acc": round(vis_base / vis_n, 4) if vis_n else None,
        "visual_masked": vis_n,
        "visual_masked_distinct": len(vis_seen),
        "visual_sequences": len(seqs),
        "text_mlm_acc": round(txt_hit / txt_n, 4) if txt_n else None,
        "text_masked": txt_n,
        "text_masked_distinct": len(txt_seen),
        "text_examples": len(texts),
    }


def alignment_auc(vb: Any, corpus: Corpus, pairs: Sequence[Pair], gen: Any) -> dict[str, Any]:
    """VideoBERT's alignment AUC on held-out pairs, half of them given the video of another unit."""
    from models.videobert import align_scores
    from models.videobert_inputs import shuffle_negatives

    value, labels = None, []
    if pairs:
        t_ids, v_ids, labels = shuffle_negatives([corpus.text_ids[p.text] for p in pairs],
                                                 [corpus.visual(p) for p in pairs], gen, 0.5,
                                                 groups=[corpus.unit(p) for p in pairs])
        value = auc(align_scores(vb, t_ids, v_ids).tolist(), labels)
    # Negatives need a donor from another split unit: a library with one held-out unit has none.
    positives = int(sum(1 for y in labels if y == 1))
    return {"align_auc": value, "pairs": len(pairs), "speech_pairs": sum(1 for p in pairs if not p.weak),
            "align_positives": positives, "align_negatives": len(labels) - positives}


def retrieval_r1(vb: Any, cbt: Any, corpus: Corpus, groups: Sequence[Sequence[Pair]],
                 conse: Callable[[int], np.ndarray], device: str) -> dict[str, Any]:
    """R@1 among in-batch candidates (groups of distinct texts): CBT both ways and VideoBERT's alignment head
    text->video, against the concept-tag vectors (``conse``: one file's, per clip) they would replace."""
    import torch

    from models.videobert import align_scores

    found: dict[str, list[float]] = {k: [] for k in ("cbt_v2t", "cbt_t2v", "conse_v2t", "conse_t2v", "align_t2v")}
    sizes: list[int] = []
    for group in groups:
        emb = corpus.text_vectors([p.text for p in group])
        t = np.stack([emb[p.text] for p in group])
        feats, pad = corpus.windows(group, cbt.config.max_len, cbt.config.feature_dim, device)
        with torch.no_grad():
            w = cbt.embed_window(feats, pad).float().cpu().numpy()
        tags = np.stack([_unit(conse(p.media)[p.first : p.last + 1]) for p in group])
        sim_cbt, sim_conse = w @ t.T, tags @ t.T
        found["cbt_v2t"].append(r1(sim_cbt))
        found["cbt_t2v"].append(r1(sim_cbt.T))
        found["conse_v2t"].append(r1(sim_conse))
        found["conse_t2v"].append(r1(sim_conse.T))
        n = len(group)
        tt = [corpus.text_ids[p.text] for p in group for _ in range(n)]
        vv = [corpus.visual(q) for _ in range(n) for q in group]
        found["align_t2v"].append(r1(align_scores(vb, tt, vv).numpy().reshape(n, n)))
        sizes.append(n)
    weights = np.asarray(sizes, float)
    out: dict[str, Any] = {f"{k}_r1": round(float(np.average(v, weights=weights)), 4) if v else None
                           for k, v in found.items()}
    out["retrieval_groups"] = len(groups)
    out["retrieval_candidates"] = int(max(sizes)) if sizes else 0
    out["retrieval_queries"] = int(sum(sizes))
    return out


def concept_baseline(corpus: Corpus, store: FeatureStore, labels: np.ndarray, top_k: int) -> Callable[[int], np.ndarray]:
    """The concept-tag (pre-training) visual vectors of one file's clips, the baseline CBT replaces; cached per file."""
    from indexer.embed import concept_vectors

    cache: dict[int, np.ndarray] = {}

    def vectors(media: int) -> np.ndarray:
        if media not in cache:
            probs = store.load(corpus.data.media[media].content_hash, "probs").astype(np.float32)
            cache[media] = concept_vectors(probs, labels, top_k)
        return cache[media]

    return vectors


def evaluate(vb: Any, cbt: Any, corpus: Corpus, most_frequent_token: int, conse: Callable[[int], np.ndarray],
             seed: int, device: str, report: Report) -> dict[str, Any]:
    """The held-out metrics of one run (``heldout`` in metrics.json) from its loaded VideoBERT and CBT."""
    import torch

    gen = torch.Generator().manual_seed(12345)  # masking and negatives: the same for every run
    report(0.0, "masked tokens")
    h = masked_token_accuracy(vb, corpus, most_frequent_token, gen, device)
    report(0.3, "alignment")
    pairs = [p for p in corpus.data.pairs if p.split == HELDOUT]
    h.update(alignment_auc(vb, corpus, pairs, gen))
    report(0.5, "retrieval")
    groups = distinct_groups(pairs, 16, np.random.default_rng([seed, 3]), min_size=MIN_CANDIDATES)
    h.update(retrieval_r1(vb, cbt, corpus, groups, conse, device))
    # The number the issue asks for: CBT's R@1 of the aligned sentence among in-batch candidates.
    h["cbt_r1"] = h["cbt_v2t_r1"]
    h["samples"] = judge(h)
    report(1.0, "")
    return h


def recommend(heldout: dict[str, Any], mode: str) -> dict[str, bool]:
    """Which trained models to switch on (see docs/ARCHITECTURE.md, "Training").

    auto: CBT when its held-out retrieval R@1 (mean of both directions) beats the concept-tag vectors'
    on the same candidates; VideoBERT's rerank when its alignment AUC is above chance and its
    text->video R@1 beats that of the visual vectors that will be live (CBT's if switched on, else
    the concept tags'). Every metric the rule compares must be judgeable (:func:`judge`): a held-out
    set too small to mean anything switches nothing on. always / never: as named (a person's choice,
    whatever the held-out sizes).
    """
    if mode in ("always", "never"):
        return {k: mode == "always" for k in KINDS}
    ok = judge(heldout)

    def mean(*keys: str) -> float | None:
        vals = [heldout.get(k) for k in keys]
        if any(v is None or not ok[k]["judgeable"] for k, v in zip(keys, vals)):
            return None
        return float(np.mean(vals))

    cbt_r1, conse_r1 = mean("cbt_v2t_r1", "cbt_t2v_r1"), mean("conse_v2t_r1", "conse_t2v_r1")
    cbt_on = cbt_r1 is not None and conse_r1 is not None and cbt_r1 > conse_r1
    live_t2v = mean("cbt_t2v_r1") if cbt_on else mean("conse_t2v_r1")
    align_auc, align = mean("align_auc"), mean("align_t2v_r1")
    vb_on = align_auc is not None and align_auc > 0.5 and align is not None and live_t2v is not None and align > live_t2v
    return {"cbt": bool(cbt_on), "videobert": bool(vb_on)}


# What each kind's part of the rule compares (every one must be judgeable).
_RULE_METRICS = {"cbt": ("cbt_v2t_r1", "cbt_t2v_r1", "conse_v2t_r1", "conse_t2v_r1"),
                 "videobert": ("align_auc", "align_t2v_r1", "conse_t2v_r1")}


def too_small(n: int) -> str:
    """What a held-out number too small to judge is shown as."""
    return f"held-out too small to judge ({n})"


def left_off(heldout: dict[str, Any], mode: str) -> dict[str, str]:
    """Why each model the rule leaves off is left off: ``--activate never``, a held-out set too small to
    judge (with its size), or a loss to the baseline."""
    rec = recommend(heldout, mode)
    if mode == "never":
        return {k: "--activate never" for k in KINDS}
    ok = judge(heldout)
    out: dict[str, str] = {}
    for kind in KINDS:
        if rec.get(kind):
            continue
        small = next((k for k in _RULE_METRICS[kind] if not ok[k]["judgeable"]), None)
        out[kind] = too_small(ok[small]["n"]) if small else "did not beat its baseline on held-out data"
    return out
