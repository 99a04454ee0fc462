"""Vector store contract, run against both backends."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from framebus.indexing.base import SegmentPoint, VectorStore
from framebus.indexing.faiss_store import FaissStore
from framebus.indexing.ids import collection_name, point_id, point_id_int64
from framebus.indexing.qdrant import QdrantStore
from framebus.models.base import ModelInfo
from framebus.streams.config import Settings
from framebus.topics.errors import VectorStoreError

DIM = 16
COLL = "framebus_test_v1"


def unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v)


def basis(i: int, dim: int = DIM) -> np.ndarray:
    v = np.zeros(dim, dtype=np.float32)
    v[i] = 1.0
    return v


def pt(
    video_id: str, idx: int, vec, *, tenant: str = "acme", seg: float = 2.0, version: str = "v1", **extra
) -> SegmentPoint:
    return SegmentPoint(
        video_id=video_id,
        tenant=tenant,
        segment_index=idx,
        start_s=idx * seg,
        end_s=(idx + 1) * seg,
        keyframe_s=idx * seg + seg / 2,
        vector=np.asarray(vec),
        model="test",
        model_version=version,
        thumbnail=f"thumb/{video_id}/{idx}.jpg",
        trace_id="t-1",
        extra=extra,
    )


@pytest.fixture(params=["qdrant", "faiss"])
def store(request, tmp_path) -> VectorStore:
    s = QdrantStore(path=tmp_path / "qdrant") if request.param == "qdrant" else FaissStore()
    yield s
    s.close()


def test_both_backends_satisfy_protocol(store):
    assert isinstance(store, VectorStore)


def test_upsert_and_search_finds_right_video_with_times(store):
    rng = np.random.default_rng(0)
    store.ensure_collection(COLL, DIM)
    points = [pt(f"vid{v}", i, unit(rng.normal(size=DIM))) for v in range(5) for i in range(4)]
    store.upsert(COLL, points)
    target = points[2 * 4 + 3]  # vid2, segment 3
    hits = store.search(COLL, target.vector, tenant="acme", limit=3)
    assert hits[0].video_id == "vid2"
    assert hits[0].tenant == "acme"
    best = hits[0].segments[0]
    assert best.segment_index == 3
    assert best.start_s == pytest.approx(6.0) and best.end_s == pytest.approx(8.0)
    assert best.score == pytest.approx(1.0, abs=1e-4)
    assert best.thumbnail == "thumb/vid2/3.jpg"
    assert hits[0].score == best.score
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert len(hits) == 3


def test_results_never_cross_tenants(store):
    store.ensure_collection(COLL, DIM)
    v = unit(np.arange(1, DIM + 1))
    # identical vectors and even identical video ids in both tenants
    store.upsert(COLL, [pt("shared", 0, v, tenant="a"), pt("only-a", 0, v, tenant="a")])
    store.upsert(COLL, [pt("shared", 0, v, tenant="b"), pt("only-b", 0, v, tenant="b")])
    assert store.count(COLL) == 4
    assert store.count(COLL, tenant="a") == 2 and store.count(COLL, tenant="b") == 2
    for tenant, own in (("a", {"shared", "only-a"}), ("b", {"shared", "only-b"})):
        hits = store.search(COLL, v, tenant=tenant, limit=10)
        assert {h.video_id for h in hits} == own
        assert all(h.tenant == tenant for h in hits)
    assert store.search(COLL, v, tenant="c") == []
    with pytest.raises(VectorStoreError) as err:
        store.search(COLL, v, tenant="")
    assert err.value.code == "index.tenant_required"


def test_tenant_filter_is_applied_by_the_query_not_after_it(store):
    # Another tenant's closer videos must not use up this tenant's result slots.
    store.ensure_collection(COLL, DIM)
    q = basis(0)
    store.upsert(COLL, [pt(f"b{i}", 0, q, tenant="b") for i in range(12)])
    store.upsert(COLL, [pt(f"a{i}", 0, unit(q + 0.5 * basis(i + 1)), tenant="a") for i in range(2)])
    hits = store.search(COLL, q, tenant="a", limit=2)
    assert sorted(h.video_id for h in hits) == ["a0", "a1"]
    assert len(store.search(COLL, q, tenant="b", limit=5)) == 5


def test_upsert_is_idempotent(store):
    store.ensure_collection(COLL, DIM)
    points = [pt("vid", i, basis(i)) for i in range(6)]
    store.upsert(COLL, points)
    store.upsert(COLL, points)
    assert store.count(COLL) == 6
    # an overwrite replaces the vector and payload, not adds
    moved = pt("vid", 0, basis(7), seg=10.0)
    store.upsert(COLL, [moved])
    assert store.count(COLL, tenant="acme", video_id="vid") == 6
    hit = store.search(COLL, basis(7), tenant="acme", limit=1)[0].segments[0]
    assert hit.segment_index == 0 and hit.end_s == pytest.approx(10.0)
    assert hit.score == pytest.approx(1.0, abs=1e-4)


def test_results_grouped_per_video(store):
    store.ensure_collection(COLL, DIM)
    q = unit(np.ones(DIM))
    rng = np.random.default_rng(1)
    points = []
    for v, closeness in (("near", 0.05), ("mid", 0.5), ("far", 2.0)):
        for i in range(5):
            points.append(pt(v, i, unit(q + closeness * (1 + i) * unit(rng.normal(size=DIM)))))
    store.upsert(COLL, points)
    hits = store.search(COLL, q, tenant="acme", limit=10, segments_per_video=2)
    assert [h.video_id for h in hits] == ["near", "mid", "far"]
    for h in hits:
        assert len(h.segments) == 2
        assert len({s.segment_index for s in h.segments}) == 2
        assert h.segments[0].score >= h.segments[1].score
        assert h.score == h.segments[0].score
    assert [h.video_id for h in store.search(COLL, q, tenant="acme", limit=2)] == ["near", "mid"]
    assert len(store.search(COLL, q, tenant="acme", limit=1, segments_per_video=5)[0].segments) == 5


def test_delete_video_is_scoped_to_tenant(store):
    store.ensure_collection(COLL, DIM)
    store.upsert(COLL, [pt("v", i, basis(i), tenant=t) for i in range(3) for t in ("a", "b")])
    store.delete_video(COLL, "v", "a")
    assert store.count(COLL, tenant="a") == 0
    assert store.count(COLL, tenant="b", video_id="v") == 3
    assert store.search(COLL, basis(0), tenant="a") == []


def test_missing_collection_and_dim_mismatch(store):
    assert store.search("nope", basis(0), tenant="a") == []
    assert store.count("nope") == 0
    store.delete_video("nope", "v", "a")
    store.upsert("auto", [pt("v", 0, basis(0))])  # upsert creates the collection
    assert store.count("auto") == 1
    with pytest.raises(VectorStoreError) as err:
        store.ensure_collection("auto", DIM + 1)
    assert err.value.code == "index.dim_mismatch"
    with pytest.raises(VectorStoreError):
        store.search("auto", np.ones(DIM + 1), tenant="acme")


def test_concurrent_writers_and_readers(store):
    store.ensure_collection(COLL, DIM)
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        try:
            for i in range(20):
                store.upsert(COLL, [pt(f"w{w}", i, unit(np.random.default_rng(w * 100 + i).normal(size=DIM)))])
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    def reader() -> None:
        try:
            for _ in range(20):
                store.search(COLL, basis(0), tenant="acme")
        except BaseException as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(3)] + [threading.Thread(target=reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert store.count(COLL) == 60


def test_point_ids_deterministic_and_versioned():
    a = point_id("vid", 3, "abc123")
    assert a == point_id("vid", 3, "abc123")
    assert a == str(a) and len(a) == 36
    assert point_id("vid", 3, "abc124") != a
    assert point_id("vid", 4, "abc123") != a
    assert point_id("vid", 3, "abc123", tenant="t1") != point_id("vid", 3, "abc123", tenant="t2")
    # pinned: changing the namespace or key format silently re-ids every stored point
    assert a == "452464e9-a9d9-5564-b984-24133e80e05c"
    n = point_id_int64(a)
    assert 0 <= n < 2**63
    p1, p2 = pt("vid", 0, basis(0), version="v1"), pt("vid", 0, basis(0), version="v2")
    assert p1.id != p2.id


def test_collection_name_depends_on_model_version():
    versions = [
        "ViT-B-32/laion2b_s34b_b79k",
        "ViT-B-32/laion2b_e16",
        "ViT-B-32/laion2b_s34b_b79K",
        "0123456789ab",
        "0123456789ac",
        "a" * 40,
        "a" * 41,
        "x/y",
        "x_y",
    ]
    names = [
        collection_name("framebus", ModelInfo(name="open_clip/ViT-B-32", version=v, task="embed")) for v in versions
    ]
    assert len(set(names)) == len(names), names
    assert names[3] == "framebus_open_clip_vit_b_32_0123456789ab"  # a hash version is kept readable
    assert names[0].startswith("framebus_open_clip_vit_b_32_vit_b_32_laion2b_s34b")
    assert names == [collection_name("framebus", ModelInfo("open_clip/ViT-B-32", v, "embed")) for v in versions]
    assert collection_name("other", ModelInfo("m", "v1", "embed")) != collection_name(
        "framebus", ModelInfo("m", "v1", "embed")
    )
    for n in names:
        assert n.replace("_", "").isalnum() and n == n.lower() and len(n) <= 80


def test_qdrant_persists_on_disk(tmp_path):
    path = tmp_path / "q"
    s = QdrantStore(path=path)
    s.upsert(COLL, [pt("kept", i, basis(i)) for i in range(3)])
    s.close()
    s2 = QdrantStore(path=path)
    try:
        assert s2.count(COLL) == 3
        hits = s2.search(COLL, basis(1), tenant="acme")
        assert hits[0].video_id == "kept" and hits[0].segments[0].segment_index == 1
    finally:
        s2.close()


def test_qdrant_second_client_on_same_path_is_a_typed_error(tmp_path):
    s = QdrantStore(path=tmp_path / "q")
    try:
        with pytest.raises(VectorStoreError) as err:
            QdrantStore(path=tmp_path / "q")
        assert err.value.code == "index.locked"
    finally:
        s.close()


def test_open_store_follows_settings(tmp_path):
    s = Settings(data_dir=tmp_path, vector_backend="qdrant").open_store()
    try:
        assert isinstance(s, QdrantStore) and s.local
        assert s.location == str(tmp_path / "qdrant")
    finally:
        s.close()
    f = Settings(data_dir=tmp_path, vector_backend="faiss").open_store()
    assert isinstance(f, FaissStore)
    with pytest.raises(VectorStoreError) as err:
        Settings(data_dir=tmp_path, vector_backend="milvus").open_store()
    assert err.value.code == "index.unknown_backend"


def test_filters_on_moderation_verdict_and_time_range(store):
    from framebus.indexing.base import SegmentFilter

    name = "filters"
    store.ensure_collection(name, 4)
    vec = np.array([1, 0, 0, 0], dtype=np.float32)
    points = [
        SegmentPoint(
            video_id="v",
            tenant="t",
            segment_index=i,
            start_s=2.0 * i,
            end_s=2.0 * i + 2,
            keyframe_s=2.0 * i + 1,
            vector=vec + 0.01 * i,
            model="m",
            model_version="1",
            extra={"flagged": i == 1, "caption": f"c{i}"},
        )
        for i in range(4)
    ]
    store.upsert(name, points)

    def segments(where):
        hits = store.search(name, vec, tenant="t", limit=5, segments_per_video=10, where=where)
        return sorted(s.segment_index for h in hits for s in h.segments)

    assert segments(None) == [0, 1, 2, 3]
    assert segments(SegmentFilter(flagged=True)) == [1]
    assert segments(SegmentFilter(flagged=False)) == [0, 2, 3]
    assert segments(SegmentFilter(start_s=3.0, end_s=5.0)) == [1, 2]  # overlaps [3, 5]
    assert segments(SegmentFilter(flagged=False, start_s=3.0)) == [2, 3]
    hit = store.search(name, vec, tenant="t", limit=1, where=SegmentFilter(flagged=True))[0].segments[0]
    assert hit.caption == "c1" and hit.flagged is True
