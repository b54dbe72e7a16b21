"""What the dashboard pages show, computed from store rows: no HTTP here, no SQL beyond the store's
functions. Also the Jinja environment and its display filters."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from sqlalchemy.orm import Session

from tunery.queue.claim import queue_position
from tunery.store import jobs as job_store
from tunery.store.models import Checkpoint, File, Job
from tunery.store.status import TERMINAL, JobStatus
from tunery.web.chart import job_series, svg_chart

TEMPLATES_DIR = Path(__file__).parent / "templates"
STATIC_DIR = Path(__file__).parent / "static"
PAGE_SIZE = 20
STATUSES = [s.value for s in JobStatus]


# -- display filters ------------------------------------------------------------------------------

def when(dt: datetime | None) -> Markup:
    """A ``<time>`` element in UTC, e.g. 2025-01-31 14:05:09 UTC."""
    if dt is None:
        return Markup("—")
    dt = dt.astimezone(UTC)
    return Markup('<time datetime="{}">{}</time>').format(dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
                                                          dt.strftime("%Y-%m-%d %H:%M:%S UTC"))


def duration(seconds: float | None) -> str:
    """``1 h 02 min``, ``3 min 05 s``, ``12 s``."""
    if seconds is None or not math.isfinite(seconds):
        return "—"
    s = max(0, round(seconds))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s} s"


def filesize(n: int | None) -> str:
    if not n:
        return "0 B"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"  # pragma: no cover


def show(value: Any) -> str:
    """A hyperparameter value as text."""
    if value is None or value == "":
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={show(v)}" for k, v in value.items())
    return str(value)


def breakable(name: str) -> Markup:
    """``name`` with line-break opportunities after ``_`` and ``.`` (long parameter names on phones)."""
    return Markup(str(Markup.escape(name)).replace("_", "_<wbr>").replace(".", ".<wbr>"))


def make_env() -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES_DIR), autoescape=select_autoescape(["html"]),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(when=when, duration=duration, filesize=filesize, show=show, breakable=breakable)
    env.globals.update(statuses=STATUSES, Status=JobStatus)
    return env


# -- jobs list ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class JobPage:
    jobs: list[Job]
    status: str | None
    page: int
    pages: int
    total: int

    @property
    def live(self) -> bool:
        """Whether any job on this page can still change."""
        return any(j.status not in TERMINAL for j in self.jobs)


def job_page(s: Session, user_id: str, status: str | None, page: int) -> JobPage:
    status = status if status in STATUSES else None
    total = job_store.count_jobs(s, user_id, status)
    pages = max(1, math.ceil(total / PAGE_SIZE))
    page = min(max(1, page), pages)
    jobs = job_store.list_jobs(s, user_id, status, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE)
    return JobPage(jobs, status, page, pages, total)


# -- one job --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CheckpointRow:
    label: str
    step: int
    size: int
    created_at: datetime
    links: list[tuple[str, str]]  # (text, url)


@dataclass(frozen=True)
class JobView:
    job: Job
    terminal: bool
    queue_depth: int
    percent: float
    eta: float | None
    chart: Markup
    checkpoints: list[CheckpointRow]
    events: list[Any]
    hyperparameters: list[tuple[str, str, str]]


def checkpoint_rows(job: Job, checkpoints: list[Checkpoint]) -> list[CheckpointRow]:
    """One row per saved step (final last) with a link per downloadable variant."""
    lora = job.spec.is_lora
    groups: dict[tuple[bool, int], list[Checkpoint]] = {}
    for c in checkpoints:
        if c.variant in ("model", "adapter"):
            groups.setdefault((c.final, c.step), []).append(c)
    rows = []
    for (final, step), items in sorted(groups.items()):
        links = []
        for c in sorted(items, key=lambda c: c.variant != "model"):
            kind = "adapter" if c.variant == "adapter" else "merged"
            text = kind if lora else "model"
            url = f"/jobs/{job.id}/download?checkpoint={kind}" + ("" if final else f"&step={step}")
            links.append((f"{text} ({filesize(c.size)})", url))
        rows.append(CheckpointRow("Final" if final else "Intermediate", step, max(c.size for c in items),
                                  min(c.created_at for c in items), links))
    return rows


def hyperparameters(job: Job) -> list[tuple[str, str, str]]:
    """``(name, as submitted, as resolved)``; the resolved column differs where the server chose
    the value once training started (batch size "max")."""
    spec = job.spec
    rows: list[tuple[str, Any, Any]] = [("training type", spec.training_type.type, spec.training_type.type)]
    if (lora := spec.lora) is not None:
        rows += [("lora_r", lora.lora_r, lora.lora_r), ("lora_alpha", lora.lora_alpha, lora.lora_alpha),
                 ("lora_dropout", lora.lora_dropout, lora.lora_dropout),
                 ("lora_trainable_modules", lora.lora_trainable_modules, lora.lora_trainable_modules)]
    rows += [(f"training_method.{k}" if k != "method" else "training method", v, v)
             for k, v in spec.training_method.model_dump().items()]
    rows.append(("batch_size", spec.batch_size,
                 job.batch_size if job.batch_size is not None else
                 (spec.batch_size if spec.batch_size != "max" else "chosen when training starts")))
    sched = spec.lr_scheduler
    schedule = f"{sched.lr_scheduler_type} ({show(sched.lr_scheduler_args.model_dump(exclude_none=True))})"
    rows += [(name, v, v) for name, v in (
        ("n_epochs", spec.n_epochs), ("n_checkpoints", spec.n_checkpoints), ("n_evals", spec.n_evals),
        ("learning_rate", spec.learning_rate), ("lr_scheduler", schedule), ("warmup_ratio", spec.warmup_ratio),
        ("max_grad_norm", spec.max_grad_norm), ("weight_decay", spec.weight_decay),
        ("gradient_accumulation_steps", spec.gradient_accumulation_steps), ("max_seq_length", spec.max_seq_length),
        ("packing", spec.packing), ("random_seed", spec.random_seed),
        ("early_stopping_enabled", spec.early_stopping.enabled))]
    if (stopping := spec.early_stopping).enabled:
        rows += [("early_stopping_patience", stopping.patience, stopping.patience),
                 ("early_stopping_min_delta", stopping.min_delta, stopping.min_delta),
                 ("early_stopping_warmup_evals", stopping.warmup_evals, stopping.warmup_evals)]
    return [(name, show(a), show(b)) for name, a, b in rows]


def job_view(s: Session, job: Job) -> JobView:
    terminal = job.status in TERMINAL
    percent = 100.0 if job.status == JobStatus.COMPLETED else (
        100.0 * job.steps_completed / job.total_steps if job.total_steps else 0.0)
    eta = job.seconds_remaining if job.status == JobStatus.RUNNING else None
    metrics = job_store.list_metrics(s, job.id)
    return JobView(
        job=job, terminal=terminal, queue_depth=queue_position(s, job), percent=min(100.0, percent), eta=eta,
        chart=Markup(svg_chart(job_series(metrics), title=f"Loss and learning rate of {job.model_output_name}")),
        checkpoints=checkpoint_rows(job, job_store.list_checkpoints(s, job.id)),
        events=job_store.list_events(s, job.id), hyperparameters=hyperparameters(job),
    )


# -- files ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FileRow:
    file: File
    format: str
    error: str | None
    line: int | None


def file_rows(files: list[File]) -> list[FileRow]:
    rows = []
    for f in files:
        report = f.report or {}
        fmt = f.dataset_format or (report.get("dataset_format") or "").lower() or "—"
        error = report.get("error") if f.processing_status in ("INVALID_FORMAT", "FAILED") else None
        # The validator's messages usually start with "line N:" already; name the line only when not.
        line = report.get("line_number") if error and not error.lower().startswith(("line", "row")) else None
        rows.append(FileRow(f, fmt, error, line))
    return rows
