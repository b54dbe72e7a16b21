"""The API's own cost per request, and its latency under the SDK's polling load, with workers idle.

Run:  .venv/bin/python bench/api_load.py                       # 1 API process, 50 clients, 200 req/s
      .venv/bin/python bench/api_load.py --api-workers 2       # `tunery serve --api-workers 2`
      .venv/bin/python bench/api_load.py --baseline-src /tmp/old/src   # the same run against another checkout

One API node (`tunery serve --api-workers N`, SQLite under its data dir) and one idle `tunery
worker` (it polls the queue, as workers with nothing to do do) on this machine. The database holds
4 users with 200 jobs: most completed with 30 events each, some queued (their retrieve counts the
queue). Once the node's processes are idle (the inference engine loads eagerly, for about a minute
here), per route (`GET /v1/fine-tunes/{id}` and `.../events`):

1. cost, no load: 400 sequential requests; the API's own latency histogram at /metrics
   (`tunery_http_request_duration_seconds` sum/count) and the API processes' CPU time (from /proc)
   per request. Target: at most 2 ms.
2. load: 50 clients, each polling one random job's retrieve and events every 0.5 s (200 requests/s,
   the SDK's pattern, as in bench/fleet.py), for --seconds; client-side p50/p99/max, the rate
   reached, and API CPU per request under that load. Target: p99 of retrieve under 50 ms.

The clients are a lean keep-alive HTTP/1.1 loop on asyncio (one process), so they take as little
of the machine's CPU as possible from the API they measure. With --baseline-src the same run is
repeated against another checkout's ``src`` (e.g. the commit before), side by side, for the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# The routes measured, as their templates read (the histograms' route label).
ROUTES = {"retrieve": "/v1/fine-tunes/{job_id}", "events": "/v1/fine-tunes/{job_id}/events"}
SEED_JOBS = """
import random, sys
from datetime import timedelta
from tunery.queue.states import transition
from tunery.settings import Settings
from tunery.store import jobs as job_store
from tunery.store.db import Database
from tunery.store.models import Job, utcnow
from tunery.store.users import create_key, get_or_create_user
try:
    from tunery.store.status import JobStatus
except ImportError:  # checkouts from before the status enum moved beside the tables
    from tunery.queue.states import JobStatus
try:  # the typed job description, where the checkout has it
    from tunery.jobspec import SFT, JobSpec, LoraTraining, LrScheduler
    DESCRIPTION = {"spec": JobSpec(
        model="tunery/tiny-llama", training_file="file-x", training_type=LoraTraining(lora_r=8, lora_alpha=16),
        training_method=SFT(), n_epochs=1, n_checkpoints=1, n_evals=0, batch_size=8, gradient_accumulation_steps=1,
        learning_rate=1e-3, lr_scheduler=LrScheduler(), warmup_ratio=0.0, max_grad_norm=1.0, weight_decay=0.0,
        max_seq_length=128, packing=True, random_seed=42)}
except ImportError:
    DESCRIPTION = {"model": "tunery/tiny-llama", "training_file": "file-x", "params": {
        "training_type": {"type": "Lora", "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0,
                          "lora_trainable_modules": "all-linear"},
        "training_method": {"method": "sft", "train_on_inputs": "auto"}, "batch_size": 8, "n_epochs": 1,
        "n_checkpoints": 1, "n_evals": 0, "learning_rate": 1e-3, "warmup_ratio": 0.0, "max_grad_norm": 1.0,
        "lr_scheduler": {"lr_scheduler_type": "cosine", "lr_scheduler_args": {"min_lr_ratio": 0.0}},
        "weight_decay": 0.0, "gradient_accumulation_steps": 1, "max_seq_length": 128, "packing": True,
        "random_seed": 42, "early_stopping_enabled": False, "early_stopping_patience": 2,
        "early_stopping_min_delta": 0.0, "early_stopping_warmup_evals": 1}}
db = Database(Settings(data_dir=sys.argv[1]).resolved_database_url)
db.migrate()
rng = random.Random(0)
for u in range(int(sys.argv[2])):
    with db.session() as s:
        key = create_key(s, f"user{u}")
        user_id = get_or_create_user(s, f"user{u}").id
    print("KEY", key)
    for j in range(int(sys.argv[3])):
        job_id = job_store.new_job_id()
        with db.session() as s:
            job_store.create_job(s, Job(id=job_id, user_id=user_id, model_output_name=f"user{u}/m-{j}",
                                        created_at=utcnow() - timedelta(minutes=rng.randint(1, 600)), **DESCRIPTION))
            transition(s, job_id, JobStatus.QUEUED, event_type="job_pending", message="Job queued")
            if j % 5:  # four in five ran to the end; the rest wait in the queue
                transition(s, job_id, JobStatus.RUNNING, event_type="job_start", message="Job started on worker w")
                for step in range(1, 28):
                    job_store.add_event(s, job_id, "training_progress", f"step {step}", fields={"step": step})
                for to in (JobStatus.COMPRESSING, JobStatus.UPLOADING, JobStatus.COMPLETED):
                    transition(s, job_id, to, event_type="model_" + to.value, message=to.value)
        print("JOB", u, job_id)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def load_average() -> str:
    return Path("/proc/loadavg").read_text().split(" ", 3)[:3].__str__()


# Children of the API node that are not serving requests: its bounded task children, the
# inference engine it supervises.
NOT_API = ("tunery.api.bounded", "inference")


def process_tree_cpu_s(root: int, only_api: bool = True) -> float:
    """User+system CPU seconds of ``root`` and its descendants that serve requests (with
    --api-workers N, the N processes uvicorn starts), from /proc (clock ticks); with ``only_api``
    False, of all its descendants."""
    ticks = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    stats: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if only_api and any(part in cmdline for part in NOT_API):
            continue
        pid, ppid = int(entry.name), int(fields[1])
        children.setdefault(ppid, []).append(pid)
        stats[pid] = (int(fields[11]) + int(fields[12])) / ticks
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += stats.get(pid, 0.0)
        todo += children.get(pid, [])
    return total


@dataclass
class Node:
    """`tunery serve --no-worker --api-workers N` plus one idle `tunery worker`, on a fresh data dir."""

    src: Path
    api_workers: int
    root: Path

    def __post_init__(self) -> None:
        self.port = free_port()
        self.data = self.root / "data"
        env = {k: v for k, v in os.environ.items() if not k.startswith("TUNERY_")}
        self.env = {**env, "PYTHONPATH": str(self.src), "TUNERY_DATA_DIR": str(self.data), "HF_HUB_OFFLINE": "1",
                    "TOKENIZERS_PARALLELISM": "false"}
        seeded = subprocess.run([sys.executable, "-c", SEED_JOBS, str(self.data), "4", "50"], env=self.env,
                                capture_output=True, text=True, check=True).stdout.splitlines()
        self.keys = [line.split()[1] for line in seeded if line.startswith("KEY")]
        self.jobs = [(self.keys[int(line.split()[1])], line.split()[2])
                     for line in seeded if line.startswith("JOB")]
        cmd = [sys.executable, "-m", "tunery.cli.main", "serve", "--no-worker", "--port", str(self.port)]
        if self.api_workers > 1:
            cmd += ["--api-workers", str(self.api_workers)]
        self.api = subprocess.Popen(cmd, env=self.env, stdout=open(self.root / "api.log", "wb"),  # noqa: SIM115
                                    stderr=subprocess.STDOUT)
        self.worker = subprocess.Popen([sys.executable, "-m", "tunery.cli.main", "worker"], env=self.env,
                                       stdout=open(self.root / "worker.log", "wb"),  # noqa: SIM115
                                       stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=1).status_code == 200:
                    self.wait_until_idle()
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise SystemExit(f"the API did not start:\n{(self.root / 'api.log').read_text()[-3000:]}")

    def wait_until_idle(self, timeout_s: float = 300) -> None:
        """Until the node's processes are idle: the inference engine it starts eagerly loads for a
        minute or so on this machine, and would otherwise compete with the API being measured."""
        def cpu_s() -> float:
            return process_tree_cpu_s(self.api.pid, only_api=False) + process_tree_cpu_s(self.worker.pid)

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            before = cpu_s()
            time.sleep(2)
            if cpu_s() - before < 0.1:
                return
        raise SystemExit(f"the node did not become idle in {timeout_s:.0f} s")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def histogram(self) -> dict[str, tuple[float, int]]:
        """(sum seconds, count) per route, summed over the API processes the scrapes reach."""
        text = httpx.get(f"{self.base_url}/metrics", timeout=30).text
        out: dict[str, tuple[float, int]] = {}
        for name, route in ROUTES.items():
            total = sum(float(v) for v in re.findall(
                rf'tunery_http_request_duration_seconds_sum{{method="GET",route="{re.escape(route)}"}} (\S+)', text))
            count = sum(int(v) for v in re.findall(
                rf'tunery_http_request_duration_seconds_count{{method="GET",route="{re.escape(route)}"}} (\S+)', text))
            out[name] = (total, count)
        return out

    def stop(self) -> None:
        for proc in (self.worker, self.api):
            proc.terminate()
        for proc in (self.worker, self.api):
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


class Connection:
    """One keep-alive HTTP/1.1 connection: GET, read the status and the body (Content-Length)."""

    def __init__(self, port: int):
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, path: str, key: str) -> int:
        """The answer's status; 0 when the server dropped the connection (the next call reconnects)."""
        try:
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
            assert self.reader is not None
            self.writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n\r\n"
                              .encode())
            head = await self.reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
            await self.reader.readexactly(length)
            return status
        except (ConnectionError, asyncio.IncompleteReadError):
            self.reader = self.writer = None
            return 0


async def poll(port: int, jobs: list[tuple[str, str]], until: float, poll_s: float, seed: int,
               latencies: dict[str, list[float]], failures: dict[int, int]) -> None:
    rng = random.Random(seed)
    conn = Connection(port)
    await asyncio.sleep(rng.random() * poll_s)
    next_at = time.monotonic()
    while time.monotonic() < until:
        key, job_id = rng.choice(jobs)
        for name, route in ROUTES.items():
            t0 = time.perf_counter()
            status = await conn.get(route.format(job_id=job_id), key)
            latencies[name].append(time.perf_counter() - t0)
            if status != 200:  # counted and reported: a node that fails under load is a result too
                failures[status] = failures.get(status, 0) + 1
        next_at += poll_s  # a fixed schedule: a slow answer does not lower the offered rate
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def histogram_mean(node: Node, total: float, count: int) -> str:
    """Each API process keeps its own /metrics histogram and a scrape reaches any one of them, so two
    scrapes differ meaningfully only with one process; the /proc CPU line counts them all."""
    if node.api_workers > 1 or count <= 0:
        return "   n/a (histograms are per process)"
    return f"{1000 * total / count:6.2f} ms (n={count})"


def measure(node: Node, clients: int, seconds: float, poll_s: float, label: str) -> None:
    print(f"--- {label}: {node.api_workers} API process(es), src {node.src}")
    # 1. cost with no load, after a warm-up (first requests fill caches and import lazily)
    for route in ROUTES.values():
        with httpx.Client(base_url=node.base_url) as http:
            for i in range(50):
                key, job_id = node.jobs[i % len(node.jobs)]
                http.get(route.format(job_id=job_id), headers={"Authorization": f"Bearer {key}"})
    before, cpu0 = node.histogram(), process_tree_cpu_s(node.api.pid)
    for route in ROUTES.values():
        with httpx.Client(base_url=node.base_url) as http:
            for i in range(400):
                key, job_id = node.jobs[i % len(node.jobs)]
                r = http.get(route.format(job_id=job_id), headers={"Authorization": f"Bearer {key}"})
                assert r.status_code == 200, r.text
    after, cpu1 = node.histogram(), process_tree_cpu_s(node.api.pid)
    for name in ROUTES:
        total, count = after[name][0] - before[name][0], after[name][1] - before[name][1]
        print(f"no load  {ROUTES[name]:30s} API histogram mean {histogram_mean(node, total, int(count))}")
    print(f"no load  API CPU per request (both routes, /proc): {1000 * (cpu1 - cpu0) / 800:6.2f} ms")
    # 2. the polling load
    latencies: dict[str, list[float]] = {name: [] for name in ROUTES}
    failures: dict[int, int] = {}
    before, cpu0, t0 = node.histogram(), process_tree_cpu_s(node.api.pid), time.monotonic()

    async def run() -> None:
        until = time.monotonic() + seconds
        await asyncio.gather(*(poll(node.port, node.jobs, until, poll_s, i, latencies, failures)
                               for i in range(clients)))

    asyncio.run(run())
    elapsed, cpu1, after = time.monotonic() - t0, process_tree_cpu_s(node.api.pid), node.histogram()
    n = sum(len(v) for v in latencies.values())
    print(f"load     {clients} clients, {n / elapsed:.0f} requests/s for {elapsed:.0f} s "
          f"(load average {load_average()})")
    for name, values in latencies.items():
        total, count = after[name][0] - before[name][0], after[name][1] - before[name][1]
        print(f"load     {ROUTES[name]:30s} n={len(values):6d} p50={1000 * pct(values, 0.5):7.1f} ms "
              f"p99={1000 * pct(values, 0.99):7.1f} ms max={1000 * max(values):7.1f} ms | "
              f"API histogram mean {histogram_mean(node, total, int(count))}")
    print(f"load     API CPU per request (/proc): {1000 * (cpu1 - cpu0) / max(n, 1):6.2f} ms")
    if failures:
        errors = [line for line in (node.root / "api.log").read_text(errors="replace").splitlines()
                  if "Error" in line or "error" in line]
        print(f"load     FAILED requests by status (0: connection dropped): {failures}; the API's last error line: "
              f"{errors[-1] if errors else '(none logged)'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--api-workers", type=int, default=1)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--poll-s", type=float, default=0.5)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--baseline-src", type=Path, help="another checkout's src, run side by side")
    args = parser.parse_args()
    print(f"{time.strftime('%Y-%m-%d %H:%M')} load average before: {load_average()}, {os.cpu_count()} CPUs")
    runs = [("this checkout", REPO / "src")] + ([("baseline", args.baseline_src)] if args.baseline_src else [])
    for label, src in runs:
        root = Path(tempfile.mkdtemp(prefix="tunery-api-load-"))
        node = Node(src.resolve(), args.api_workers, root)
        try:
            measure(node, args.clients, args.seconds, args.poll_s, label)
        except (httpx.HTTPError, OSError) as e:  # the node stopped answering: say so, run the next one
            log = (root / "api.log").read_text(errors="replace").splitlines()
            print(f"--- {label}: the API stopped answering ({e!r}); its log ends:", *log[-15:], sep="\n")
        finally:
            node.stop()
            shutil.rmtree(root, ignore_errors=True)
    print(f"load average after: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
