"""The engine process: ``tunery inference`` (a fleet node), or the child ``tunery serve`` supervises.

    tunery inference --host 0.0.0.0 --port 8100     # with the API nodes' TUNERY_SECRET_KEY and blob settings

It serves ``protocol.py``'s two routes to the API, never to users: requests must carry the bearer token
derived from the server's secret key. Models come from the built-ins, the operator's registered
directories (the API passes their paths), the Hugging Face cache, and the blob store (fine-tuned weights
and adapters, unpacked once into ``<data_dir>/inference-cache``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tunery.errors import TuneryError
from tunery.inference.engine import Backend, Event, Limits, TransformersEngine
from tunery.inference.pool import ModelPool, PoolOptions
from tunery.inference.protocol import GenerateRequest, ModelRef, engine_token
from tunery.settings import Settings
from tunery.storage import BlobStore, open_blob_store
from tunery.storage.archives import unpack


def error(status: int, message: str, type_: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": param, "code": code}}, status)


def create_engine_app(backend: Backend, token: str) -> Starlette:
    def authorised(request: Request) -> bool:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip(), token)

    async def health(request: Request) -> Response:
        if not authorised(request):
            return error(401, "this is the inference engine's internal API", "authentication_error")
        return JSONResponse({"status": "ok", **backend.status()})

    async def generate(request: Request) -> Response:
        if not authorised(request):
            return error(401, "this is the inference engine's internal API", "authentication_error")
        try:
            body = GenerateRequest.model_validate_json(await request.body())
        except ValidationError as e:
            return error(422, f"malformed engine request: {e}", "invalid_request_error")
        try:
            events = await backend.open(body)
        except TuneryError as e:
            return error(e.status_code, e.message, e.error_type, e.param, e.code)
        return StreamingResponse(_ndjson(events), media_type="application/x-ndjson")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        backend.close()

    return Starlette(routes=[Route("/healthz", health), Route("/generate", generate, methods=["POST"])],
                     lifespan=lifespan)


async def _ndjson(events: AsyncIterator[Event]) -> AsyncIterator[bytes]:
    async for event in events:
        yield json.dumps(event).encode() + b"\n"


# -- building the engine from settings ------------------------------------------------------------

def build_backend(settings: Settings) -> Backend:
    if settings.inference_engine == "vllm":
        from tunery.inference.vllm_engine import VllmEngine

        return VllmEngine(settings, BlobFetcher(open_blob_store(settings), settings.inference_cache_dir),
                          BaseLocator(settings))
    import torch

    torch.set_num_threads(settings.inference_threads or max(1, (os.cpu_count() or 2) // 2))
    device = settings.inference_device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    options = PoolOptions(budget_bytes=memory_budget(settings), dtype=settings.inference_dtype, device=device,
                          max_batch_size=settings.inference_max_batch_size,
                          max_batch_tokens=settings.inference_max_batch_tokens)
    pool = ModelPool(options, BaseLocator(settings),
                     BlobFetcher(open_blob_store(settings), settings.inference_cache_dir))
    return TransformersEngine(pool, Limits(max_tokens=settings.inference_max_tokens,
                                           per_user=settings.inference_max_concurrent_per_user,
                                           max_pending=settings.inference_max_pending))


def memory_budget(settings: Settings) -> int:
    if settings.inference_memory_mb > 0:
        return settings.inference_memory_mb * 1024 * 1024
    pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    return int(pages * page_size // 2)


class BaseLocator:
    """A base model's local directory, resolved as workers resolve it (``tunery.models.registry``)."""

    def __init__(self, settings: Settings):
        self.settings = settings

    def __call__(self, ref: ModelRef) -> Path:
        from tunery.models.registry import resolve

        registered = {ref.base: ref.base_path} if ref.base_path else None
        return resolve(ref.base, cache_dir=self.settings.models_dir, registered=registered,
                       allow_network=self.settings.allow_hub_downloads, revision=ref.revision).path


class BlobFetcher:
    """A model archive from the blob store, unpacked once into the cache (blob keys never change content)."""

    def __init__(self, blobs: BlobStore, cache_dir: Path):
        self.blobs = blobs
        self.cache_dir = cache_dir

    def __call__(self, key: str) -> Path:
        dest = self.cache_dir / hashlib.sha256(key.encode()).hexdigest()[:32]
        if not dest.is_dir():
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=self.cache_dir))
            try:
                with self.blobs.local_copy(key) as archive:
                    unpack(archive, tmp)
                try:
                    os.rename(tmp, dest)
                except OSError:
                    if not dest.is_dir():
                        raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        tops = [p for p in dest.iterdir() if p.is_dir()]
        return tops[0] if len(tops) == 1 else dest


def serve_engine(settings: Settings, host: str, port: int) -> None:
    import uvicorn

    from tunery.logs import uvicorn_log_config

    backend = build_backend(settings)
    app = create_engine_app(backend, engine_token(settings.signing_key()))
    config: Any = uvicorn_log_config(settings)
    kwargs = {"log_config": config} if config else {}
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, **kwargs)
