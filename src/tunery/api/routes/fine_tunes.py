"""``/v1/fine-tunes``: create, list, retrieve, cancel, delete jobs; their events, checkpoints and
metrics; model limits and price estimates."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from sqlalchemy import Connection
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from tunery.api.dataset_checks import check_job_files
from tunery.api.deps import (
    AppContext,
    Ctx,
    CurrentUser,
    DbSession,
    ReadSession,
    authenticated_user_id,
    bearer_key,
    get_ctx,
)
from tunery.api.estimates import estimate_price as estimate
from tunery.api.job_requests import base_model_of, resolve_job_request
from tunery.api.preview import preview
from tunery.api.routes.downloads import tokenized_dataset_url
from tunery.api.schemas.fine_tunes import (
    FinetuneRequest,
    PreviewRequest,
    PriceEstimateRequest,
    wire_event,
    wire_job,
)
from tunery.api.schemas.timefmt import iso
from tunery.jobs import lifecycle
from tunery.jobs.admission import Limits
from tunery.jobs.downloads import TOKENIZED_MEDIA_TYPE, find_tokenized_dataset
from tunery.queue.claim import queue_position
from tunery.store import jobs as job_store
from tunery.store.base_models import registered_models
from tunery.store.models import Job

router = APIRouter(prefix="/v1/fine-tunes", tags=["fine-tunes"])


def job_json(s: Session | Connection, job: Job, *, truncated: bool = False, with_events: bool = True) -> dict[str, Any]:
    events = [wire_event(e) for e in job_store.list_events(s, job.id)] if with_events else []
    return wire_job(job, events=events, queue_depth=queue_position(s, job), truncated=truncated)


@router.get("/models/supported")
def supported_models(ctx: Ctx, s: ReadSession, _: CurrentUser) -> dict[str, Any]:
    return {"models": ctx.catalog.supported(registered_models(s))}


@router.get("/models/limits")
def model_limits(ctx: Ctx, user: CurrentUser, model_name: str = Query(...)) -> dict[str, Any]:
    with ctx.db.read() as s:
        base, registered = base_model_of(s, model_name, user), registered_models(s)
    return ctx.catalog.limits(base, registered)  # a hub model's config may be fetched: no transaction open


@router.post("/estimate-price")
def estimate_price(ctx: Ctx, user: CurrentUser, body: PriceEstimateRequest) -> dict[str, Any]:
    return estimate(ctx, user, body)


@router.post("/preview")
def preview_tokenization(ctx: Ctx, user: CurrentUser, body: PreviewRequest) -> dict[str, Any]:
    return preview(ctx, user, body)


@router.post("")
def create_job(ctx: Ctx, user: CurrentUser, req: FinetuneRequest) -> dict[str, Any]:
    # Checked in short reads, the model looked up (maybe on the hub) and the files rendered with no
    # transaction open, the job written in a short write.
    with ctx.db.read() as s:
        registered = registered_models(s)
    resolved = resolve_job_request(ctx.db, req, user, ctx.catalog, registered)
    files = [(resolved.training_file, "training_file")]
    files += [(resolved.validation_file, "validation_file")] if resolved.validation_file else []
    tokens = check_job_files(ctx, registered, resolved.spec, files)
    with ctx.db.session() as s:
        job = lifecycle.create(s, user, resolved.spec, ctx.secrets.seal(resolved.secrets), resolved.training_file,
                               limits=Limits.from_settings(ctx.settings), estimated_tokens=tokens,
                               priority=req.priority)
        return job_json(s, job, truncated=True)


@router.get("")
def list_jobs(s: ReadSession, user: CurrentUser) -> dict[str, Any]:
    return {"object": "list", "data": [job_json(s, j, truncated=True, with_events=False)
                                       for j in job_store.list_jobs(s, user.id)]}


# The two routes every SDK polls while a job runs cost the least that serves them: async, with no
# dependency (each is a step per request); they authenticate and read in one transaction on a plain
# connection, not the ORM; orjson encodes. On SQLite the read runs right on the event loop, since it
# takes less than the hop to a thread would; on a networked database, in a thread.


async def _polled(request: Request, respond: Callable[[AppContext, str | None, str], Response],
                  job_id: str) -> Response:
    ctx = get_ctx(request)
    if ctx.db.reads_in_process:
        return respond(ctx, bearer_key(request), job_id)
    return await run_in_threadpool(respond, ctx, bearer_key(request), job_id)


def _json(body: dict[str, Any]) -> Response:
    return Response(orjson.dumps(body), media_type="application/json")


@router.get("/{job_id}")
async def retrieve_job(request: Request, job_id: str) -> Response:
    return await _polled(request, _job_response, job_id)


def _job_response(ctx: AppContext, key: str | None, job_id: str) -> Response:
    with ctx.db.read_rows() as conn:
        body = job_json(conn, job_store.read_job(conn, job_id, authenticated_user_id(conn, key)))
    return _json(body)


@router.post("/{job_id}/cancel")
def cancel_job(s: DbSession, user: CurrentUser, job_id: str) -> dict[str, Any]:
    job = job_store.get_job(s, job_id, user.id)
    lifecycle.cancel(s, job, by=user.name)
    s.refresh(job)
    return job_json(s, job, truncated=True)


@router.delete("/{job_id}")
def delete_job(ctx: Ctx, user: CurrentUser, job_id: str) -> dict[str, Any]:
    lifecycle.delete(ctx.db, ctx.blobs, user.id, job_id)
    return {"id": job_id, "object": "fine-tune", "deleted": True, "message": f"deleted {job_id}"}


@router.get("/{job_id}/download-tokenized-dataset")
def tokenized_dataset(request: Request, s: ReadSession, user: CurrentUser, job_id: str) -> dict[str, Any]:
    """Where to download the tokenized training set the job trained on (a signed URL, valid for a
    while without the API key), as the SDK's ``retrieve_tokenized_dataset`` reads it."""
    found = find_tokenized_dataset(s, job_id, user.id)
    url, expires = tokenized_dataset_url(request, job_id)
    return {"content_type": TOKENIZED_MEDIA_TYPE, "expires_at": iso(datetime.fromtimestamp(expires, UTC)),
            "filename": found.filename, "size": found.size, "url": url}


@router.get("/{job_id}/events")
async def list_events(request: Request, job_id: str) -> Response:
    return await _polled(request, _events_response, job_id)


def _events_response(ctx: AppContext, key: str | None, job_id: str) -> Response:
    with ctx.db.read_rows() as conn:
        job_store.check_owner(conn, job_id, authenticated_user_id(conn, key))
        events = [wire_event(e) for e in job_store.list_events(conn, job_id)]
    return _json({"object": "list", "data": events})


CHECKPOINT_TYPES = {(False, "model"): "Intermediate", (True, "model"): "Final Merged",
                    (True, "adapter"): "Final Adapter"}


@router.get("/{job_id}/checkpoints")
def list_checkpoints(s: ReadSession, user: CurrentUser, job_id: str) -> dict[str, Any]:
    job = job_store.get_job(s, job_id, user.id)
    lora = job.spec.is_lora
    data = []
    for c in job_store.list_checkpoints(s, job.id):
        label = CHECKPOINT_TYPES.get((c.final, c.variant))
        if label is None:
            continue  # resume state and intermediate adapters are not separate list entries
        if c.final and not lora:
            label = "Final"
        data.append({"object": "checkpoint", "checkpoint_type": label, "created_at": iso(c.created_at),
                     "path": f"jobs/{job.id}/{'final' if c.final else f'step-{c.step}'}/{c.variant}",
                     "step": c.step, "checkpoint": c.variant,
                     "name": job.id if c.final else f"{job.id}:{c.step}", "size": c.size})
    return {"object": "list", "data": data}


@router.get("/{job_id}/metrics")
def list_metrics(
    s: ReadSession, user: CurrentUser, job_id: str,
    global_step_from: int | None = None, global_step_to: int | None = None,
    logged_at_from: datetime | None = None, logged_at_to: datetime | None = None,
    resolution: int | None = None,
) -> dict[str, Any]:
    job = job_store.get_job(s, job_id, user.id)
    rows = job_store.list_metrics(s, job.id, global_step_from, global_step_to, _aware(logged_at_from),
                                  _aware(logged_at_to))
    train = [r for r in rows if not any(k.startswith("eval/") for k in r.values)]
    if resolution and resolution > 0 and len(train) > resolution:
        keep = {train[round(i * (len(train) - 1) / max(1, resolution - 1))].id for i in range(resolution)}
        rows = [r for r in rows if r.id in keep or any(k.startswith("eval/") for k in r.values)]
    # Every value a number, as Together's spec has it: the timestamp is unix seconds.
    return {"metrics": [{"train/global_step": r.step, **r.values, "timestamp": r.logged_at.timestamp()}
                        for r in rows]}


def _aware(dt: datetime | None) -> datetime | None:
    return dt.replace(tzinfo=UTC) if dt is not None and dt.tzinfo is None else dt
