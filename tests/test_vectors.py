"""The vector index: one congruence suite over both backends (FAISS and Qdrant local mode)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from store.vectors import (
    FaissIndex,
    Filter,
    Hit,
    IndexLockedError,
    Point,
    QdrantIndex,
    VectorIndex,
    open_index,
    point_id,
)

pytest.importorskip("faiss")
pytest.importorskip("qdrant_client")

REPO = Path(__file__).resolve().parents[1]
DIMS = {"speech": 32, "visual": 24}
BACKENDS = ["faiss", "qdrant"]
PER_MEDIA = 10


def unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_points(
    n: int,
    seed: int = 0,
    dims: dict[str, int] = DIMS,
    no_visual_every: int = 0,
    start: int = 0,
) -> tuple[list[Point], dict[str, np.ndarray]]:
    """n points with media_id = i // PER_MEDIA, has_speech on even clips; every k-th lacks 'visual'."""
    rng = np.random.default_rng(seed)
    vecs = {name: unit(rng, n, d) for name, d in dims.items()}
    points = []
    for j in range(n):
        i = start + j
        v = {name: vecs[name][j] for name in dims}
        if no_visual_every and i % no_visual_every == 0:
            del v["visual"]
        payload = {
            "media_id": i // PER_MEDIA,
            "clip_index": i % PER_MEDIA,
            "start": 2.0 * (i % PER_MEDIA),
            "end": 2.0 * (i % PER_MEDIA) + 2.0,
            "has_speech": i % 2 == 0,
            "tags": [f"t{i % 3}"],
        }
        points.append(Point(id=point_id(f"{i // PER_MEDIA:08x}", i % PER_MEDIA, "v1"), vectors=v, payload=payload))
    return points, vecs


def brute(points: list[Point], name: str, q: np.ndarray, k: int, keep=lambda p: True) -> list[tuple[str, float]]:
    cands = [p for p in points if name in p.vectors and keep(p)]
    if not cands:
        return []
    m = np.stack([np.asarray(p.vectors[name], np.float32) for p in cands])
    s = m @ (q / np.linalg.norm(q))
    order = np.argsort(-s)[:k]
    return [(cands[i].id, float(s[i])) for i in order]


def open_backend(backend: str, path: Path, dims: dict[str, int] = DIMS, **kw) -> VectorIndex:
    return open_index(backend, dims, path=path / backend, **kw)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def index(backend: str, tmp_path: Path):
    idx = open_backend(backend, tmp_path)
    yield idx
    idx.close()


def ids(hits: list[Hit]) -> list[str]:
    return [h.id for h in hits]


# ---------------------------------------------------------------------------------------------


def test_search_returns_exact_nearest(index: VectorIndex) -> None:
    points, _ = make_points(200, no_visual_every=7)
    index.upsert(points)
    assert index.count() == 200
    rng = np.random.default_rng(1)
    for name, d in DIMS.items():
        for q in unit(rng, 10, d):
            hits = index.search(name, q, 10)
            want = brute(points, name, q, 10)
            assert ids(hits) == [i for i, _ in want]
            np.testing.assert_allclose([h.score for h in hits], [s for _, s in want], atol=1e-4)
            assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))


def test_backends_agree(tmp_path: Path) -> None:
    points, vecs = make_points(300, seed=3, no_visual_every=5)
    rng = np.random.default_rng(4)
    filters = [None, Filter(media_ids=frozenset({1, 7, 22, 29})), Filter(has_speech=False),
               Filter(media_ids=frozenset(range(0, 30, 3)), has_speech=True)]
    # perturbed copies of stored vectors and random queries
    queries = {
        name: np.vstack([vecs[name][rng.integers(0, 300, 10)] + 0.05 * unit(rng, 10, d), unit(rng, 10, d)])
        for name, d in DIMS.items()
    }
    results = {}
    for backend in BACKENDS:
        with open_backend(backend, tmp_path) as idx:
            idx.upsert(points)
            out = []
            for name, qs in queries.items():
                for f in filters:
                    out.append(idx.search_batch(name, qs, 10, f))
            results[backend] = out
            assert idx.count() == 300 and idx.media_ids() == set(range(30))
    for a, b in zip(results["faiss"], results["qdrant"], strict=True):
        for ha, hb in zip(a, b, strict=True):
            assert ids(ha) == ids(hb)
            np.testing.assert_allclose([h.score for h in ha], [h.score for h in hb], atol=1e-4)
            assert [h.payload for h in ha] == [h.payload for h in hb]


def test_search_batch_matches_search(index: VectorIndex) -> None:
    points, _ = make_points(200, seed=5)
    index.upsert(points)
    qs = unit(np.random.default_rng(6), 5, DIMS["speech"])
    batch = index.search_batch("speech", qs, 7, Filter(has_speech=True))
    assert [ids(b) for b in batch] == [ids(index.search("speech", q, 7, Filter(has_speech=True))) for q in qs]


def test_hit_payload(index: VectorIndex) -> None:
    points, vecs = make_points(30, seed=7)
    index.upsert(points)
    hit = index.search("speech", vecs["speech"][13], 1)[0]
    assert hit.id == points[13].id and hit.score == pytest.approx(1.0, abs=1e-5)
    assert hit.payload == {"media_id": 1, "clip_index": 3, "start": 6.0, "end": 8.0, "has_speech": False, "tags": ["t1"]}


def test_upsert_is_idempotent_and_replaces(index: VectorIndex) -> None:
    points, vecs = make_points(100, seed=8)
    index.upsert(points)
    index.upsert(points)
    assert index.count() == 100
    new_points, new_vecs = make_points(100, seed=9)  # same ids, new vectors and payloads
    new_points = [
        Point(p.id, p.vectors, {**p.payload, "has_speech": not p.payload["has_speech"], "tags": []})
        for p in new_points[:50]
    ]
    index.upsert(new_points)
    assert index.count() == 100
    for i in (0, 17, 49):
        hit = index.search("speech", new_vecs["speech"][i], 1)[0]
        assert hit.id == points[i].id and hit.score == pytest.approx(1.0, abs=1e-5)
        assert hit.payload["has_speech"] is (i % 2 == 1) and hit.payload["tags"] == []
        old = index.search("speech", vecs["speech"][i], 1)[0]
        assert not (old.id == points[i].id and old.score > 0.999)  # the old vector is gone
    # a replacement that drops a vector name removes the point from that name's searches
    index.upsert([Point(points[60].id, {"speech": vecs["speech"][60]}, points[60].payload)])
    assert points[60].id not in ids(index.search("visual", vecs["visual"][60], 100))
    # duplicates within one batch: the last wins
    index.upsert([new_points[0], points[0]])
    assert index.search("speech", vecs["speech"][0], 1)[0].id == points[0].id
    assert index.count() == 100


def test_missing_vector_name_never_matches(index: VectorIndex) -> None:
    points, vecs = make_points(90, seed=10, no_visual_every=3)
    index.upsert(points)
    lacking = {p.id for p in points if "visual" not in p.vectors}
    assert len(lacking) == 30
    for i in range(0, 90, 3):
        hits = index.search("visual", vecs["visual"][i], 90)  # the point's own (unstored) vector
        assert len(hits) == 60 and not lacking & set(ids(hits))
    assert len(index.search("speech", vecs["speech"][0], 90)) == 90
    # a point with no vectors at all is stored and counted, but never found
    bare = Point(point_id("ff" * 8, 0, "v1"), {}, {**points[0].payload, "media_id": 999})
    index.upsert([bare])
    assert index.count() == 91 and 999 in index.media_ids()
    assert bare.id not in ids(index.search("speech", vecs["speech"][0], 200))


def test_filters(index: VectorIndex) -> None:
    points, vecs = make_points(240, seed=11)
    index.upsert(points)
    by_id = {p.id: p for p in points}
    q = unit(np.random.default_rng(12), 1, DIMS["speech"])[0]
    cases = [
        (Filter(media_ids=frozenset({3, 20})), lambda p: p.payload["media_id"] in {3, 20}, 20),
        (Filter(has_speech=True), lambda p: p.payload["has_speech"], 120),
        (Filter(has_speech=False), lambda p: not p.payload["has_speech"], 120),
        (Filter(media_ids=frozenset({3, 20, 21}), has_speech=False),
         lambda p: p.payload["media_id"] in {3, 20, 21} and not p.payload["has_speech"], 15),
    ]
    for f, keep, n_match in cases:
        hits = index.search("speech", q, 10, f)
        assert len(hits) == 10  # enough match: the limit is filled
        assert all(keep(by_id[h.id]) for h in hits)
        assert ids(hits) == [i for i, _ in brute(points, "speech", q, 10, keep)]
        assert len(index.search("speech", q, 1000, f)) == n_match  # all of them, no more
    assert index.search("speech", q, 10, Filter(media_ids=frozenset())) == []
    assert index.search("speech", q, 10, Filter(media_ids=frozenset({12345}))) == []


def test_delete_count_media_ids_clear(index: VectorIndex) -> None:
    points, vecs = make_points(100, seed=13)
    index.upsert(points)
    assert index.count() == 100 and index.media_ids() == set(range(10))
    assert index.delete_media([2, 5, 777]) == 20
    assert index.delete_media([2]) == 0
    assert index.delete_media([]) == 0
    assert index.count() == 80 and index.media_ids() == set(range(10)) - {2, 5}
    hits = index.search("speech", vecs["speech"][25], 200)
    assert len(hits) == 80 and all(h.payload["media_id"] not in (2, 5) for h in hits)
    assert hits[0].id != points[25].id
    # re-adding deleted media works
    index.upsert(points[20:30])
    assert index.count() == 90 and index.search("speech", vecs["speech"][25], 1)[0].id == points[25].id
    index.clear()
    assert index.count() == 0 and index.media_ids() == set()
    assert index.search("speech", vecs["speech"][0], 10) == []
    index.upsert(points[:5])
    assert index.count() == 5


def test_persistence(backend: str, tmp_path: Path) -> None:
    points, vecs = make_points(150, seed=14, no_visual_every=4)
    qs = unit(np.random.default_rng(15), 8, DIMS["visual"])
    with open_backend(backend, tmp_path) as idx:
        idx.upsert(points)
        idx.delete_media([0, 7])
        idx.flush()
        idx.upsert(points[100:110])  # pending at close: close() persists it too
        assert idx.delete_media([14]) == 10
        before = idx.search_batch("visual", qs, 10, Filter(has_speech=True))
    with open_backend(backend, tmp_path) as idx:
        assert idx.count() == 120 and idx.media_ids() == set(range(15)) - {0, 7, 14}
        after = idx.search_batch("visual", qs, 10, Filter(has_speech=True))
        assert [ids(a) for a in after] == [ids(b) for b in before]
        for a, b in zip(after, before):
            np.testing.assert_allclose([h.score for h in a], [h.score for h in b], atol=1e-5)
            assert [h.payload for h in a] == [h.payload for h in b]
        idx.clear()
    with open_backend(backend, tmp_path) as idx:
        assert idx.count() == 0


def test_failed_block_publishes_nothing_unflushed(tmp_path: Path) -> None:
    """FAISS: a ``with`` block that raises drops its unflushed writes (a cleared index is not published)."""
    points, _ = make_points(100, seed=21)
    with open_backend("faiss", tmp_path) as idx:
        idx.upsert(points)
    with pytest.raises(RuntimeError, match="boom"):
        with open_backend("faiss", tmp_path) as idx:
            idx.clear()
            idx.upsert(points[:10])
            raise RuntimeError("boom")
    with open_backend("faiss", tmp_path) as idx:
        assert idx.count() == 100  # the lock was released, and the old generation stands
        idx.delete_media([0])
        idx.flush()
        with pytest.raises(RuntimeError, match="boom"):
            with idx:
                idx.delete_media([1])
                raise RuntimeError("boom")
    with open_backend("faiss", tmp_path) as idx:
        assert idx.media_ids() == {m for m in range(100 // PER_MEDIA)} - {0}


def test_validation(index: VectorIndex) -> None:
    points, _ = make_points(3)
    index.upsert(points)
    good = np.ones(DIMS["speech"], np.float32)
    with pytest.raises(ValueError, match="32"):
        index.search("speech", np.ones(31, np.float32), 5)
    with pytest.raises(ValueError, match="unknown vector name"):
        index.search("audio", good, 5)
    with pytest.raises(ValueError, match="unknown vector name"):
        index.search_batch("audio", good[None, :], 5)
    with pytest.raises(ValueError, match="limit"):
        index.search("speech", good, 0)
    with pytest.raises(ValueError, match="finite"):
        index.search("speech", np.full(DIMS["speech"], np.nan, np.float32), 5)
    with pytest.raises(ValueError, match=r"\(Q, 32\)"):
        index.search_batch("speech", good, 5)
    bad = [
        Point(points[0].id, {"speech": np.ones(5)}, points[0].payload),
        Point(points[0].id, {"audio": good}, points[0].payload),
        Point(points[0].id, {"speech": np.full(32, np.inf)}, points[0].payload),
        Point(points[0].id, {"speech": np.zeros(32)}, points[0].payload),
        Point("not-a-uuid", {"speech": good}, points[0].payload),
        Point(points[0].id, {"speech": good}, {"media_id": 1}),
        Point(points[0].id, {"speech": good}, {**points[0].payload, "media_id": "1"}),
        Point(points[0].id, {"speech": good}, {**points[0].payload, "blob": object()}),
    ]
    for p in bad:
        with pytest.raises(ValueError):
            index.upsert([points[1], p])
    assert index.count() == 3  # a rejected batch writes nothing
    with pytest.raises(ValueError, match="unknown vector index backend"):
        open_index("milvus", DIMS)


def test_reopen_with_other_dims_fails(backend: str, tmp_path: Path) -> None:
    with open_backend(backend, tmp_path) as idx:
        idx.upsert(make_points(5)[0])
    with pytest.raises(ValueError, match="expected"):
        open_backend(backend, tmp_path, dims={"speech": 32, "visual": 16})


def test_point_id() -> None:
    a = point_id("ab" * 16, 3, "minilm-1")
    assert a == point_id("ab" * 16, 3, "minilm-1") == "c10af60f-640e-5988-bdee-f3c9dd4dd535"
    others = {point_id("ab" * 16, 4, "minilm-1"), point_id("ab" * 16, 3, "minilm-2"), point_id("cd" * 16, 3, "minilm-1"),
              point_id("ab" * 16 + "3", 0, "minilm-1")}
    assert len(others | {a}) == 5
    import uuid

    assert uuid.UUID(a).version == 5
    with pytest.raises(ValueError):
        point_id("", 0, "v")
    with pytest.raises(ValueError):
        point_id("ab", -1, "v")


# --- FAISS only ------------------------------------------------------------------------------


def clustered(n: int, d: int, seed: int) -> np.ndarray:
    """Embedding-like data: clips of a media share a direction, in a low-dimensional subspace."""
    rng = np.random.default_rng(seed)
    r = 16
    basis = np.linalg.qr(rng.standard_normal((d, r)))[0].T
    media = rng.standard_normal(((n + PER_MEDIA - 1) // PER_MEDIA, r))
    z = 0.8 * media[np.arange(n) // PER_MEDIA] + rng.standard_normal((n, r))
    x = (z @ basis + 0.02 * rng.standard_normal((n, d))).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_faiss_hnsw_recall_and_filters(tmp_path: Path) -> None:
    n, d = 5000, 64
    dims = {"speech": d, "visual": d}
    x = clustered(n, d, seed=20)
    y = clustered(n, d, seed=21)
    points, _ = make_points(n, dims=dims)
    points = [Point(p.id, {"speech": x[i], "visual": y[i]}, p.payload) for i, p in enumerate(points)]
    rng = np.random.default_rng(22)
    qs = np.vstack([x[rng.integers(0, n, 50)] + 0.02 * unit(rng, 50, d), clustered(50, d, seed=20)[::-1]])
    qs /= np.linalg.norm(qs, axis=1, keepdims=True)
    idx = FaissIndex(tmp_path / "f", dims, hnsw_threshold=2000)
    idx.upsert(points[:1500])
    assert idx.stats()["speech"]["kind"] == "flat"
    idx.upsert(points[1500:])
    assert idx.stats()["speech"]["kind"] == "hnsw"

    def recall(q_ids: list[list[str]], keep=lambda i: True) -> float:
        found = 0
        for q, got in zip(qs, q_ids):
            want = [i for i, _ in brute_fast(x, points, q, 10, keep)]
            found += len(set(got) & set(want))
        return found / (10 * len(qs))

    got = [ids(h) for h in idx.search_batch("speech", qs, 10)]
    assert recall(got) >= 0.95
    # filtered HNSW: a broad filter goes through the ID selector, a narrow one is exact
    for media, min_recall in ((frozenset(range(0, 500, 2)), 0.95), (frozenset({3, 99, 250}), 1.0)):
        f = Filter(media_ids=media, has_speech=True)
        keep = lambda i, media=media: (i // PER_MEDIA) in media and i % 2 == 0  # noqa: E731
        res = idx.search_batch("speech", qs, 10, f)
        for hits in res:
            assert len(hits) == min(10, 5 * len(media))
            assert all(h.payload["media_id"] in media and h.payload["has_speech"] for h in hits)
        assert recall([ids(h) for h in res], keep) >= min_recall
    # with a narrow beam the same kind of filter goes through HNSW + IDSelectorBitmap
    exact_calls = []
    real_exact = idx.policy.exact_subset
    idx.policy.exact_subset = lambda *a: exact_calls.append(1) or real_exact(*a)  # type: ignore[method-assign]
    idx.policy.ef_search = 16
    f = Filter(has_speech=True)
    res = idx.search_batch("speech", qs, 10, f)
    assert not exact_calls
    assert all(len(h) == 10 and all(x.payload["has_speech"] for x in h) for h in res)
    assert recall([ids(h) for h in res], lambda i: i % 2 == 0) >= 0.8
    idx.policy.ef_search = None
    del idx.policy.exact_subset
    # replaying the same points changes nothing in HNSW
    idx.upsert(points[:300])
    assert idx.stats()["speech"]["stale"] == 0 and idx.count() == n
    # adding new media is an HNSW add, not a rebuild
    hnsw = idx._named["speech"].index
    more, _ = make_points(200, seed=23, dims=dims, start=n)
    idx.upsert(more)
    assert idx._named["speech"].index is hnsw and idx.count() == n + 200
    assert idx.search("speech", np.asarray(more[7].vectors["speech"]), 1)[0].id == more[7].id
    # replacing and deleting in HNSW: stale labels never come back
    idx.upsert([Point(points[0].id, {"speech": x[1]}, points[0].payload)])
    top = idx.search("speech", x[1], 2)
    assert {h.id for h in top} == {points[0].id, points[1].id}
    assert idx.delete_media([1, 2]) == 20
    hits = idx.search("speech", x[15], 50)
    assert all(h.payload["media_id"] not in (1, 2) for h in hits) and len(hits) == 50
    assert idx.search("speech", x[15], 10, Filter(media_ids=frozenset({1}))) == []
    before = [ids(h) for h in idx.search_batch("speech", qs, 10)]
    idx.close()
    with FaissIndex(tmp_path / "f", dims, hnsw_threshold=2000) as idx:
        assert idx.count() == n + 200 - 20
        assert [ids(h) for h in idx.search_batch("speech", qs, 10)] == before
        assert idx.stats()["speech"]["kind"] == "hnsw"
        # shrinking well below the threshold switches back to exact search
        idx.delete_media(range(100, 520))
        assert idx.count() == 980 and idx._named["speech"].index is not None
        q = x[5]
        assert ids(idx.search("speech", q, 10)) == [
            i for i, _ in brute_fast(x, points, q, 10, lambda i: i // PER_MEDIA not in (1, 2) and i < 1000)
        ][:10]
        assert idx.stats()["speech"]["kind"] == "flat"


def brute_fast(x: np.ndarray, points: list[Point], q: np.ndarray, k: int, keep) -> list[tuple[str, float]]:
    ok = np.array([keep(i) for i in range(len(x))])
    s = np.where(ok, x @ (q / np.linalg.norm(q)), -np.inf)
    order = np.argsort(-s)[:k]
    return [(points[i].id, float(s[i])) for i in order if np.isfinite(s[i])]


def test_faiss_single_writer_and_readers(tmp_path: Path) -> None:
    path = tmp_path / "idx"
    points, vecs = make_points(50, seed=30)
    writer = FaissIndex(path, DIMS)
    writer.upsert(points)
    writer.flush()
    with pytest.raises(IndexLockedError, match="read_only=True"):
        FaissIndex(path, DIMS)
    # another process fails fast too
    code = textwrap.dedent(f"""
        import sys
        from store.vectors import FaissIndex, IndexLockedError
        try:
            FaissIndex({str(path)!r}, {DIMS!r})
        except IndexLockedError as e:
            print("locked:", e); sys.exit(3)
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert "already open for writing" in proc.stdout
    # readers open while the writer holds the lock, and see the last flush
    with FaissIndex(path, DIMS, read_only=True) as reader:
        assert reader.count() == 50
        assert reader.search("speech", vecs["speech"][3], 1)[0].id == points[3].id
        with pytest.raises(PermissionError):
            reader.upsert(points[:1])
        more, more_vecs = make_points(10, seed=31, start=50)
        writer.upsert(more)
        writer.delete_media([0])
        assert reader.count() == 50  # not flushed yet
        writer.flush()
        writer.upsert(more[:1])
        writer.flush()  # twice: the reader's generation has been swept
        assert reader.refresh() and reader.count() == 50
        assert reader.search("speech", more_vecs["speech"][4], 1)[0].id == more[4].id
        assert all(h.payload["media_id"] != 0 for h in reader.search("speech", vecs["speech"][3], 60))
    writer.close()
    with FaissIndex(path, DIMS) as again:  # the lock is released on close
        assert again.count() == 50
    with pytest.raises(FileNotFoundError):
        FaissIndex(tmp_path / "nothing", DIMS, read_only=True)


def test_faiss_reader_searches_from_many_threads(tmp_path: Path) -> None:
    """Readers search outside their lock: threads in parallel get exactly the serial answers."""
    from concurrent.futures import ThreadPoolExecutor

    points, _ = make_points(3000, seed=40, no_visual_every=3)
    with FaissIndex(tmp_path / "idx", DIMS, hnsw_threshold=1000) as writer:
        writer.upsert(points)
    qs = unit(np.random.default_rng(41), 40, DIMS["speech"])
    with FaissIndex(tmp_path / "idx", DIMS, read_only=True) as reader:
        assert reader.concurrent_search
        jobs = [(name, i, flt) for name in ("speech", "visual") for i in range(40)
                for flt in (None, Filter(has_speech=True), Filter(media_ids=frozenset({3, 9})))]

        def run(job):  # type: ignore[no-untyped-def]
            name, i, flt = job
            return [(h.id, round(h.score, 5)) for h in reader.search(name, qs[i][: DIMS[name]], 10, flt)]

        serial = [run(job) for job in jobs]
        with ThreadPoolExecutor(max_workers=4) as pool:
            parallel = list(pool.map(run, jobs))
        assert parallel == serial and all(serial)
    with FaissIndex(tmp_path / "idx", DIMS) as writer:
        assert not writer.concurrent_search


def test_qdrant_needs_one_location(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        QdrantIndex(DIMS)
    with pytest.raises(ValueError, match="path"):
        open_index("faiss", DIMS)
