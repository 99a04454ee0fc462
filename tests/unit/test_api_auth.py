"""Access control of the HTTP API: API key -> one tenant, every read confined to it on the server side.

The app is the real one (``create_api``) over a real vector store (embedded Qdrant on disk, and FAISS) and
the real tiny CLIP (the shipped weights; loading never trains), seeded with points of two tenants that share
their vectors and even a video id, with real thumbnail files for both.
"""

from __future__ import annotations

import io
import json
import logging
import random
import string
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from framebus.indexing import SegmentPoint, collection_name, open_store
from framebus.models.registry import load_embedder
from framebus.streams import api as api_module
from framebus.streams.api import ApiKeys, bearer_token, check_bind, create_api, serve_in_thread
from framebus.streams.config import Settings, load_settings

A, B, C = "acme", "globex", "initech"  # C's thumbnail directory is a symlink to B's
KEY_A = "kA-" + "a" * 40
KEY_B = "kB-" + "b" * 40
KEY_C = "kC-" + "c" * 40
KEYS = {KEY_A: A, KEY_B: B, KEY_C: C}
OTHER = {A: B, B: A}
VIDEOS = 5  # per tenant, plus one video id both tenants use
SEGMENTS = 4
WORDS = "a the red green blue yellow circle square triangle star moving left right up down shape ball fast".split()


def settings_for(data_dir: Path, **kw) -> Settings:
    """Explicit values win over any FRAMEBUS_* variable of the environment the tests run in."""
    kw.setdefault("api_keys", {})
    return Settings(
        models="tiny",
        device="cpu",
        train_seed=0,
        train_tiny=False,
        data_dir=data_dir,
        model_dir=None,
        cache_dir=data_dir / "cache",
        http="127.0.0.1:8080",
        **kw,
    )


def shape_image(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    img = np.full((size, size, 3), rng.integers(0, 256, 3), dtype=np.uint8)
    x0, y0 = rng.integers(0, size // 2, 2)
    w, h = rng.integers(size // 6, size // 2, 2)
    img[y0 : y0 + h, x0 : x0 + w] = rng.integers(0, 256, 3)
    return img


def jpeg(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


class World:
    """Both tenants' points and thumbnails, and what each tenant may see."""

    def __init__(self, root: Path, embedder, store):
        self.settings = settings_for(root)
        self.thumb_root = self.settings.blob_dir / "thumbnails"
        rng = np.random.default_rng(7)
        images = [[shape_image(rng) for _ in range(SEGMENTS)] for _ in range(VIDEOS + 1)]
        vectors = [embedder.embed_images(imgs) for imgs in images]
        self.points: dict[str, dict[tuple[str, int], SegmentPoint]] = {A: {}, B: {}}
        self.thumb_bytes: dict[str, set[bytes]] = {A: set(), B: set()}
        self.thumb_paths: dict[str, list[str]] = {A: [], B: []}
        all_points = []
        for tenant in (A, B):
            names = [f"{tenant}-v{i}" for i in range(VIDEOS)] + ["shared-0"]
            for v, name in enumerate(names):
                for s in range(SEGMENTS):
                    thumb = images[v][s].copy()
                    thumb[:8, :8] = (255, 0, 0) if tenant == A else (0, 0, 255)  # the tenants' files differ
                    data = jpeg(thumb)
                    path = self.thumb_root / tenant / name / f"{s}.jpg"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(data)
                    self.thumb_bytes[tenant].add(data)
                    self.thumb_paths[tenant].append(f"{tenant}/{name}/{s}.jpg")
                    p = SegmentPoint(
                        video_id=name,
                        tenant=tenant,
                        segment_index=s,
                        start_s=2.0 * s,
                        end_s=2.0 * (s + 1),
                        keyframe_s=2.0 * s + 1.0,
                        vector=vectors[v][s],  # the same vectors for both tenants
                        model=embedder.info.name,
                        model_version=embedder.info.version,
                        thumbnail=path.as_uri(),
                        extra={"caption": f"{tenant} caption {name} {s}", "flagged": bool((v + s) % 3 == 0)},
                    )
                    self.points[tenant][(name, s)] = p
                    all_points.append(p)
        store.upsert(collection_name(self.settings.collection_prefix, embedder.info), all_points)
        # symlink escapes: a file and a directory in A's tree pointing into B's, and C's whole directory
        (self.thumb_root / A / "evil").mkdir()
        (self.thumb_root / A / "evil" / "0.jpg").symlink_to(self.thumb_root / B / "globex-v0" / "0.jpg")
        (self.thumb_root / A / "link").symlink_to(self.thumb_root / B)
        (self.thumb_root / C).symlink_to(self.thumb_root / B)
        (self.thumb_root / A / "not-a-thumb.txt").write_text("x")
        self.escapes = {
            A: ["acme/evil/0.jpg", "acme/link/globex-v0/0.jpg", "acme/link/shared-0/1.jpg"],
            B: [],
            C: ["initech/globex-v0/0.jpg", "initech/shared-0/0.jpg"],
        }


def make_rt(settings: Settings, embedder, store) -> SimpleNamespace:
    return SimpleNamespace(
        settings=settings, embedder=embedder, store=store, stats={"index.points": 48}, agents=["index", "publish"]
    )


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    return load_embedder(settings_for(tmp_path_factory.mktemp("models")))


@pytest.fixture(scope="module", params=["qdrant", "faiss"])
def world(request, tmp_path_factory, embedder):
    root = tmp_path_factory.mktemp(f"data-{request.param}")
    store = open_store(request.param, path=root / "qdrant")
    w = World(root, embedder, store)
    w.store, w.embedder, w.backend = store, embedder, request.param
    yield w
    store.close()


@pytest.fixture(scope="module")
def client(world):
    settings = world.settings.model_copy(update={"api_keys": dict(KEYS)})
    with TestClient(create_api(make_rt(settings, world.embedder, world.store))) as c:
        yield c


@pytest.fixture(scope="module")
def open_client(world):
    with TestClient(create_api(make_rt(world.settings, world.embedder, world.store))) as c:
        yield c


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


# --- settings ----------------------------------------------------------------------------------------


def test_api_keys_from_environment_as_pairs_or_json(monkeypatch):
    monkeypatch.setenv("FRAMEBUS_API_KEYS", " key1=tenantA, key2=tenantB ,pad+/9===acme,")
    assert load_settings().api_keys == {"key1": "tenantA", "key2": "tenantB", "pad+/9==": "acme"}
    monkeypatch.setenv("FRAMEBUS_API_KEYS", json.dumps({"key1": "tenantA", "k.2": "b"}))
    assert load_settings().api_keys == {"key1": "tenantA", "k.2": "b"}
    monkeypatch.delenv("FRAMEBUS_API_KEYS")
    assert load_settings().api_keys == {}


def test_api_keys_from_toml_table_and_environment_wins(tmp_path, monkeypatch):
    monkeypatch.delenv("FRAMEBUS_API_KEYS", raising=False)
    cfg = tmp_path / "framebus.toml"
    cfg.write_text('http = "0.0.0.0:8080"\n\n[api_keys]\n"s3cr3t-one" = "acme"\ns3cr3t-two = "globex"\n')
    assert load_settings(cfg).api_keys == {"s3cr3t-one": "acme", "s3cr3t-two": "globex"}
    monkeypatch.setenv("FRAMEBUS_API_KEYS", "other=initech")
    assert load_settings(cfg).api_keys == {"other": "initech"}


@pytest.mark.parametrize(
    "value",
    [
        "s3cr3t-value",  # no tenant
        "=acme",  # no key
        "s3cr3t-value=acme,s3cr3t-value=globex",  # a key twice
        "s3cr3t value=acme",  # not a bearer token
        "s3cr3t-value=ac/me",  # not a tenant name
        '{"s3cr3t-value": 1}',
        '{"s3cr3t-value": "acme"',  # broken JSON
        '["s3cr3t-value"]',
    ],
)
def test_bad_api_keys_fail_clearly_without_showing_the_keys(monkeypatch, value):
    monkeypatch.setenv("FRAMEBUS_API_KEYS", value)
    with pytest.raises(TypeError, match="api_keys") as info:
        load_settings()
    assert "s3cr3t" not in str(info.value)


def test_settings_repr_hides_the_keys():
    s = Settings(api_keys={KEY_A: A})
    assert KEY_A not in repr(s) and KEY_A not in str(s)


# --- bind check -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "http", ["127.0.0.1:8080", "127.0.0.2:80", "localhost:8080", "LOCALHOST:1", "::1:8080", "[::1]:8080"]
)
def test_no_keys_loopback_is_open(http):
    assert check_bind(Settings(http=http, api_keys={})) == f"auth=open (no API keys; {http.rpartition(':')[0]} only)"


@pytest.mark.parametrize("http", ["0.0.0.0:8080", "[::]:8080", ":::8080", "10.0.0.5:8080", "example.com:8080"])
def test_no_keys_elsewhere_refuses_to_serve(http):
    settings = Settings(http=http, api_keys={})
    with pytest.raises(SystemExit, match="no API keys") as info:
        check_bind(settings)
    assert "FRAMEBUS_API_KEYS" in str(info.value) and "127.0.0.1" in str(info.value)
    with pytest.raises(SystemExit):  # the server itself checks too, before it binds anything
        serve_in_thread(make_rt(settings, None, None))


def test_keys_allow_any_address():
    assert check_bind(Settings(http="0.0.0.0:8080", api_keys={KEY_A: A})) == "auth=api-key (1 key)"
    assert check_bind(Settings(http="10.1.2.3:80", api_keys=dict(KEYS))) == "auth=api-key (3 keys)"


# --- keys ---------------------------------------------------------------------------------------------


def test_every_key_is_compared_in_constant_time(monkeypatch):
    calls = []
    real = api_module.hmac.compare_digest

    def counting(a, b):
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(api_module.hmac, "compare_digest", counting)
    keys = ApiKeys(KEYS)
    assert keys.tenant(KEY_A) == A and keys.tenant(KEY_C) == C
    assert keys.tenant("nope") is None and keys.tenant(KEY_A + "x") is None and keys.tenant(KEY_A[:-1]) is None
    assert len(calls) == 5 * len(KEYS)  # every key, every time, whether one matched or not
    assert {lengths for lengths in calls} == {(32, 32)}  # digests: equal lengths whatever was sent
    assert keys.tenant(None) is None and keys.tenant("") is None
    assert ApiKeys({}).tenant(KEY_A) is None


@pytest.mark.parametrize(
    ("headers", "token"),
    [
        ([(b"authorization", b"Bearer abc")], "abc"),
        ([(b"Authorization", b"bearer   abc  ")], "abc"),
        ([(b"authorization", b"Basic abc")], None),
        ([(b"authorization", b"Bearer")], None),
        ([(b"authorization", b"Bearer a b")], None),
        ([(b"authorization", b"abc")], None),
        ([(b"authorization", b"Bearer abc"), (b"authorization", b"Bearer abc")], None),
        ([], None),
    ],
)
def test_bearer_token(headers, token):
    assert bearer_token(headers) == token


# --- the API with keys ----------------------------------------------------------------------------


def test_requests_without_a_valid_key_get_401(client):
    paths = ["/search?q=a&tenant=acme", "/metrics", "/thumbnails/acme/acme-v0/0.jpg", "/docs", "/openapi.json", "/x"]
    bad = [
        {},
        auth("wrong"),
        auth(KEY_A + "x"),
        {"Authorization": KEY_A},
        {"Authorization": f"Basic {KEY_A}"},
        {"X-Api-Key": KEY_A},
    ]
    for path in paths:
        for headers in bad:
            resp = client.get(path, headers=headers)
            assert resp.status_code == 401, (path, headers)
            assert resp.headers["www-authenticate"].startswith("Bearer")
            assert KEY_A not in resp.text
    resp = client.post("/search/image", content=png(np.zeros((8, 8, 3), np.uint8)))
    assert resp.status_code == 401 and resp.headers["www-authenticate"] == "Bearer"
    assert client.get("/metrics", headers=auth("wrong")).headers["www-authenticate"] == 'Bearer error="invalid_token"'


def test_health_says_only_ok_without_a_key_and_nothing_of_other_tenants_with_one(client):
    for headers in ({}, auth("wrong")):
        resp = client.get("/health", headers=headers)
        assert resp.status_code == 200 and resp.json() == {"status": "ok"}
    body = client.get("/health", headers=auth(KEY_A)).json()
    assert body == {"status": "ok", "tenant": A, "models": "tiny", "agents": ["index", "publish"]}


def test_metrics_need_a_key(client):
    resp = client.get("/metrics", headers=auth(KEY_B))
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")


def test_the_key_decides_the_tenant(client, world):
    for key, me in ((KEY_A, A), (KEY_B, B)):
        for params in ({"q": "a red circle"}, {"q": "a red circle", "tenant": me}):
            resp = client.get("/search", params={**params, "limit": 100}, headers=auth(key))
            assert resp.status_code == 200
            body = resp.json()
            assert body["tenant"] == me
            assert {r["video_id"] for r in body["results"]} == {v for v, _ in world.points[me]}
        resp = client.get("/search", params={"q": "a red circle", "tenant": OTHER[me]}, headers=auth(key))
        assert resp.status_code == 403 and OTHER[me] not in resp.text
        img = png(shape_image(np.random.default_rng(1)))
        resp = client.post("/search/image", params={"tenant": OTHER[me]}, content=img, headers=auth(key))
        assert resp.status_code == 403
        resp = client.post("/search/image", content=img, headers=auth(key))
        assert resp.status_code == 200 and resp.json()["tenant"] == me and resp.json()["results"]
    # C has a key but no points: nothing, although its thumbnail directory leads to B's
    assert client.get("/search", params={"q": "a shape"}, headers=auth(KEY_C)).json()["results"] == []


def test_thumbnails_only_of_the_keys_tenant(client, world):
    own = world.thumb_paths[A][0]
    resp = client.get(f"/thumbnails/{own}", headers=auth(KEY_A))
    assert resp.status_code == 200 and resp.headers["content-type"] == "image/jpeg"
    assert resp.content in world.thumb_bytes[A]
    assert client.get(f"/thumbnails/{world.thumb_paths[B][0]}", headers=auth(KEY_A)).status_code == 403
    for path in world.escapes[A]:  # symlinks out of A's directory
        assert (world.thumb_root / path).is_file()  # they do lead to B's files
        assert client.get(f"/thumbnails/{path}", headers=auth(KEY_A)).status_code == 404, path
    for path in world.escapes[C]:  # C's whole directory is a symlink to B's
        assert client.get(f"/thumbnails/{path}", headers=auth(KEY_C)).status_code == 404, path
    absolute = (world.thumb_root / world.thumb_paths[B][0]).as_posix()
    for path in [
        "acme/..%2Fglobex/globex-v0/0.jpg",
        "acme/%2e%2e/globex/globex-v0/0.jpg",
        "acme/acme-v0/..%2F..%2Fglobex%2Fglobex-v0%2F0.jpg",
        "acme%2F..%2Fglobex%2Fglobex-v0%2F0.jpg",
        f"acme/{absolute}",
        f"acme/%2F{absolute.lstrip('/')}",
        f"%2F{absolute.lstrip('/')}",
        "acme/%2e/acme-v0/0.jpg",
        "acme//acme-v0/0.jpg",
        "acme/acme-v0/0.jpg%00.jpg",
        "acme/not-a-thumb.txt",
        "acme/acme-v0",
        "acme",
        "acme/",
    ]:
        resp = client.get(f"/thumbnails/{path}", headers=auth(KEY_A))
        assert resp.status_code in (403, 404), path
        assert resp.content not in world.thumb_bytes[B]


def test_keys_are_never_logged(client, caplog):
    with caplog.at_level(logging.DEBUG):
        client.get("/search", params={"q": "x"}, headers=auth(KEY_A))
        client.get("/search", params={"q": "x"}, headers=auth(KEY_A + "wrong"))
        client.get("/health", headers=auth(KEY_B))
    assert KEY_A not in caplog.text and KEY_B not in caplog.text


def random_query(rng: random.Random, avoid: tuple[str, ...]) -> str:
    while True:
        if rng.random() < 0.8:
            q = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6)))
        else:
            q = "".join(rng.choice(string.printable + "éü中🙂") for _ in range(rng.randint(1, 40)))
        if q.strip() and not any(a in q.lower() for a in avoid):
            return q


def check_search_body(body: dict, world: World, me: str, flagged: bool | None, start_s, end_s) -> int:
    """Every result is one of ``me``'s segments and obeys the filters; returns the number of segments."""
    assert body["tenant"] == me
    n = 0
    for video in body["results"]:
        for seg in video["segments"]:
            point = world.points[me][(video["video_id"], seg["index"])]
            assert seg["thumbnail"] == point.thumbnail
            assert seg["thumbnail_url"] == f"/thumbnails/{me}/{video['video_id']}/{seg['index']}.jpg"
            assert seg["caption"] == point.extra["caption"]
            if flagged is not None:
                assert seg["flagged"] is flagged
            if start_s is not None:
                assert seg["end_s"] >= start_s
            if end_s is not None:
                assert seg["start_s"] <= end_s
            n += 1
    return n


def test_random_requests_never_cross_tenants(client, world):
    """200 random searches, image searches, thumbnails and reads with A's or B's key: every answer stays
    inside the key's tenant (no video id, caption, thumbnail path or thumbnail bytes of the other), a
    ``tenant`` parameter naming another tenant is 403, and the same request without a valid key is 401."""
    rng = random.Random(20261201)
    np_rng = np.random.default_rng(5)
    segments_seen = 0
    statuses: dict[int, int] = {}
    for i in range(200):
        me = rng.choice([A, B])
        other, key = OTHER[me], {A: KEY_A, B: KEY_B}[me]
        kind = rng.choices(["text", "image", "thumb", "health", "metrics"], weights=[10, 4, 5, 1, 1])[0]
        flagged = start_s = end_s = None
        body: bytes | None = None
        if kind in ("text", "image"):
            params: dict = {}
            invalid = False
            if kind == "text":
                if rng.random() < 0.05:
                    params["q"] = ""
                    invalid = True
                else:
                    params["q"] = random_query(rng, (A, B, C, "shared"))
            tenant = rng.choice([None, None, me, other, other, "someone-else", "bad tenant!"])
            if tenant is not None:
                params["tenant"] = tenant
                invalid |= tenant == "bad tenant!"
            if rng.random() < 0.7:
                params["limit"] = rng.choice([0, 101, *range(1, 101)]) if rng.random() < 0.2 else rng.randint(1, 100)
                invalid |= not 1 <= params["limit"] <= 100
            if rng.random() < 0.4:
                flagged = rng.choice([True, False])
                params["flagged"] = str(flagged).lower()
            if rng.random() < 0.3:
                start_s = round(rng.uniform(-1, 9), 2)
                params["start_s"] = start_s
                invalid |= start_s < 0
            if rng.random() < 0.3:
                end_s = round(rng.uniform(-1, 9), 2)
                params["end_s"] = end_s
                invalid |= end_s < 0
            expected = 422 if invalid else 403 if tenant not in (None, me) else 200
            if kind == "text":
                send = lambda h, p=params: client.get("/search", params=p, headers=h)  # noqa: E731
            else:
                body = png(shape_image(np_rng, size=rng.choice([16, 64, 100])))
                send = lambda h, p=params, b=body: client.post("/search/image", params=p, content=b, headers=h)  # noqa: E731
        elif kind == "thumb":
            choice = rng.random()
            if choice < 0.4:
                path, expected = rng.choice(world.thumb_paths[me]), 200
            elif choice < 0.8:
                path, expected = rng.choice(world.thumb_paths[other]), 403
            else:
                target = rng.choice(world.thumb_paths[other])
                path = rng.choice([f"{me}/../{target}", f"{me}/%2e%2e/{target}", f"{me}/..%2F{target}"])
                path, expected = rng.choice([*world.escapes[me], path]), None  # 403 or 404
            send = lambda h, p=path: client.get(f"/thumbnails/{p}", headers=h)  # noqa: E731
        else:
            expected = 200
            send = lambda h, k=kind: client.get(f"/{k}", headers=h)  # noqa: E731

        resp = send(auth(key))
        statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
        if expected is None:
            assert resp.status_code in (403, 404), (i, kind, resp.status_code)
        else:
            assert resp.status_code == expected, (i, kind, resp.status_code, resp.text[:300])
        # nothing of the other tenant, whatever the answer
        assert other not in resp.text and f"/thumbnails/{other}/" not in resp.text, (i, kind)
        assert resp.content not in world.thumb_bytes[other]
        if kind in ("text", "image") and resp.status_code == 200:
            segments_seen += check_search_body(resp.json(), world, me, flagged, start_s, end_s)
        if kind == "thumb" and resp.status_code == 200:
            assert resp.content == (world.thumb_root / path).read_bytes()
        if kind == "health":
            assert resp.json()["tenant"] == me and "stats" not in resp.json()

        # the same request without a valid key
        wrong = rng.choice([{}, auth(""), auth(f"{key}x"), auth(key[:-1]), {"Authorization": key}])
        resp = send(wrong)
        if kind == "health":
            assert resp.json() == {"status": "ok"}
        else:
            assert resp.status_code == 401 and resp.headers["www-authenticate"].startswith("Bearer"), (i, kind)
            assert me not in resp.text and other not in resp.text

    assert segments_seen > 200, "the random searches found too little to prove anything"
    assert statuses.get(200, 0) > 60 and statuses.get(403, 0) > 20 and statuses.get(422, 0) > 3, statuses


# --- the API with no keys (loopback only) ------------------------------------------------------------


def test_open_mode_works_as_before(open_client, world):
    health = open_client.get("/health").json()
    assert health["status"] == "ok" and health["stats"] == {"index.points": 48}
    assert open_client.get("/search", params={"q": "a red circle"}).status_code == 422  # tenant required
    for me in (A, B):
        resp = open_client.get("/search", params={"q": "a red circle", "tenant": me, "limit": 100})
        assert resp.status_code == 200
        assert check_search_body(resp.json(), world, me, None, None, None) > 0
        own = world.thumb_paths[me][-1]
        assert open_client.get(f"/thumbnails/{own}").content == (world.thumb_root / own).read_bytes()
    assert open_client.get("/metrics").status_code == 200
    assert open_client.get("/search", headers=auth("anything"), params={"q": "x", "tenant": A}).status_code == 200
    # paths stay confined to the tenant they name
    for path in [*world.escapes[A], *world.escapes[C], "acme/%2e%2e/globex/globex-v0/0.jpg", "acme/not-a-thumb.txt"]:
        assert open_client.get(f"/thumbnails/{path}").status_code == 404, path
