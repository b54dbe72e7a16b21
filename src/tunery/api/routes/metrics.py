"""``GET /metrics``: Prometheus text format (version 0.0.4), no auth (expose it to your scraper,
not to the internet).

Fleet-wide figures come from the database at scrape time, so every API node reports the same
numbers whichever workers did the work: jobs by status (the queue depth is ``status="queued"``),
jobs started, finished, failed and restarted, and each worker's last heartbeat. Request counts
and latencies are per API process, recorded by the ``RequestMetrics`` (an ASGI middleware that also
writes one JSON log line per request when ``TUNERY_LOG_FORMAT=json``).
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections import defaultdict
from datetime import timedelta

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tunery.api.deps import Ctx
from tunery.store.models import Job, JobEvent, Worker, utcnow
from tunery.store.status import TERMINAL, WORKING, JobStatus

router = APIRouter(tags=["operations"])
access_log = logging.getLogger("tunery.access")

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Workers silent for longer than this are dropped from the per-worker series (killed ones stay
# in the table; `tunery_workers` counts only those heartbeating within the heartbeat timeout).
FORGET_WORKERS_AFTER = timedelta(hours=1)


class Histogram:
    """Cumulative-bucket latency histogram per label set (thread-safe: routes run in a pool)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: dict[tuple[str, ...], list[int]] = defaultdict(lambda: [0] * (len(BUCKETS) + 1))
        self.sums: dict[tuple[str, ...], float] = defaultdict(float)

    def observe(self, labels: tuple[str, ...], seconds: float) -> None:
        with self._lock:
            self.counts[labels][bisect.bisect_left(BUCKETS, seconds)] += 1
            self.sums[labels] += seconds

    def snapshot(self) -> list[tuple[tuple[str, ...], list[int], float]]:
        with self._lock:
            return [(k, list(v), self.sums[k]) for k, v in self.counts.items()]


class RequestStats:
    """What ``RequestMetrics`` recorded in this process (kept on ``app.state.request_stats``)."""

    def __init__(self) -> None:
        self.latency = Histogram()
        self._statuses: dict[tuple[str, str, str], int] = defaultdict(int)
        self._lock = threading.Lock()

    def record(self, method: str, route: str, status: int, seconds: float) -> None:
        self.latency.observe((method, route), seconds)
        with self._lock:
            self._statuses[(method, route, str(status))] += 1

    def statuses(self) -> dict[tuple[str, str, str], int]:
        with self._lock:
            return dict(self._statuses)


class RequestMetrics:
    """ASGI middleware: time every HTTP request by method, route template and status."""

    def __init__(self, app: ASGIApp, stats: RequestStats, json_logs: bool = False):
        self.app = app
        self.stats = stats
        self.json_logs = json_logs

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            elapsed = time.perf_counter() - start
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope["method"]
            self.stats.record(method, route, status, elapsed)
            if self.json_logs:
                client = scope.get("client")
                access_log.info("request", extra={"fields": {
                    "method": method, "path": scope["path"], "route": route, "status": status,
                    "duration_ms": round(elapsed * 1000, 2), "client": client[0] if client else None}})


def _labels(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    escaped = (v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for v in values)
    return "{" + ",".join(f'{n}="{v}"' for n, v in zip(names, escaped, strict=True)) + "}"


class Exposition:
    """Builds the text format: ``# HELP``/``# TYPE`` once per metric, then its samples."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def metric(self, name: str, kind: str, help_: str, samples: list[tuple[dict[str, str], float]]) -> None:
        self.lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}"]
        for labels, value in samples:
            suffix = _labels(tuple(labels), tuple(labels.values())) if labels else ""
            self.lines.append(f"{name}{suffix} {value:g}" if isinstance(value, float) else f"{name}{suffix} {value}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _job_metrics(out: Exposition, s: Session, heartbeat_timeout_s: float) -> None:
    by_status = dict(s.execute(select(Job.status, func.count()).group_by(Job.status)).tuples().all())
    out.metric("tunery_jobs", "gauge", "Jobs by status (status=\"queued\" is the queue depth).",
               [({"status": st.value}, float(by_status.get(st.value, 0))) for st in JobStatus])
    oldest = s.scalar(select(func.min(Job.created_at)).where(Job.status == JobStatus.QUEUED.value))
    out.metric("tunery_queue_oldest_seconds", "gauge", "Age of the oldest queued job (0 when none).",
               [({}, (utcnow() - oldest).total_seconds() if oldest else 0.0)])
    claims = s.scalar(select(func.count()).select_from(JobEvent).where(
        JobEvent.type == "job_start", JobEvent.message.like("Job started on worker%")))
    restarts = s.scalar(select(func.count()).select_from(JobEvent).where(JobEvent.type == "job_restarted"))
    out.metric("tunery_jobs_started_total", "counter", "Times a worker claimed a job (restarts included).",
               [({}, float(claims or 0))])
    out.metric("tunery_jobs_restarted_total", "counter", "Times a job was requeued to resume elsewhere.",
               [({}, float(restarts or 0))])
    out.metric("tunery_jobs_finished_total", "counter", "Jobs that ended, by final status.",
               [({"status": st.value}, float(by_status.get(st.value, 0))) for st in JobStatus if st in TERMINAL])
    failed = (JobStatus.ERROR, JobStatus.USER_ERROR)
    out.metric("tunery_jobs_failed_total", "counter", "Jobs that ended in error or user_error.",
               [({}, float(sum(by_status.get(st.value, 0) for st in failed)))])
    stalest = s.scalar(select(func.min(Job.heartbeat_at)).where(Job.status.in_([w.value for w in WORKING])))
    out.metric("tunery_running_job_heartbeat_age_seconds_max", "gauge",
               "Seconds since the stalest running job's last heartbeat (0 when none run).",
               [({}, (utcnow() - stalest).total_seconds() if stalest else 0.0)])
    now = utcnow()
    workers = s.scalars(select(Worker).where(Worker.heartbeat_at > now - FORGET_WORKERS_AFTER)).all()
    live = [w for w in workers if (now - w.heartbeat_at).total_seconds() <= heartbeat_timeout_s]
    out.metric("tunery_workers", "gauge", "Workers heartbeating within the heartbeat timeout.",
               [({}, float(len(live)))])
    out.metric("tunery_worker_last_heartbeat_timestamp_seconds", "gauge", "Each worker's last heartbeat.",
               [({"worker": w.id, "host": w.host}, w.heartbeat_at.timestamp()) for w in workers])


def _request_metrics(out: Exposition, metrics: RequestStats) -> None:
    statuses = metrics.statuses()
    out.metric("tunery_http_requests_total", "counter", "HTTP requests by method, route and status.",
               [({"method": m, "route": r, "status": st}, float(n)) for (m, r, st), n in sorted(statuses.items())])
    name = "tunery_http_request_duration_seconds"
    out.lines += [f"# HELP {name} HTTP request latency by method and route.", f"# TYPE {name} histogram"]
    for (method, route), counts, total in sorted(metrics.latency.snapshot()):
        cumulative = 0
        for bound, n in zip((*BUCKETS, float("inf")), counts, strict=True):
            cumulative += n
            le = "+Inf" if bound == float("inf") else f"{bound:g}"
            out.lines.append(f"{name}_bucket{_labels(('method', 'route', 'le'), (method, route, le))} {cumulative}")
        labels = _labels(("method", "route"), (method, route))
        out.lines += [f"{name}_sum{labels} {total:.6f}", f"{name}_count{labels} {cumulative}"]


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(request: Request, ctx: Ctx) -> PlainTextResponse:
    out = Exposition()
    with ctx.db.read() as s:
        _job_metrics(out, s, ctx.settings.heartbeat_timeout_s)
    recorder: RequestStats | None = getattr(request.app.state, "request_stats", None)
    if recorder is not None:
        _request_metrics(out, recorder)
    return PlainTextResponse(out.text(), media_type="text/plain; version=0.0.4; charset=utf-8")
