"""A fleet on one machine: an API node (`tunery serve`, no embedded workers) and `tunery worker`
processes that share nothing but a PostgreSQL database and an S3 bucket (moto) — each worker has
its own data dir, so its own scratch, staging and base-model cache, as if on its own host."""

from __future__ import annotations

import os
import signal
import subprocess
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard
from sqlalchemy import select

from tests.backends import S3Server
from tests.conftest import TUNERY, LiveServer, server_env
from tunery.store.db import Database
from tunery.store.models import Checkpoint, JobEvent

# Fast failure detection, so a killed worker's job is requeued within seconds.
TIMING = {"TUNERY_HEARTBEAT_INTERVAL_S": "0.25", "TUNERY_HEARTBEAT_TIMEOUT_S": "2.5"}
DONE = {"completed", "error", "user_error", "cancelled"}


@dataclass
class WorkerProcess:
    name: str
    data_dir: Path
    proc: subprocess.Popen[bytes]
    log_path: Path

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]


SECRET_KEY = "fleet-secret"


@dataclass
class Fleet:
    root: Path
    server: LiveServer
    s3: S3Server
    bucket: str
    prefix: str
    database_url: str
    workers: list[WorkerProcess] = field(default_factory=list)
    started: int = 0

    def shared_env(self) -> dict[str, str]:
        # The API's secret key: workers open the jobs' sealed secrets with it.
        return {"TUNERY_DATABASE_URL": self.database_url, "TUNERY_SECRET_KEY": SECRET_KEY,
                **self.s3.env(self.bucket, self.prefix), **TIMING}

    def start_worker(self, **env: str) -> WorkerProcess:
        name = f"w{self.started}"
        self.started += 1
        data_dir = self.root / name
        data_dir.mkdir(parents=True)
        log_path = self.root / f"{name}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([TUNERY, "worker", "--data-dir", str(data_dir)],
                                    env=server_env(data_dir, **self.shared_env(), **env),
                                    stdout=log, stderr=subprocess.STDOUT)
        worker = WorkerProcess(name, data_dir, proc, log_path)
        self.workers.append(worker)
        return worker

    def stop_workers(self) -> None:
        for w in self.workers:
            w.stop()

    def db(self) -> Database:
        return Database(self.database_url)

    def events(self, job_id: str) -> list[JobEvent]:
        db = self.db()
        try:
            with db.session() as s:
                return list(s.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)))
        finally:
            db.dispose()

    def claims(self, job_id: str) -> list[str]:
        """The workers that claimed ``job_id``, in order."""
        prefix = "Job started on worker "
        return [e.message.removeprefix(prefix) for e in self.events(job_id)
                if e.type == "job_start" and e.message.startswith(prefix)]

    def checkpoints(self, job_id: str) -> list[Checkpoint]:
        db = self.db()
        try:
            with db.session() as s:
                return list(s.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id)))
        finally:
            db.dispose()

    def objects(self, under: str) -> dict[str, int]:
        """Object key (relative to the prefix) → size, for keys under ``under``."""
        full = f"{self.prefix}/{under}"
        out: dict[str, int] = {}
        for page in self.s3.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
            for o in page.get("Contents", []):
                out[o["Key"].removeprefix(self.prefix + "/")] = int(o["Size"])
        return out

    def assert_listed_checkpoints_complete(self, job_id: str, tmp: Path) -> list[Checkpoint]:
        """Every listed checkpoint part is in the store, at its listed size, and unpacks whole;
        every intermediate step lists the same parts."""
        rows = self.checkpoints(job_id)
        stored = self.objects(f"jobs/{job_id}/")
        client = self.s3.client()
        for row in rows:
            assert stored.get(row.blob_key) == row.size, f"listed {row.blob_key} is missing or partial"
            archive = tmp / "ckpt.tar.zst"
            client.download_file(self.bucket, f"{self.prefix}/{row.blob_key}", str(archive))
            with open(archive, "rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as zr, \
                    tarfile.open(fileobj=zr, mode="r|") as tar:
                names = [m.name for m in tar]
            assert names and names[0] == row.variant, names[:3]
        by_step: dict[int, set[str]] = {}
        for row in rows:
            if not row.final:
                by_step.setdefault(row.step, set()).add(row.variant)
        assert len({frozenset(v) for v in by_step.values()}) <= 1, f"a partial checkpoint is listed: {by_step}"
        return rows


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, fleet: Fleet | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    logs = "\n".join(f"--- {w.name}\n{w.log()}" for w in (fleet.workers if fleet else []))
    raise AssertionError(f"timed out waiting for {what}\n{logs}")


def worker_pid(marker: Path) -> int:
    return int(marker.read_text())


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
