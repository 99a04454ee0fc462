"""HTTP API served by ``framebus up``: search, health, thumbnails, metrics.

It runs in its own thread with its own event loop (uvicorn), so a slow query never stalls the agents'
loop; it shares the worker's embedder and vector store (both are thread-safe).
"""

from __future__ import annotations

import io
import threading

import numpy as np
import uvicorn
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, PlainTextResponse
from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from framebus.indexing.base import SegmentFilter
from framebus.streams.broker import split_host_port
from framebus.streams.search import SearchResponse, search

TENANT = r"^[A-Za-z0-9._-]+$"
MAX_IMAGE_BYTES = 10 * 1024 * 1024


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


def create_api(rt) -> FastAPI:
    settings = rt.settings
    api = FastAPI(title="framebus", version="1", summary="semantic video search over framebus indexes")

    @api.get("/health")
    def health() -> dict:
        return {
            "status": "ok",
            "broker": settings.bootstrap,
            "models": settings.models,
            "agents": getattr(rt, "agents", []),
            "stats": dict(rt.stats),
        }

    def where(flagged: bool | None, start_s: float | None, end_s: float | None) -> SegmentFilter | None:
        if flagged is None and start_s is None and end_s is None:
            return None
        return SegmentFilter(flagged=flagged, start_s=start_s, end_s=end_s)

    @api.get("/search", response_model=SearchResponse)
    def search_endpoint(
        q: str = Query(..., min_length=1, max_length=1000),
        tenant: str = Query(..., min_length=1, max_length=128, pattern=TENANT),
        limit: int = Query(10, ge=1, le=100),
        flagged: bool | None = Query(None, description="moderation verdict of the segment"),
        start_s: float | None = Query(None, ge=0, description="segments ending at or after"),
        end_s: float | None = Query(None, ge=0, description="segments starting at or before"),
    ) -> SearchResponse:
        return search(
            settings, rt.embedder, rt.store, q, tenant=tenant, limit=limit, where=where(flagged, start_s, end_s)
        )

    @api.post("/search/image", response_model=SearchResponse)
    async def search_image(
        request: Request,
        tenant: str = Query(..., min_length=1, max_length=128, pattern=TENANT),
        limit: int = Query(10, ge=1, le=100),
        flagged: bool | None = Query(None),
        start_s: float | None = Query(None, ge=0),
        end_s: float | None = Query(None, ge=0),
    ) -> SearchResponse:
        """Query by example: the request body is an image (JPEG, PNG, WebP), at most 10 MB."""
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
            tenant=tenant,
            image=image,
            limit=limit,
            where=where(flagged, start_s, end_s),
        )

    @api.get("/thumbnails/{relpath:path}")
    def thumbnail(relpath: str) -> FileResponse:
        root = (settings.blob_dir / "thumbnails").resolve()
        path = (root / relpath).resolve()
        if not path.is_relative_to(root) or path.suffix != ".jpg" or not path.is_file():
            raise HTTPException(404, "no such thumbnail")
        return FileResponse(path, media_type="image/jpeg")

    @api.get("/metrics")
    def metrics() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return api


def serve_in_thread(rt) -> uvicorn.Server:
    host, port = split_host_port(rt.settings.http)
    server = uvicorn.Server(uvicorn.Config(create_api(rt), host=host, port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, name="http-api", daemon=True)
    thread.start()
    return server
