"""HTTP API served by ``framebus up``: search, health, thumbnails, metrics.

It runs in its own thread with its own event loop (uvicorn), so a slow query never stalls the agents'
loop; it shares the worker's embedder and vector store (both are thread-safe).

Access control (``Settings.api_keys``, key -> tenant): with keys configured, every path but ``/health``
needs ``Authorization: Bearer KEY`` (else 401 with ``WWW-Authenticate: Bearer``), and every read is confined
to the key's tenant on the server side: a ``tenant`` parameter naming another tenant gets 403, thumbnails
are served only from ``<blob dir>/thumbnails/<key's tenant>/``. With no keys the API is open (the
``tenant`` parameter chooses, as before) and may only listen on a loopback address (``check_bind``).
"""

from __future__ import annotations

import hashlib
import hmac
import io
import ipaddress
import os
import re
import stat
import threading

import numpy as np
import uvicorn
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from framebus.indexing.base import SegmentFilter
from framebus.streams.broker import split_host_port
from framebus.streams.config import Settings
from framebus.streams.search import SearchResponse, search

TENANT = r"^[A-Za-z0-9._-]+$"
MAX_IMAGE_BYTES = 10 * 1024 * 1024
MAX_THUMBNAIL_BYTES = 16 * 1024 * 1024
#: where the middleware leaves the tenant of a valid key (None: no valid key, or open mode)
TENANT_SCOPE_KEY = "framebus.tenant"
#: the only path answered without a valid key when keys are configured
PUBLIC_PATHS = frozenset({"/health"})
LOOPBACK_NAMES = frozenset({"localhost"})


def decode_image(data: bytes) -> np.ndarray:
    """Any image Pillow reads, as RGB uint8; ``ValueError`` when it is not one."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if img.width * img.height > 50_000_000:
                raise ValueError("image too large")
            return np.asarray(img.convert("RGB"))
    except (OSError, Image.DecompressionBombError) as exc:
        raise ValueError(f"not a readable image: {exc}") from None


# --- access control ------------------------------------------------------------------------------------


class ApiKeys:
    """The configured API keys, kept only as SHA-256 digests, each mapped to its tenant.

    ``tenant(token)`` compares the token's digest with every key's digest by ``hmac.compare_digest``,
    all of them, whether one matched or not: the time taken says nothing about the keys.
    """

    def __init__(self, keys: dict[str, str]):
        self._digests = [(self._digest(key), tenant) for key, tenant in keys.items()]

    @staticmethod
    def _digest(token: str) -> bytes:
        return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()

    def __len__(self) -> int:
        return len(self._digests)

    def tenant(self, token: str | None) -> str | None:
        if not token or not self._digests:
            return None
        digest, found = self._digest(token), None
        for key_digest, tenant in self._digests:
            if hmac.compare_digest(digest, key_digest):
                found = tenant
        return found


def bearer_token(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The token of exactly one ``Authorization: Bearer TOKEN`` header (scheme case-insensitive), else None."""
    values = [v for k, v in headers if k.lower() == b"authorization"]
    if len(values) != 1:
        return None
    scheme, _, token = values[0].decode("latin-1").strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token and " " not in token else None


class ApiKeyAuth:
    """ASGI middleware: every HTTP request but ``PUBLIC_PATHS`` needs a valid key, else 401.

    It records the key's tenant in the request scope (``TENANT_SCOPE_KEY``); the endpoints read it from
    there. The key itself is never stored, logged or echoed.
    """

    def __init__(self, app, keys: ApiKeys):
        self.app = app
        self.keys = keys

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        token = bearer_token(scope.get("headers") or [])
        tenant = self.keys.tenant(token)
        if tenant is None and scope["type"] == "websocket":  # none is served; refuse before any is
            await send({"type": "websocket.close", "code": 1008})
            return
        if tenant is None and scope["path"] not in PUBLIC_PATHS:
            challenge = 'Bearer error="invalid_token"' if token else "Bearer"
            response = JSONResponse(
                {"detail": "a valid API key is required: Authorization: Bearer KEY"},
                status_code=401,
                headers={"WWW-Authenticate": challenge},
            )
            await response(scope, receive, send)
            return
        scope[TENANT_SCOPE_KEY] = tenant
        await self.app(scope, receive, send)


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 (bracketed or not) or ``localhost``."""
    host = host.strip().lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.removeprefix("[").removesuffix("]")).is_loopback
    except ValueError:
        return False


def check_bind(settings: Settings) -> str:
    """The ``auth=...`` part of the ready line, or ``SystemExit`` with a clear message when the API would
    listen on a non-loopback address with no API keys configured."""
    host, port = split_host_port(settings.http)
    if settings.api_keys:
        n = len(settings.api_keys)
        return f"auth=api-key ({n} key{'' if n == 1 else 's'})"
    if is_loopback(host):
        return f"auth=open (no API keys; {host} only)"
    raise SystemExit(
        f"framebus: refusing to serve the HTTP API on {settings.http} with no API keys: without keys it is "
        "open to anyone who reaches it, so it only listens on a loopback address (127.0.0.1, ::1, localhost). "
        "Configure keys (FRAMEBUS_API_KEYS=KEY=TENANT[,KEY=TENANT...], or an [api_keys] table in the config "
        f"file), or listen on loopback (--http 127.0.0.1:{port})."
    )


def _thumbnail_file(settings: Settings, relpath: str, key_tenant: str | None):
    """The open file descriptor of thumbnail ``<tenant>/<...>.jpg``, confined to that tenant's directory.

    Refused (404): NUL, backslash, absolute paths, empty, ``.`` and ``..`` components, anything that is not
    a ``.jpg`` regular file, and any path whose real path (symlinks followed) leaves
    ``<blob dir>/thumbnails/<tenant>/``. With a key, ``<tenant>`` must be the key's tenant (403).
    """
    missing = HTTPException(404, "no such thumbnail")
    parts = relpath.split("/")
    if "\x00" in relpath or "\\" in relpath or len(parts) < 2 or any(p in ("", ".", "..") for p in parts):
        raise missing
    tenant = parts[0]
    if len(tenant) > 128 or not re.fullmatch(r"[A-Za-z0-9._-]+", tenant):
        raise missing
    if key_tenant is not None and tenant != key_tenant:
        raise HTTPException(403, "this API key may not read that tenant's thumbnails")
    root = (settings.blob_dir / "thumbnails").resolve()
    tenant_root = root / tenant
    try:
        real = root.joinpath(*parts).resolve(strict=True)
    except (OSError, RuntimeError, ValueError):
        raise missing from None
    if not real.is_relative_to(tenant_root) or real == tenant_root or real.suffix != ".jpg":
        raise missing
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        raise missing from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_THUMBNAIL_BYTES:
        os.close(fd)
        raise missing
    return fd


# --- the app ---------------------------------------------------------------------------------------------


def create_api(rt) -> FastAPI:
    settings = rt.settings
    keys = ApiKeys(settings.api_keys)
    api = FastAPI(title="framebus", version="1", summary="semantic video search over framebus indexes")
    if keys:
        api.add_middleware(ApiKeyAuth, keys=keys)

    def key_tenant(request: Request) -> str | None:
        return request.scope.get(TENANT_SCOPE_KEY) if keys else None

    def read_tenant(request: Request, tenant: str | None) -> str:
        """The tenant a read is confined to: the key's (a different ``tenant`` parameter is 403), or, in
        open mode, the ``tenant`` parameter (required)."""
        if keys:
            mine = key_tenant(request)
            if mine is None:  # the middleware lets no such request through; never widen on a bug
                raise HTTPException(401, "a valid API key is required", headers={"WWW-Authenticate": "Bearer"})
            if tenant is not None and tenant != mine:
                raise HTTPException(403, "the tenant parameter names another tenant than this API key's")
            return mine
        if tenant is None:
            raise HTTPException(422, "tenant is required (no API keys are configured)")
        return tenant

    @api.get("/health")
    def health(request: Request) -> dict:
        if not keys:  # open mode: loopback only, every tenant readable anyway
            return {
                "status": "ok",
                "broker": settings.bootstrap,
                "models": settings.models,
                "agents": getattr(rt, "agents", []),
                "stats": dict(rt.stats),
            }
        mine = key_tenant(request)
        if mine is None:
            return {"status": "ok"}
        # no stats, no broker: the counters are process-wide and would show other tenants' activity
        return {"status": "ok", "tenant": mine, "models": settings.models, "agents": getattr(rt, "agents", [])}

    def where(
        flagged: bool | None, start_s: float | None, end_s: float | None, origin: str | None = None
    ) -> SegmentFilter | None:
        if flagged is None and start_s is None and end_s is None and origin is None:
            return None
        return SegmentFilter(flagged=flagged, start_s=start_s, end_s=end_s, origin=origin)

    origin_help = "only videos of this origin: generated (what framebus generated)"

    tenant_help = "with an API key: optional, and only the key's tenant (else 403); without keys: required"

    @api.get("/search", response_model=SearchResponse)
    def search_endpoint(
        request: Request,
        q: str = Query(..., min_length=1, max_length=1000),
        tenant: str | None = Query(None, min_length=1, max_length=128, pattern=TENANT, description=tenant_help),
        limit: int = Query(10, ge=1, le=100),
        flagged: bool | None = Query(None, description="moderation verdict of the segment"),
        start_s: float | None = Query(None, ge=0, description="segments ending at or after"),
        end_s: float | None = Query(None, ge=0, description="segments starting at or before"),
        origin: str | None = Query(None, pattern="^[a-z_]{1,32}$", description=origin_help),
    ) -> SearchResponse:
        scope = read_tenant(request, tenant)
        return search(
            settings,
            rt.embedder,
            rt.store,
            q,
            tenant=scope,
            limit=limit,
            where=where(flagged, start_s, end_s, origin),
        )

    @api.post("/search/image", response_model=SearchResponse)
    async def search_image(
        request: Request,
        tenant: str | None = Query(None, min_length=1, max_length=128, pattern=TENANT, description=tenant_help),
        limit: int = Query(10, ge=1, le=100),
        flagged: bool | None = Query(None),
        start_s: float | None = Query(None, ge=0),
        end_s: float | None = Query(None, ge=0),
        origin: str | None = Query(None, pattern="^[a-z_]{1,32}$", description=origin_help),
    ) -> SearchResponse:
        """Query by example: the request body is an image (JPEG, PNG, WebP), at most 10 MB."""
        scope = read_tenant(request, tenant)
        body = await request.body()
        if not body or len(body) > MAX_IMAGE_BYTES:
            raise HTTPException(413 if body else 400, f"send an image of 1 byte to {MAX_IMAGE_BYTES} bytes")
        try:
            image = decode_image(body)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        return await run_in_threadpool(
            search,
            settings,
            rt.embedder,
            rt.store,
            None,
            tenant=scope,
            image=image,
            limit=limit,
            where=where(flagged, start_s, end_s, origin),
        )

    @api.get("/thumbnails/{relpath:path}")
    def thumbnail(request: Request, relpath: str) -> Response:
        fd = _thumbnail_file(settings, relpath, key_tenant(request))
        with os.fdopen(fd, "rb") as fh:
            data = fh.read(MAX_THUMBNAIL_BYTES + 1)
        headers = {"Cache-Control": "private, max-age=3600"} if keys else None
        return Response(data, media_type="image/jpeg", headers=headers)

    @api.get("/metrics")
    def metrics() -> PlainTextResponse:
        # with keys: any valid key (the middleware); process-wide counters, no tenant labels or ids
        return PlainTextResponse(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return api


def serve_in_thread(rt) -> uvicorn.Server:
    check_bind(rt.settings)  # no keys: loopback only
    host, port = split_host_port(rt.settings.http)
    server = uvicorn.Server(uvicorn.Config(create_api(rt), host=host, port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, name="http-api", daemon=True)
    thread.start()
    return server
