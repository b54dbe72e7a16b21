"""``/v1/fine_tuning/jobs``: OpenAI's fine-tuning jobs over the same jobs, queue and workers as
Together's ``/v1/fine-tunes`` — a job made through either API is read, cancelled and paused through both.

    POST /v1/fine_tuning/jobs                      create (``job_requests.py`` → the shared JobSpec)
    GET  /v1/fine_tuning/jobs                      list, newest first: ``after``, ``limit``, ``metadata[k]=v``
    GET  /v1/fine_tuning/jobs/{id}                 retrieve
    POST /v1/fine_tuning/jobs/{id}/cancel          cancel
    POST /v1/fine_tuning/jobs/{id}/pause           pause: its worker saves a checkpoint and takes other jobs
    POST /v1/fine_tuning/jobs/{id}/resume          resume: queued again, it continues from that checkpoint
    GET  /v1/fine_tuning/jobs/{id}/events          message and metrics events, newest first (cursor)
    GET  /v1/fine_tuning/jobs/{id}/checkpoints     the job's usable checkpoints, newest first (cursor)
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from sqlalchemy.orm import Session

from tunery.api.dataset_checks import check_job_files
from tunery.api.deps import Ctx, CurrentUser, DbSession
from tunery.api.openai.job_requests import resolve_openai_job
from tunery.api.openai.schemas import (
    JobCreateRequest,
    checkpoint_object,
    cursor_page,
    event_object,
    job_object,
    metrics_object,
)
from tunery.errors import InvalidRequest, NotFound
from tunery.jobs import lifecycle
from tunery.jobs.admission import Limits
from tunery.jobs.results import openai_metrics, results_file_id
from tunery.store import jobs as job_store
from tunery.store.base_models import model_aliases, registered_models
from tunery.store.models import File, Job, JobEvent, JobMetric, User

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["openai"])
_ERRORS: dict[int | str, dict] = {400: {}, 404: {}}
Limit = Annotated[int, Query(ge=1, le=100)]


def _render(s: Session, job: Job, user: User) -> dict[str, Any]:
    results = results_file_id(job.id)
    return job_object(job, user.name, [results] if s.get(File, results) is not None else [])


@router.post("", responses=_ERRORS)
def create_job(ctx: Ctx, user: CurrentUser, body: JobCreateRequest) -> dict[str, Any]:
    """Create a job; it is queued at once (the files were validated when they were uploaded).
    Checked in short reads, the model looked up and the files rendered with no transaction open, the
    job written in a short write."""
    with ctx.db.read() as s:
        registered, aliases = registered_models(s), model_aliases(s)
    resolved = resolve_openai_job(ctx.db, body, user, ctx.catalog, registered, aliases, ctx.settings)
    files = [(resolved.training_file, "training_file")]
    files += [(resolved.validation_file, "validation_file")] if resolved.validation_file else []
    tokens = check_job_files(ctx, registered, resolved.spec, files)  # the model's template renders every sample
    with ctx.db.session() as s:
        job = lifecycle.create(s, user, resolved.spec, ctx.secrets.seal(resolved.secrets), resolved.training_file,
                               limits=Limits.from_settings(ctx.settings), estimated_tokens=tokens)
        return _render(s, job, user)


def _metadata_filter(request: Request) -> dict[str, str] | None:
    """``metadata[k]=v`` query parameters (OpenAI's deep-object filter) as a dict; ``{}`` for ``metadata=null``."""
    wanted = {key[len("metadata["):-1]: value for key, value in request.query_params.multi_items()
              if key.startswith("metadata[") and key.endswith("]")}
    if request.query_params.get("metadata") == "null":
        if wanted:
            raise InvalidRequest("metadata=null cannot be combined with metadata[key]=value", param="metadata")
        return {}
    return wanted or None


def _matches(job: Job, wanted: dict[str, str] | None) -> bool:
    if wanted is None:
        return True
    metadata = job.spec.metadata
    if not wanted:  # metadata=null: the jobs created without metadata
        return not metadata
    return metadata is not None and all(metadata.get(k) == v for k, v in wanted.items())


@router.get("", responses=_ERRORS)
def list_jobs(request: Request, s: DbSession, user: CurrentUser, after: str | None = None,
              limit: Limit = 20) -> dict[str, Any]:
    """The caller's jobs, newest first; ``after`` is the last job id of the previous page."""
    wanted = _metadata_filter(request)
    jobs = [j for j in job_store.list_jobs(s, user.id) if _matches(j, wanted)]
    start = 0
    if after is not None:
        start = next((i + 1 for i, j in enumerate(jobs) if j.id == after), -1)
        if start < 0:
            raise NotFound(f"after: no fine-tuning job {after} in this list", param="after")
    page = jobs[start:start + limit]
    return cursor_page([_render(s, j, user) for j in page], has_more=start + limit < len(jobs))


@router.get("/{job_id}", responses=_ERRORS)
def retrieve_job(s: DbSession, user: CurrentUser, job_id: str) -> dict[str, Any]:
    return _render(s, job_store.get_job(s, job_id, user.id), user)


def _act(s: Session, user: User, job_id: str, operation: Callable[[Session, Job, str], None]) -> dict[str, Any]:
    job = job_store.get_job(s, job_id, user.id)
    operation(s, job, user.name)
    s.refresh(job)
    return _render(s, job, user)


@router.post("/{job_id}/cancel", responses=_ERRORS)
def cancel_job(s: DbSession, user: CurrentUser, job_id: str) -> dict[str, Any]:
    """Cancel a job that has not ended: at once if it waits, else at its worker's next step."""
    return _act(s, user, job_id, lifecycle.cancel)


@router.post("/{job_id}/pause", responses=_ERRORS)
def pause_job(s: DbSession, user: CurrentUser, job_id: str) -> dict[str, Any]:
    """Pause a queued or running job (``paused``); nothing is lost, ``resume`` continues it."""
    return _act(s, user, job_id, lifecycle.pause)


@router.post("/{job_id}/resume", responses=_ERRORS)
def resume_job(s: DbSession, user: CurrentUser, job_id: str) -> dict[str, Any]:
    """Queue a paused job again; a worker continues it from the checkpoint it paused at."""
    return _act(s, user, job_id, lifecycle.resume)


def _event_cursor(s: Session, job: Job, after: str) -> tuple[datetime, int, int]:
    """``(time, kind, row id)`` of the item an events cursor names: ``ftevent-e<id>`` is an event row
    (kind 1), ``ftevent-m<id>`` a metrics row (kind 0)."""
    tail = after.removeprefix("ftevent-")
    kind, number = tail[:1], tail[1:]
    when = None
    if number.isdigit():
        if kind == "e":
            event = s.get(JobEvent, int(number))
            when = event.created_at if event is not None and event.job_id == job.id else None
        elif kind == "m":
            metric = s.get(JobMetric, int(number))
            when = metric.logged_at if metric is not None and metric.job_id == job.id else None
    if when is None:
        raise NotFound(f"after: no event {after} in job {job.id}", param="after")
    return when, 1 if kind == "e" else 0, int(number)


@router.get("/{job_id}/events", responses=_ERRORS)
def list_events(s: DbSession, user: CurrentUser, job_id: str, after: str | None = None,
                limit: Limit = 20) -> dict[str, Any]:
    """The job's events and per-step metrics, newest first (at one instant, events before metrics)."""
    job = job_store.get_job(s, job_id, user.id)
    # Each source gives its newest limit+1 rows below the cursor; merged, the first limit+1 decide.
    if after is None:
        events = job_store.events_page(s, job.id, limit + 1)
        metrics = job_store.metrics_page(s, job.id, limit + 1)
    else:
        when, kind, row_id = _event_cursor(s, job, after)
        events = job_store.events_page(s, job.id, limit + 1, when, row_id if kind == 1 else 0)
        metrics = job_store.metrics_page(s, job.id, limit + 1, when, row_id if kind == 0 else None)
    merged = sorted([((e.created_at, 1, e.id), event_object(e)) for e in events]
                    + [((m.logged_at, 0, m.id), metrics_object(m, job.total_steps)) for m in metrics],
                    key=lambda item: item[0], reverse=True)
    return cursor_page([item for _, item in merged[:limit]], has_more=len(merged) > limit)


@router.get("/{job_id}/checkpoints", responses=_ERRORS)
def list_checkpoints(s: DbSession, user: CurrentUser, job_id: str, after: str | None = None,
                     limit: Limit = 10) -> dict[str, Any]:
    """Every step at which the job stored a model it can be used or continued from (the final one
    included), newest first, with that step's training and validation metrics."""
    job = job_store.get_job(s, job_id, user.id)
    by_step = {c.step: c for c in job_store.list_checkpoints(s, job.id)  # ordered so the final one wins a step
               if c.variant == job.spec.checkpoint_variant}
    usable = [by_step[step] for step in sorted(by_step, reverse=True)]
    start = 0
    if after is not None:
        start = next((i + 1 for i, c in enumerate(usable) if f"ftckpt-{c.id}" == after), -1)
        if start < 0:
            raise NotFound(f"after: no checkpoint {after} in job {job.id}", param="after")
    page = usable[start:start + limit]
    items = []
    for c in page:
        values: dict[str, float] = {}
        for row in job_store.list_metrics(s, job.id, step_from=c.step, step_to=c.step):
            values.update(row.values)
        items.append(checkpoint_object(job, user.name, c, openai_metrics(c.step, values)))
    return cursor_page(items, has_more=start + limit < len(usable))
