"""Upload throughput and server memory: a big conversational JSONL through the official SDK.

Run:  .venv/bin/python bench/upload.py            # 1 GiB
      .venv/bin/python bench/upload.py --size-mb 128 --check

It writes a synthetic conversational JSONL into a temporary directory (deleted afterwards), starts
a real `tunery serve` on a free loopback port with a fresh data dir, and uploads the file with
``Together(...).files.upload(path, check=False)``: checksum, ``POST /v1/files``, the ``PUT`` of the
bytes and ``preprocess`` (server-side validation). It prints the end-to-end MB/s, the split
between the client's checksum, the transfer and the validation, and the peak growth of the server
process's RSS over its idle baseline (sampled every 10 ms in a thread). With ``--check`` it also
times the SDK's client-side ``check_file`` (what ``check=True`` adds) on the same file. The
baseline, run last in the same process, is one sequential validation pass over the file in-process:
the end-to-end time is printed as a ratio of it (below 1 means the upload, transfer included,
beat validating the file on one core).

Targets: >= 100 MB/s end to end, < 100 MB RSS growth.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

MB = 1_000_000
MIB = 1024 * 1024
WORDS = [
    "the", "model", "learns", "from", "examples", "of", "conversations", "between", "a", "user", "and",
    "an", "assistant", "who", "answers", "questions", "about", "data", "science", "cooking", "travel",
    "history", "physics", "poetry", "gardening", "code", "review", "with", "short", "long", "answers",
]


def make_dataset(path: Path, size_bytes: int, seed: int = 0) -> int:
    """Write conversational samples (system/user/assistant, some with weights) until ``size_bytes``."""
    rng = random.Random(seed)
    pool = [" ".join(rng.choices(WORDS, k=rng.randint(20, 120))) for _ in range(512)]
    lines = 0
    written = 0
    with open(path, "w", encoding="utf-8") as f:
        buf: list[str] = []
        while written < size_bytes:
            i = lines
            sample = {"messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": f"Question {i}: {pool[i % 512]}"},
                {"role": "assistant", "content": pool[(i * 7 + 3) % 512], "weight": i % 2},
            ]}
            line = json.dumps(sample) + "\n"
            buf.append(line)
            written += len(line)
            lines += 1
            if len(buf) >= 4096:
                f.write("".join(buf))
                buf.clear()
        f.write("".join(buf))
    return lines


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RssSampler(threading.Thread):
    """Samples RSS every ``interval`` seconds: of the process alone (``peak``) and of the process
    plus its children, the validation workers (``peak_tree``; a worker's baseline counts as growth)."""

    def __init__(self, pid: int, interval: float = 0.01):
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.peak = self.peak_tree = self.proc.memory_info().rss
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            try:
                rss = self.proc.memory_info().rss
                tree = rss + sum(c.memory_info().rss for c in self.proc.children(recursive=True))
            except psutil.Error:
                pass
            else:
                self.peak = max(self.peak, rss)
                self.peak_tree = max(self.peak_tree, tree)
            time.sleep(self.interval)

    def stop(self) -> tuple[int, int]:
        self._done.set()
        self.join()
        return self.peak, self.peak_tree


def start_server(data_dir: Path, port: int, log_path: Path) -> subprocess.Popen:
    tunery = str(Path(sys.executable).parent / "tunery")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TUNERY_", "TOGETHER_"))}
    env.update({"TUNERY_DATA_DIR": str(data_dir), "TUNERY_WORKERS": "0"})
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([tunery, "serve", "--port", str(port), "--data-dir", str(data_dir)],
                                env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"tunery serve exited:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("tunery serve did not become healthy")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=float, default=1024, help="dataset size in MiB (default 1024 = 1 GiB)")
    ap.add_argument("--check", action="store_true", help="also time the SDK's client-side check_file")
    ap.add_argument("--no-baseline", action="store_true",
                    help="skip the baseline: one sequential in-process validation pass over the file")
    ap.add_argument("--tmp", type=Path, default=None, help="directory for the temporary files")
    args = ap.parse_args()

    from together import Together
    from together.lib.utils.files import check_file

    tmp = Path(tempfile.mkdtemp(prefix="tunery-bench-upload-", dir=args.tmp))
    try:
        path = tmp / "train.jsonl"
        t = time.perf_counter()
        lines = make_dataset(path, int(args.size_mb * MIB))
        size = path.stat().st_size
        print(f"dataset: {size / MIB:.0f} MiB, {lines} conversational samples "
              f"(generated in {time.perf_counter() - t:.1f} s)")

        t = time.perf_counter()
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(4 * MIB):
                h.update(chunk)
        checksum_s = time.perf_counter() - t

        port = free_port()
        proc = start_server(tmp / "data", port, tmp / "server.log")
        try:
            base = f"http://127.0.0.1:{port}"
            key = (tmp / "data" / "api_key").read_text().strip()
            client = Together(base_url=base, api_key=key, max_retries=0, timeout=600)
            client.files.list()  # warm the server (imports, first DB connection) before the baseline
            time.sleep(0.5)
            baseline = psutil.Process(proc.pid).memory_info().rss
            sampler = RssSampler(proc.pid)
            sampler.start()
            sent_at: list[float] = []

            def progress(p: object) -> None:
                if getattr(p, "uploaded_bytes", 0) >= size and not sent_at:
                    sent_at.append(time.perf_counter())

            t0 = time.perf_counter()
            result = client.files.upload(path, check=False, progress_callback=progress)
            total_s = time.perf_counter() - t0
            peak, peak_tree = sampler.stop()
            assert result.processing_status == "COMPLETED", result
            assert result.bytes == size
            transfer_end = sent_at[0] if sent_at else t0 + total_s
            print(f"upload (check=False): {total_s:.2f} s end to end = {size / MB / total_s:.0f} MB/s "
                  f"({size / MIB / total_s:.0f} MiB/s)")
            print(f"  client sha256 ~{checksum_s:.2f} s | checksum + POST + PUT {transfer_end - t0:.2f} s "
                  f"| preprocess (validation) {t0 + total_s - transfer_end:.2f} s")
            print(f"server RSS: baseline {baseline / MIB:.0f} MiB, peak {peak / MIB:.0f} MiB, "
                  f"growth {(peak - baseline) / MIB:.1f} MiB; with its validation worker processes: "
                  f"growth {(peak_tree - baseline) / MIB:.1f} MiB")
        finally:
            proc.terminate()
            proc.wait(30)

        if not args.no_baseline:
            from tunery.api.validation import validate_path

            t = time.perf_counter()
            assert validate_path(path, "jsonl", "fine-tune").valid
            base_s = time.perf_counter() - t
            print(f"baseline, one sequential validation pass in-process: {base_s:.2f} s = "
                  f"{size / MB / base_s:.0f} MB/s; the whole upload took {total_s / base_s:.2f}x that")

        if args.check:
            t = time.perf_counter()
            report = check_file(path, purpose="fine-tune")
            check_s = time.perf_counter() - t
            print(f"SDK check_file (added by check=True): {check_s:.2f} s = {size / MB / check_s:.0f} MB/s; "
                  f"passed={report['is_check_passed']}; check=True end to end would be "
                  f"~{size / MB / (check_s + total_s):.0f} MB/s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
