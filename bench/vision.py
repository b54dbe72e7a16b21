"""Does vision fine-tuning use the images? Held-out accuracy of tunery/tiny-vlm on a question only the
image answers, trained through the official `together` SDK on a live `tunery serve`, against the same
training with every image blanked (the control, which can do no better than chance).

Run:  .venv/bin/python bench/vision.py                          # the matrix below, 64 samples, 40 held out
      .venv/bin/python bench/vision.py --configs lora-vision --train 128 --held-out 100

The data (``tests/sample_images.py``): one question, "What colour is the shape?", about a 32x32
image of a square, disc or triangle of one of four colours at a random place and size; the answer
is the colour's name. Training samples cycle through the colours (balanced), so a model that
cannot see the image is right 1 time in 4 at best. Held-out images are drawn from another seed.

Each configuration trains twice, on the images and on the blanked images (every image the same
grey square, same answers), with the same hyperparameters, seeds and steps; both merged models are
downloaded with the SDK and asked every held-out question greedily through
AutoModelForImageTextToText + AutoProcessor. Configurations:

    lora-vision   LoRA (the SDK's default rank), train_vision=true: the test's configuration
    lora-text     LoRA, train_vision=false: the vision tower and projector stay as initialised
    full-vision   full fine-tuning, train_vision=true
    full-text     full fine-tuning, train_vision=false
"""

from __future__ import annotations

import argparse
import datetime
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.sample_images: the same data and evaluation as the proof test

from tests.sample_images import COLOURS, answer_accuracy, colour_samples, load_vlm  # noqa: E402
from tunery.storage.archives import unpack  # noqa: E402

MODEL = "tunery/tiny-vlm"
CONFIGS: dict[str, dict[str, Any]] = {
    "lora-vision": {"lora": True, "train_vision": True, "learning_rate": 3e-3},
    "lora-text": {"lora": True, "train_vision": False, "learning_rate": 3e-3},
    "full-vision": {"lora": False, "train_vision": True, "learning_rate": 1e-3},
    "full-text": {"lora": False, "train_vision": False, "learning_rate": 1e-3},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(data_dir: Path, workers: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "TUNERY_DATA_DIR": str(data_dir), "TUNERY_WORKERS": str(workers), "HF_HUB_OFFLINE": "1"}
    log = open(data_dir.parent / "server.log", "ab")  # noqa: SIM115 - the server writes to it while it runs
    proc = subprocess.Popen([str(Path(sys.executable).parent / "tunery"), "serve", "--port", str(port),
                             "--data-dir", str(data_dir)], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("tunery serve did not start; see " + str(data_dir.parent / "server.log"))


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--train", type=int, default=64)
    parser.add_argument("--held-out", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    import torch
    from together import Together

    torch.set_num_threads(1)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="tunery-vision-"))
    (work / "data").mkdir(parents=True, exist_ok=True)
    proc, url = start_server(work / "data", args.workers)
    try:
        client = Together(base_url=url, api_key=(work / "data" / "api_key").read_text().strip(), max_retries=0)
        files = {blank: client.files.upload(write_jsonl(work / f"train-{'blank' if blank else 'images'}.jsonl",
                                                        colour_samples(args.train, seed=0, blank=blank))).id
                 for blank in (False, True)}
        jobs = {}
        for name in args.configs.split(","):
            settings = CONFIGS[name]
            for blank, file_id in files.items():
                job = client.fine_tuning.create(
                    training_file=file_id, model=MODEL, n_epochs=args.epochs, batch_size=args.batch_size,
                    max_seq_length=128, suffix=f"{name}-{'blank' if blank else 'img'}", **settings)
                jobs[(name, blank)] = job.id
        held_out = colour_samples(args.held_out, seed=123)
        results = {}
        for (name, blank), job_id in jobs.items():
            while (job := client.fine_tuning.retrieve(job_id)).status not in ("completed", "error", "user_error",
                                                                              "cancelled"):
                time.sleep(1)
            if job.status != "completed":
                events = [e.message for e in client.fine_tuning.list_events(job_id).data]
                raise SystemExit(f"{job_id}: {job.status}: {events[-3:]}")
            archive = work / f"{job_id}.tar.zst"
            client.fine_tuning.content(ft_id=job_id, checkpoint="merged").write_to_file(archive)
            accuracy = answer_accuracy(*load_vlm(unpack(archive, work / job_id)), held_out)
            results[(name, blank)] = (accuracy, job.total_steps)
            print(f"{name} {'blanked' if blank else 'images'}: {results[(name, blank)]}", flush=True)
    finally:
        proc.terminate()
        proc.wait(60)
    load = os.getloadavg()
    print(f"\n{datetime.date.today()} · {args.train} training samples, {args.held_out} held-out images, "
          f"{len(COLOURS)} colours (chance {1 / len(COLOURS):.2f}), {args.epochs} epochs, batch {args.batch_size}, "
          f"max_seq_length 128 · load average at the end {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}\n")
    print("| configuration | steps | held-out accuracy, images | held-out accuracy, blanked images |")
    print("|---|---|---|---|")
    for name in args.configs.split(","):
        (image_acc, steps), (blank_acc, _) = results[(name, False)], results[(name, True)]
        print(f"| {name} ({CONFIGS[name]}) | {steps} | {image_acc:.3f} | {blank_acc:.3f} |")


if __name__ == "__main__":
    main()
