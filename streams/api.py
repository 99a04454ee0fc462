"""HTTP API served by ``framebus up``: search, health, thumbnails, metrics.

It runs in its own thread with its own event loop (uvicorn), so a slow query never stalls the agents'
loop; it shares the worker's embedder and vector store (both are thread-safe).
"""

from __future__ import annotations

import threading

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import FileResponse, PlainTextResponse

from streams.broker import split_host_port
from streams.search import SearchResponse, search


def create_api(rt) -> FastAPI:
    settings = rt.settings
    api = FastAPI(title="framebus", version="1", summary="semantic video search over framebus indexes")

    @api.get("/health")
    def health() -> dict:
        return {"status": "ok", "broker": settings.bootstrap, "models": settings.models,
                "agents": getattr(rt, "agents", []), "stats": dict(rt.stats)}

    @api.get("/search", response_model=SearchResponse)
    def search_endpoint(q: str = Query(..., min_length=1, max_length=1000),
                        tenant: str = Query(..., min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._-]+$"),
                        limit: int = Query(10, ge=1, le=100)) -> SearchResponse:
        return search(settings, rt.embedder, rt.store, q, tenant=tenant, limit=limit)

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
    server = uvicorn.Server(uvicorn.Config(create_api(rt), host=host, port=port, log_level="warning",
                                           access_log=False))
    thread = threading.Thread(target=server.run, name="http-api", daemon=True)
    thread.start()
    return server
