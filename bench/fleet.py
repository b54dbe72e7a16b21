"""The fleet under load: 200 short jobs, 4 workers, 50 API clients polling, on PostgreSQL and S3.

Run:  eval "$(.ci/postgres)"                       # a throwaway PostgreSQL on 127.0.0.1
      .venv/bin/python bench/fleet.py              # 200 jobs, 4 workers, 50 clients
      .venv/bin/python bench/fleet.py --jobs 40 --workers 2 --clients 10

Everything runs on loopback: a fresh database on the PostgreSQL at $TUNERY_TEST_POSTGRES_URL,
moto's S3 server (`moto_server`, its own process), one API node (`tunery serve --no-worker`) and
N `tunery worker` processes, each with its own data dir (nothing shared but the database and the
bucket). Workers run ``bench/stub_trainer.py`` instead of a recipe (TUNERY_RECIPE_MODULE): a job
is real queue, staging from S3, child process, relay, checkpoint and model upload to S3 and
completion, but no training, so the numbers are about the queue and the API, not the CPU. The
workers and the S3 server run at nice 10, as the other hosts they stand in for: on one machine
they must not take the API node's CPU (PostgreSQL and the clients run at normal priority).

Four users create the jobs through the API; meanwhile each of the 50 clients polls one job's
``GET /v1/fine-tunes/{id}`` and ``GET /v1/fine-tunes/{id}/events`` every --poll-s seconds (the
SDK's polling pattern) until every job has ended. It prints jobs/minute, p50/p99 latency per
route, double claims (a job claimed again without a restart in between: must be 0), lost jobs
(not completed: must be 0), and the queue overhead: claim → training_start per job (the worker's
staging and child start-up), plus the wait from queued to claim.

Targets: p99 of GET /v1/fine-tunes/{id} < 50 ms; claim → training start < 1 s; 0 double claims;
0 lost jobs. No baseline run: the targets are absolute (see bench/upload.py for the ratio style).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from datetime import datetime
from pathlib import Path

import httpx
from sqlalchemy import create_engine, select, text

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tunery.store.db import Database, normalize_url  # noqa: E402
from tunery.store.models import Job, JobEvent  # noqa: E402
from tunery.store.users import create_key  # noqa: E402

BIN = Path(sys.executable).parent
MODEL = "tunery/tiny-llama"
CLAIM = "Job started on worker "
NICE = ["nice", "-n", "10"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{what} did not come up at {url}")


def fresh_database(admin_url: str) -> str:
    name = f"tunery_bench_{uuid.uuid4().hex[:8]}"
    engine = create_engine(normalize_url(admin_url), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return normalize_url(admin_url).rpartition("/")[0] + "/" + name


def drop_database(admin_url: str, url: str) -> None:
    engine = create_engine(normalize_url(admin_url), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{url.rpartition("/")[2]}" WITH (FORCE)'))
    engine.dispose()


class Fleet:
    def __init__(self, root: Path, database_url: str, workers: int):
        self.root, self.database_url = root, database_url
        self.procs: list[subprocess.Popen[bytes]] = []
        s3_port, self.api_port = free_port(), free_port()
        self.s3 = f"http://127.0.0.1:{s3_port}"
        self.bucket = "bench"
        # The S3 server and the workers stand in for other hosts: at nice 10 they cannot starve
        # the API node under measurement of this machine's CPU (the workers' children inherit it).
        self._spawn("s3", [*NICE, str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(s3_port)], {})
        wait_http(self.s3, "moto_server")
        import boto3

        boto3.client("s3", endpoint_url=self.s3, region_name="us-east-1", aws_access_key_id="bench",
                     aws_secret_access_key="bench").create_bucket(Bucket=self.bucket)
        api_dir = root / "api"
        self._spawn("api", [str(BIN / "tunery"), "serve", "--no-worker", "--port", str(self.api_port),
                            "--data-dir", str(api_dir)], self.env(api_dir))
        wait_http(f"{self.base_url}/healthz", "tunery serve")
        for i in range(workers):
            data = root / f"worker{i}"
            self._spawn(f"worker{i}", [*NICE, str(BIN / "tunery"), "worker", "--data-dir", str(data)],
                        {**self.env(data), "TUNERY_RECIPE_MODULE": "bench.stub_trainer",
                         "PYTHONPATH": str(REPO)})

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def env(self, data_dir: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TUNERY_", "AWS_"))}
        return {**env, "TUNERY_DATA_DIR": str(data_dir), "TUNERY_DATABASE_URL": self.database_url,
                "TUNERY_SECRET_KEY": "fleet-bench-secret",
                "TUNERY_BLOB_URL": f"s3://{self.bucket}/fleet", "TUNERY_S3_ENDPOINT_URL": self.s3,
                "TUNERY_S3_ACCESS_KEY_ID": "bench", "TUNERY_S3_SECRET_ACCESS_KEY": "bench",
                "TUNERY_S3_ADDRESSING_STYLE": "path", "TUNERY_HEARTBEAT_INTERVAL_S": "1",
                "TUNERY_HEARTBEAT_TIMEOUT_S": "15", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str]) -> None:
        log = open(self.root / f"{name}.log", "wb")  # noqa: SIM115 - the process holds it
        self.procs.append(subprocess.Popen(cmd, env=env or None, stdout=log, stderr=subprocess.STDOUT))

    def key(self, user: str) -> str:
        db = Database(self.database_url)
        try:
            with db.session() as s:
                return create_key(s, user)
        finally:
            db.dispose()

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.terminate()
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


def setup_users(fleet: Fleet, users: int) -> tuple[dict[str, str], dict[str, str]]:
    """A key and one small uploaded dataset per user."""
    from together import Together

    keys = {f"user{u}": fleet.key(f"user{u}") for u in range(users)}
    path = fleet.root / "train.jsonl"
    path.write_text("".join(f'{{"text": "sample {i} for the fleet benchmark"}}\n' for i in range(64)))
    files = {}
    for user, key in keys.items():
        files[user] = Together(base_url=fleet.base_url, api_key=key, max_retries=0).files.upload(path).id
    return keys, files


def create_jobs(fleet: Fleet, n: int, keys: dict[str, str], files: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """Create ``n`` jobs round-robin over the users, through the API."""
    users = len(keys)
    jobs, owner = [], {}
    clients = {u: httpx.Client(base_url=fleet.base_url, headers={"Authorization": f"Bearer {k}"}, timeout=60)
               for u, k in keys.items()}
    for i in range(n):
        user = f"user{i % users}"
        r = clients[user].post("/v1/fine-tunes", json={
            "training_file": files[user], "model": MODEL, "n_epochs": 1, "n_checkpoints": 2,
            "learning_rate": 1e-3, "batch_size": 8, "max_seq_length": 128,
            "training_type": {"type": "Lora", "lora_r": 8, "lora_alpha": 16}})
        r.raise_for_status()
        jobs.append(r.json()["id"])
        owner[r.json()["id"]] = keys[user]
    return jobs, owner


async def poll(base_url: str, jobs: list[str], owner: dict[str, str], latencies: dict[str, list[float]],
               done: asyncio.Event, poll_s: float, seed: int) -> None:
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        await asyncio.sleep(rng.random() * poll_s)
        while not done.is_set():
            job_id = rng.choice(jobs)
            headers = {"Authorization": f"Bearer {owner[job_id]}"}
            for route, url in (("GET /v1/fine-tunes/{id}", f"/v1/fine-tunes/{job_id}"),
                               ("GET /v1/fine-tunes/{id}/events", f"/v1/fine-tunes/{job_id}/events")):
                t0 = time.perf_counter()
                r = await http.get(url, headers=headers)
                latencies[route].append(time.perf_counter() - t0)
                r.raise_for_status()
            await asyncio.sleep(poll_s)


async def load(fleet: Fleet, jobs: list[str], owner: dict[str, str], clients: int, poll_s: float,
               timeout_s: float) -> tuple[dict[str, list[float]], float]:
    latencies: dict[str, list[float]] = defaultdict(list)
    done = asyncio.Event()
    tasks = [asyncio.create_task(poll(fleet.base_url, jobs, owner, latencies, done, poll_s, i))
             for i in range(clients)]
    db = Database(fleet.database_url)
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        await asyncio.sleep(1)
        with db.session() as s:
            active = s.scalar(select(Job.id).where(Job.status.not_in(("completed", "cancelled", "error",
                                                                      "user_error"))).limit(1))
        if active is None:
            break
    done.set()
    await asyncio.gather(*tasks)
    db.dispose()
    return latencies, time.monotonic() - start


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(fleet: Fleet, jobs: list[str], latencies: dict[str, list[float]], created: datetime) -> dict[str, float]:
    db = Database(fleet.database_url)
    with db.session() as s:
        rows = {j.id: j for j in s.scalars(select(Job).where(Job.id.in_(jobs)))}
        events: dict[str, list[JobEvent]] = defaultdict(list)
        for e in s.scalars(select(JobEvent).where(JobEvent.job_id.in_(jobs)).order_by(JobEvent.id)):
            events[e.job_id].append(e)
    db.dispose()
    double = lost = 0
    overhead, waits = [], []
    for job_id in jobs:
        claims = restarts = 0
        for e in events[job_id]:
            if e.type == "job_start" and e.message.startswith(CLAIM):
                claims += 1
                if claims > restarts + 1:
                    double += 1
            elif e.type == "job_restarted":
                restarts += 1
        job = rows.get(job_id)
        if job is None or job.status != "completed":
            lost += 1
        claim = next((e.created_at for e in events[job_id] if e.type == "job_start"), None)
        queued = next((e.created_at for e in events[job_id] if e.message.startswith("Job queued")), None)
        start = next((e.created_at for e in events[job_id] if e.type == "training_start"), None)
        if claim and start:
            overhead.append((start - claim).total_seconds())
        if claim and queued:
            waits.append((claim - queued).total_seconds())
    finished = [j.finished_at for j in rows.values() if j.status == "completed" and j.finished_at]
    span = (max(finished) - created).total_seconds() if finished else float("nan")
    print(f"jobs: {len(jobs)}  completed: {len(finished)}  jobs/minute: {60 * len(finished) / span:.1f} "
          f"(first create to last completion: {span:.1f} s)")
    for route, values in sorted(latencies.items()):
        print(f"{route:34s} n={len(values):6d}  p50={1000 * pct(values, 0.5):7.1f} ms  "
              f"p99={1000 * pct(values, 0.99):7.1f} ms  max={1000 * max(values):7.1f} ms")
    print(f"claim -> training_start: p50={pct(overhead, 0.5):.3f} s  p99={pct(overhead, 0.99):.3f} s  "
          f"max={max(overhead, default=float('nan')):.3f} s  mean={statistics.fmean(overhead or [0]):.3f} s")
    print(f"queued -> claimed (waiting for a free worker): p50={pct(waits, 0.5):.1f} s  "
          f"max={max(waits, default=0):.1f} s")
    print(f"double claims: {double}  (must be 0)")
    print(f"lost jobs: {lost}  (must be 0)")
    return {"double": double, "lost": lost}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--poll-s", type=float, default=0.5, help="each client's pause between polls")
    parser.add_argument("--timeout-s", type=float, default=1800)
    parser.add_argument("--postgres-url", default=os.environ.get("TUNERY_TEST_POSTGRES_URL", ""),
                        help="an admin URL (default $TUNERY_TEST_POSTGRES_URL; see .ci/postgres)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs) and the database")
    args = parser.parse_args()
    if not args.postgres_url:
        raise SystemExit('no PostgreSQL: run `eval "$(.ci/postgres)"` first, or pass --postgres-url')
    root = Path(tempfile.mkdtemp(prefix="tunery-fleet-"))
    database_url = fresh_database(args.postgres_url)
    fleet = Fleet(root, database_url, args.workers)
    try:
        print(f"fleet: API {fleet.base_url}, {args.workers} workers, S3 {fleet.s3}, logs in {root}")
        keys, files = setup_users(fleet, args.users)
        t0 = time.monotonic()
        created_at = datetime.now().astimezone()
        jobs, owner = create_jobs(fleet, args.jobs, keys, files)
        print(f"created {len(jobs)} jobs in {time.monotonic() - t0:.1f} s; polling with {args.clients} clients "
              f"every {args.poll_s} s")
        latencies, elapsed = asyncio.run(load(fleet, jobs, owner, args.clients, args.poll_s, args.timeout_s))
        print(f"all jobs ended {elapsed:.1f} s after the last create")
        result = report(fleet, jobs, latencies, created_at)
        metrics = httpx.get(f"{fleet.base_url}/metrics").text
        print("metrics: " + " ".join(line for line in metrics.splitlines()
                                     if line.startswith(("tunery_jobs{status=\"completed\"", "tunery_workers "))))
    finally:
        fleet.stop()
        if not args.keep:
            drop_database(args.postgres_url, database_url)
            shutil.rmtree(root, ignore_errors=True)
    return 0 if result["double"] == 0 and result["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
