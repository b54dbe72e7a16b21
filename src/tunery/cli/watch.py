"""The live view of a fine-tuning job (`tunery fine-tuning watch ft-…`, `create --watch`, quickstart).

It polls the job, its events and its newest metrics about once a second and shows status,
step/total, epoch, loss (and eval loss), learning rate, tokens/s, ETA and the latest events —
as a Rich Live panel on a terminal, or as plain lines (new events plus a progress line every few
seconds) when the output is a file or a pipe. It returns when the job ends; the exit code says how:

    0 completed · 1 failed (error, user_error) · 3 cancelled · 130 stopped watching (Ctrl-C)

Ctrl-C only stops watching: the job keeps running on the server.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from tunery.cli.client import Client, CliError
from tunery.cli.output import console as make_console
from tunery.cli.output import duration, local_time, number, parse_time
from tunery.store.status import TERMINAL, JobStatus

EXIT_COMPLETED, EXIT_FAILED, EXIT_CANCELLED, EXIT_INTERRUPTED = 0, 1, 3, 130
POLL_S = 1.0
PLAIN_PROGRESS_EVERY_S = 5.0
SHOWN_EVENTS = 6
RECONNECT_FOR_S = 60.0
STATUS_STYLE: dict[str, str] = {JobStatus.COMPLETED: "green", JobStatus.ERROR: "red", JobStatus.USER_ERROR: "red",
                JobStatus.CANCELLED: "red"}


@dataclass
class JobView:
    """What the view shows, accumulated across polls."""

    job: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    train: dict[str, Any] = field(default_factory=dict)  # the newest training metrics row
    eval_loss: float | None = None

    @property
    def status(self) -> str:
        return str(self.job.get("status", ""))

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    def poll(self, client: Client, job_id: str) -> None:
        self.job = client.get(f"/v1/fine-tunes/{job_id}")
        self.events = client.get(f"/v1/fine-tunes/{job_id}/events")["data"]
        since = self.train.get("train/global_step")
        for row in client.get(f"/v1/fine-tunes/{job_id}/metrics", global_step_from=since)["metrics"] or []:
            if "train/loss" in row:
                self.train = row
            if row.get("eval/loss") is not None:
                self.eval_loss = float(row["eval/loss"])

    def elapsed(self) -> float | None:
        start = parse_time(self.job.get("created_at"))
        if start is None:
            return None
        end = parse_time(self.job.get("updated_at")) if self.done else None
        return ((end or datetime.now(UTC)) - start).total_seconds()

    def eta(self) -> float | None:
        progress = self.job.get("progress") or {}
        return float(progress["seconds_remaining"]) if progress.get("estimate_available") else None

    def steps(self) -> tuple[int, int]:
        return int(self.job.get("steps_completed") or 0), int(self.job.get("total_steps") or 0)

    def epoch(self) -> str:
        n_epochs = self.job.get("n_epochs")
        current = self.train.get("train/epoch")
        if current is None:
            current = self.job.get("epochs_completed") or 0
        return f"{float(current):.1f}/{n_epochs}"

    def numbers_line(self) -> str:
        t = self.train
        loss = number(t.get("train/loss"))
        if self.eval_loss is not None:
            loss += f" (eval {number(self.eval_loss)})"
        speed = t.get("train/tokens_per_second")
        return (f"loss {loss} · lr {number(t.get('train/learning_rate'), 3)} · "
                f"{'—' if speed is None else f'{speed:,.0f}'} tokens/s")

    def progress_line(self) -> str:
        done, total = self.steps()
        return (f"{self.status}: step {done}/{total or '?'} · epoch {self.epoch()} · {self.numbers_line()} · "
                f"ETA {duration(self.eta())}")


def render(view: JobView) -> RenderableType:
    job = view.job
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    status = Text(view.status, style=STATUS_STYLE.get(view.status, "yellow"))
    status.append(f"  ·  {duration(view.elapsed())} elapsed  ·  ETA {duration(view.eta())}", style="default")
    grid.add_row("Status", status)
    done, total = view.steps()
    bar = Table.grid(padding=(0, 1))
    bar.add_row(ProgressBar(total=total or None, completed=done, width=30),
                Text(f"step {done}/{total or '?'}  ·  epoch {view.epoch()}"))
    grid.add_row("Progress", bar)
    grid.add_row("Training", view.numbers_line())
    events = Table.grid(padding=(0, 1))
    for e in view.events[-SHOWN_EVENTS:]:
        style = "red" if e.get("level") == "error" else "yellow" if e.get("level") == "warning" else "dim"
        events.add_row(Text(local_time(e.get("created_at"), with_date=False), style="dim"),
                       Text(str(e.get("message", "")), style=style if style != "dim" else ""))
    grid.add_row("Events", events)
    title = f"{job.get('id', '')}  {job.get('model', '')} → {job.get('model_output_name', '')}"
    return Panel(Group(grid), title=title, title_align="left")


def watch_job(client: Client, job_id: str, console: Console | None = None) -> int:
    """Follow ``job_id`` until it ends; print a closing line and return the exit code."""
    out = console or make_console()
    view = JobView()
    try:
        if out.is_terminal:
            with Live(Text(f"Connecting to {job_id}…"), console=out, refresh_per_second=4) as live:
                _follow(client, job_id, view, lambda: live.update(render(view)))
        else:
            _follow(client, job_id, view, _plain_printer(view, out))
    except KeyboardInterrupt:
        out.print(f"Stopped watching; {job_id} keeps running. Reattach with: tunery fine-tuning watch {job_id}")
        return EXIT_INTERRUPTED
    return _closing(view, out)


def _follow(client: Client, job_id: str, view: JobView, show: Any) -> None:
    lost_since: float | None = None
    while True:
        try:
            view.poll(client, job_id)
            lost_since = None
        except CliError as e:
            if e.status != 0:
                raise
            lost_since = lost_since or time.monotonic()
            if time.monotonic() - lost_since > RECONNECT_FOR_S:
                raise
        show()
        if view.done:
            return
        time.sleep(POLL_S)


def _plain_printer(view: JobView, out: Console) -> Any:
    """Plain output for logs: every new event as a line, and a progress line now and then."""
    seen = 0
    last_progress = 0.0
    last_step = -1

    def show() -> None:
        nonlocal seen, last_progress, last_step
        for e in view.events[seen:]:
            out.print(f"{local_time(e.get('created_at'), with_date=False)}  {e.get('message', '')}", markup=False,
                      highlight=False)
        seen = len(view.events)
        step = view.steps()[0]
        now = time.monotonic()
        if view.train and step != last_step and now - last_progress >= PLAIN_PROGRESS_EVERY_S:
            out.print(view.progress_line(), markup=False, highlight=False)
            last_progress, last_step = now, step

    return show


def _closing(view: JobView, out: Console) -> int:
    job = view.job
    job_id = job.get("id", "")
    took = duration(view.elapsed())
    if view.status == JobStatus.COMPLETED:
        out.print(f"[green]✓[/] {job_id} completed in {took}: {escape(str(job.get('model_output_name')))} "
                  f"(final loss {number(view.train.get('train/loss'))}). "
                  f"Download it with: tunery fine-tuning download {job_id}")
        out.print(f"Chat with it: tunery chat {escape(str(job.get('model_output_name')))}", highlight=False,
                  soft_wrap=True)
        return EXIT_COMPLETED
    if view.status == JobStatus.CANCELLED:
        out.print(f"[red]✗[/] {job_id} was cancelled after {took}")
        return EXIT_CANCELLED
    reason = job.get("error") or next((e.get("message") for e in reversed(view.events) if e.get("level") == "error"),
                                      "no error message")
    out.print(f"[red]✗[/] {job_id} failed ({view.status}) after {took}: {escape(str(reason))}", highlight=False)
    return EXIT_FAILED
