"""CBT: shapes and padding, masked-feature NCE and cross-modal NCE on toy data, whole-video embedding, checkpoints."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.cbt import CBT, CBTConfig, embed_video, load_checkpoint, save_checkpoint, windows

FEAT, TEXT, LATENT = 48, 24, 6


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models: one thread is several times faster than two on cores shared with other processes."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_config(**kw: object) -> CBTConfig:
    base = dict(feature_dim=FEAT, hidden=64, layers=2, heads=4, intermediate=128, text_dim=TEXT, max_len=8,
                dropout=0.0, temperature=0.1)
    base.update(kw)
    return CBTConfig(**base)  # type: ignore[arg-type]


class Toy:
    """Windows whose clips and sentence share a latent z: clip t = relu(A (z + 0.3 t u)) + noise, text = B z.

    Clips change smoothly through a window (so a masked clip is predictable from its neighbours), and a
    window's sentence is a fixed linear function of what its clips show (so text retrieval is learnable).
    """

    def __init__(self, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.a = torch.randn(LATENT, FEAT, generator=g)
        self.b = torch.randn(LATENT, TEXT, generator=g)
        self.u = torch.randn(LATENT, generator=g)

    def batch(self, n: int, g: torch.Generator, length: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z = torch.randn(n, LATENT, generator=g)
        drift = 0.3 * torch.randn(n, LATENT, generator=g)
        t = torch.arange(length, dtype=torch.float32)
        zt = z[:, None] + t[None, :, None] * drift[:, None]
        feats = torch.relu(zt @ self.a) + 0.05 * torch.randn(n, length, FEAT, generator=g)
        pad = torch.zeros(n, length, dtype=torch.bool)
        lengths = torch.randint(2, length + 1, (n,), generator=g)
        pad[torch.arange(length)[None, :] >= lengths[:, None]] = True
        return feats, pad, F.normalize(z @ self.b, dim=-1)


def train(model: CBT, toy: Toy, steps: int, batch: int = 32, lr: float = 2e-3) -> None:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    for step in range(steps):
        g = torch.Generator().manual_seed(step)
        feats, pad, text = toy.batch(batch, g)
        out = model.loss(feats, pad, text, g)
        opt.zero_grad()
        out["total"].backward()
        opt.step()


def test_shapes_padding_and_units() -> None:
    torch.manual_seed(0)
    model = CBT(tiny_config()).eval()
    feats, pad, _ = Toy().batch(5, torch.Generator().manual_seed(1))
    pad[0] = False
    pad[1, 3:] = True
    states = model(feats, pad)
    assert states.shape == (5, 8, 64)
    clips = model.embed_clips(feats, pad)
    assert clips.shape == (5, 8, TEXT)
    norms = clips.norm(dim=-1)
    torch.testing.assert_close(norms[~pad], torch.ones(int((~pad).sum())))
    assert (norms[pad] == 0).all()
    window = model.embed_window(feats, pad)
    assert window.shape == (5, TEXT)
    torch.testing.assert_close(window.norm(dim=-1), torch.ones(5))
    # Padding is invisible: row 1 with 3 real clips equals the same 3 clips alone.
    torch.testing.assert_close(model.embed_clips(feats[1:2, :3])[0], clips[1, :3], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(model.embed_window(feats[1:2, :3])[0], window[1], atol=1e-5, rtol=1e-4)
    # Raw feature scale does not matter (LayerNorm on the input).
    torch.testing.assert_close(model.embed_window(feats * 5, pad), window, atol=1e-4, rtol=1e-3)
    with pytest.raises(ValueError, match=r"features \[B, T <= 8"):
        model(torch.zeros(2, 9, FEAT))
    with pytest.raises(ValueError, match="at least one real"):
        model(torch.zeros(2, 3, FEAT), torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="text_emb"):
        model.cross_modal_nce(feats, pad, torch.zeros(5, TEXT + 1))


def test_masked_positions() -> None:
    model = CBT(tiny_config(mask_prob=0.3))
    pad = torch.zeros(400, 8, dtype=torch.bool)
    pad[:, 5:] = True
    pad[::7, 1:] = True  # windows of one clip
    masked = model.choose_masked(pad, torch.Generator().manual_seed(0))
    assert not (masked & pad).any()
    assert (masked.sum(1) >= 1).all()
    assert 0.25 < float(masked[~pad].float().mean()) < 0.45
    again = model.choose_masked(pad, torch.Generator().manual_seed(0))
    assert torch.equal(masked, again)


def test_losses_fall_and_retrieval_beats_chance() -> None:
    torch.manual_seed(0)
    toy = Toy(seed=0)
    model = CBT(tiny_config())
    g = torch.Generator().manual_seed(10_000)
    feats, pad, text = toy.batch(32, g)  # held out: z never seen in training

    def evaluate() -> dict[str, float]:
        model.eval()
        with torch.no_grad():
            out = model.loss(feats, pad, text, torch.Generator().manual_seed(5))
        return {k: float(v) for k, v in out.items()}

    before = evaluate()
    train(model, toy, 150)
    after = evaluate()
    assert after["masked_nce"] < 0.7 * before["masked_nce"], (before, after)
    assert after["cross"] < 0.5 * before["cross"], (before, after)
    assert after["clip"] < 0.6 * before["clip"], (before, after)
    assert after["total"] < before["total"]
    # Chance is 1/32 for both.
    assert after["r1"] > 0.4 and after["r1_text_to_video"] > 0.4, after
    # The masked clip is picked among all ~150 real clips of the batch (chance < 0.01), its smooth neighbours
    # included: ten times chance is a real pick.
    n_real = int((~pad).sum())
    assert after["masked_acc"] > 10 / n_real > before["masked_acc"], (before, after)
    # Each clip on its own lands nearest its own window's sentence far more often than chance.
    model.eval()
    with torch.no_grad():
        clips = model.embed_clips(feats, pad)
    real = ~pad
    owner = torch.arange(32)[:, None].expand_as(pad)[real]
    clip_r1 = float(((clips[real] @ text.T).argmax(1) == owner).float().mean())
    assert clip_r1 > 0.25, clip_r1


def test_text_free_windows_and_no_text() -> None:
    model = CBT(tiny_config())
    feats, pad, text = Toy().batch(6, torch.Generator().manual_seed(2))
    valid = torch.tensor([True, False, True, True, False, True])
    out = model.loss(feats, pad, text, torch.Generator().manual_seed(0), text_valid=valid)
    assert out["cross"] > 0 and out["clip"] > 0 and torch.isfinite(out["total"])
    only_masked = model.loss(feats, pad, None, torch.Generator().manual_seed(0))
    assert float(only_masked["cross"]) == 0.0
    torch.testing.assert_close(only_masked["total"], model.config.masked_weight * only_masked["masked_nce"])
    out["total"].backward()
    assert model.to_text[0].weight.grad is not None


def test_embed_video_and_windows() -> None:
    assert windows(5, 8) == [(0, 5)]
    assert windows(20, 8) == [(0, 8), (4, 12), (8, 16), (12, 20)]
    assert windows(21, 8)[-1] == (13, 21)
    covered = set().union(*(range(s, e) for s, e in windows(37, 8)))
    assert covered == set(range(37))
    with pytest.raises(ValueError, match="n_clips >= 1"):
        windows(0, 8)
    torch.manual_seed(0)
    model = CBT(tiny_config())
    feats = np.random.default_rng(0).normal(size=(21, FEAT)).astype(np.float16)
    v = embed_video(model, feats)
    assert v.shape == (21, TEXT) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    # A short video is one window: the same as embed_clips.
    short = embed_video(model, feats[:5])
    with torch.no_grad():
        direct = model.embed_clips(torch.from_numpy(feats[:5].astype(np.float32))[None])[0].numpy()
    np.testing.assert_allclose(short, direct, atol=1e-5)
    with pytest.raises(ValueError, match=f"features \\[N > 0, {FEAT}\\]"):
        embed_video(model, np.zeros((3, 5), np.float32))


def _save(path: Path, model: CBT, config: CBTConfig, extra: dict | None = None) -> Path:
    with path.open("wb") as f:
        save_checkpoint(f, model, config, extra)
    return path


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(3)
    c = tiny_config(dropout=0.1)
    model = CBT(c)
    extra = {"epoch": 2, "metrics": {"r1": 0.5}}
    path = _save(tmp_path / "cbt.pt", model, c, extra)
    loaded, config, got = load_checkpoint(path)
    assert config == c and got == extra and not loaded.training
    sd, sd2 = model.state_dict(), loaded.state_dict()
    assert sd.keys() == sd2.keys()
    for k in sd:
        assert torch.equal(sd[k], sd2[k]), k
    feats, pad, _ = Toy().batch(3, torch.Generator().manual_seed(4))
    model.eval()
    assert torch.equal(model.embed_clips(feats, pad), loaded.embed_clips(feats, pad))
    # numpy scalars (np.float64 / np.str_ subclass float / str) are stored as plain values weights_only can load.
    buffer = io.BytesIO()  # any binary file object: the caller decides where (and how atomically) it goes
    save_checkpoint(buffer, model, c, {"r1": np.float64(0.25), "n": np.int64(3), "ok": np.bool_(True),
                                       "m": {"name": np.str_("a"), "l": [np.float64(1.0)]}})
    buffer.seek(0)
    got = load_checkpoint(buffer)[2]
    assert got == {"r1": 0.25, "n": 3, "ok": True, "m": {"name": "a", "l": [1.0]}}
    assert type(got["r1"]) is float and type(got["n"]) is int and type(got["m"]["name"]) is str
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a CBT checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_cbt_visual_cache_keeps_vectors_and_version_in_one_file(tmp_path: Path) -> None:
    """The cached vectors' model id is in the array name: no separate version stamp to get out of step."""
    from indexer.training.registry import CbtVisual, ModelRecord, ModelUnavailableError
    from store.features import FeatureStore

    torch.manual_seed(5)
    c = tiny_config()
    paths = [_save(tmp_path / f"cbt{i}.pt", CBT(c), c) for i in (1, 2)]
    a = CbtVisual(ModelRecord(1, "cbt", "run-0001", paths[0], {}, True))
    b = CbtVisual(ModelRecord(2, "cbt", "run-0002", paths[1], {}, False))
    store = FeatureStore(tmp_path / "features")
    key = "ab" * 16
    feats = np.random.default_rng(0).normal(size=(5, FEAT)).astype(np.float16)
    store.write(key, {"features": feats})
    # A cache left by an older vidx (vectors and version as two files): ignored and removed.
    store.put(key, {"cbt_visual": np.zeros((5, TEXT), np.float16), "cbt_version": np.asarray(["cbt/1"])})
    va = a.vectors(store, key)
    assert va.shape == (5, TEXT) and va.dtype == np.float16 and np.abs(va).sum() > 0
    names = sorted(p.stem for p in store.path(key).glob("cbt*.npy"))
    assert names == ["cbt_visual_1"]
    vb = b.vectors(store, key)
    assert sorted(p.stem for p in store.path(key).glob("cbt*.npy")) == ["cbt_visual_2"]
    assert not np.array_equal(va, vb)
    # A model whose checkpoint is gone still serves its cached vectors; it fails (one line) only when it must run.
    paths[1].unlink()
    gone = CbtVisual(ModelRecord(2, "cbt", "run-0002", paths[1], {}, True))
    assert np.array_equal(gone.vectors(store, key), vb)
    store.write("cd" * 16, {"features": feats})  # a new file: its vectors need the model
    with pytest.raises(ModelUnavailableError, match=r"cbt model 2 \(run-0002\).*is missing.*vidx models deactivate cbt"):
        gone.vectors(store, "cd" * 16)
    paths[0].write_bytes(b"not a checkpoint")
    broken = CbtVisual(ModelRecord(1, "cbt", "run-0001", paths[0], {}, True))
    with pytest.raises(ModelUnavailableError, match="cannot be loaded"):
        broken.vectors(store, key)
