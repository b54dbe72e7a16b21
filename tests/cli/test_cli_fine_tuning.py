"""`tunery fine-tuning …` against a live server with a worker: create --watch to completion, the
read commands (text and --json), download and its resume, errors, cancel, and Ctrl-C in watch."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.cli.conftest import assert_one_line_error, client_env, tunery
from tests.conftest import TUNERY, LiveServer
from tests.sample_data import conversation_file

pytestmark = pytest.mark.slow
MODEL = "tunery/tiny-llama"
JOB_ID = re.compile(r"ft-[0-9a-f-]{36}")


@pytest.fixture(scope="module")
def completed_job(cli_server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A small full fine-tune with an intermediate checkpoint, created and watched by the CLI."""
    data = conversation_file(tmp_path_factory.mktemp("ft") / "train.jsonl", n=24)
    result = tunery(cli_server, "fine-tuning", "create", "-t", data, "-m", MODEL, "--no-lora", "--n-epochs", "2",
                    "--n-checkpoints", "2", "--learning-rate", "1e-3", "--batch-size", "4", "--max-seq-length", "128",
                    "--suffix", "cli", "--watch", timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Training started" in result.stdout and "completed in" in result.stdout
    assert re.search(r"^Chat with it: tunery chat default/tiny-llama-cli-\w+$", result.stdout, re.MULTILINE)
    return JOB_ID.search(result.stdout).group(0)  # type: ignore[union-attr]


def read_json(server: LiveServer, *args: str) -> object:
    result = tunery(server, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_read_commands(cli_server: LiveServer, completed_job: str) -> None:
    job = read_json(cli_server, "fine-tuning", "retrieve", completed_job)
    assert isinstance(job, dict) and job["status"] == "completed" and job["training_type"] == {"type": "Full"}
    assert job["n_epochs"] == 2 and job["learning_rate"] == 1e-3 and job["model_output_name"].startswith("default/")
    assert completed_job in [j["id"] for j in read_json(cli_server, "fine-tuning", "list")]  # type: ignore[union-attr]
    events = read_json(cli_server, "fine-tuning", "events", completed_job)
    assert [e["type"] for e in events][-1] == "job_complete"  # type: ignore[union-attr]
    checkpoints = read_json(cli_server, "fine-tuning", "checkpoints", completed_job)
    assert {c["checkpoint_type"] for c in checkpoints} == {"Intermediate", "Final"}  # type: ignore[union-attr]
    metrics = read_json(cli_server, "fine-tuning", "metrics", completed_job)
    assert all("train/global_step" in r for r in metrics) and "train/loss" in metrics[0]  # type: ignore[index]

    for command in ("retrieve", "events", "checkpoints", "metrics"):
        result = tunery(cli_server, "fine-tuning", command, completed_job)
        assert result.returncode == 0 and result.stdout.strip(), (command, result.stderr)
    assert "Status:        completed" in tunery(cli_server, "fine-tuning", "retrieve", completed_job).stdout
    assert completed_job in tunery(cli_server, "fine-tuning", "list").stdout


def test_watch_of_a_completed_job_exits_0(cli_server: LiveServer, completed_job: str) -> None:
    result = tunery(cli_server, "fine-tuning", "watch", completed_job)
    assert result.returncode == 0 and f"{completed_job} completed" in result.stdout


def test_download_and_resume_after_an_interrupted_transfer(cli_server: LiveServer, completed_job: str,
                                                           tmp_path: Path) -> None:
    full = read_json(cli_server, "fine-tuning", "download", completed_job, "-o", tmp_path / "full.tar.zst")
    assert isinstance(full, dict) and full["resumed_from"] == 0
    whole = Path(full["path"]).read_bytes()
    assert len(whole) == full["size"] > 1000

    # What an interrupted download leaves behind: the first bytes in <output>.part.
    target = tmp_path / "resumed.tar.zst"
    Path(str(target) + ".part").write_bytes(whole[: len(whole) // 3])
    resumed = read_json(cli_server, "fine-tuning", "download", completed_job, "-o", target)
    # resumed_from is the offset the server answered a Range request from with 206.
    assert isinstance(resumed, dict) and resumed["resumed_from"] == len(whole) // 3
    assert target.read_bytes() == whole and not Path(str(target) + ".part").exists()

    checkpoints = read_json(cli_server, "fine-tuning", "checkpoints", completed_job)
    (step,) = [c["step"] for c in checkpoints if c["checkpoint_type"] == "Intermediate"]  # type: ignore[union-attr]
    text = tunery(cli_server, "fine-tuning", "download", f"{completed_job}:{step}", "-o", tmp_path)
    assert text.returncode == 0 and f"step-{step}" in text.stdout, text.stderr


def test_errors_are_one_line(cli_server: LiveServer, tmp_path: Path) -> None:
    unknown = "ft-00000000-0000-0000-0000-000000000000"
    for command in ("retrieve", "events", "checkpoints", "metrics", "cancel", "watch", "download"):
        assert_one_line_error(tunery(cli_server, "fine-tuning", command, unknown), "not found")
    bad_model = tunery(cli_server, "fine-tuning", "create", "-t", "file-nope", "-m", "no/such-model")
    assert_one_line_error(bad_model, "no/such-model")
    data = conversation_file(tmp_path / "t.jsonl", n=4)
    assert_one_line_error(tunery(cli_server, "fine-tuning", "create", "-t", data, "-m", MODEL, "--no-lora",
                                 "--lora-r", "4"), "--no-lora cannot be combined with --lora-r")
    assert_one_line_error(tunery(cli_server, "fine-tuning", "create", "-t", data, "-m", MODEL,
                                 "--learning-rate", "5"), "learning_rate")


def test_ctrl_c_leaves_the_job_running_and_a_cancelled_job_watch_fails(cli_server: LiveServer,
                                                                       tmp_path: Path) -> None:
    data = conversation_file(tmp_path / "long.jsonl", n=24)
    created = read_json(cli_server, "fine-tuning", "create", "-t", data, "-m", MODEL, "--n-epochs", "100",
                        "--batch-size", "1", "--learning-rate", "1e-3")
    assert isinstance(created, dict)
    job_id = created["id"]

    watch = subprocess.Popen([TUNERY, "fine-tuning", "watch", job_id], env=client_env(cli_server),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(3)
    watch.send_signal(signal.SIGINT)
    out, _ = watch.communicate(timeout=30)
    assert watch.returncode == 130, out
    assert f"Reattach with: tunery fine-tuning watch {job_id}" in out and "Traceback" not in out
    assert read_json(cli_server, "fine-tuning", "retrieve", job_id)["status"] in (  # type: ignore[index]
        "queued", "running")

    cancel = tunery(cli_server, "fine-tuning", "cancel", job_id)
    assert cancel.returncode == 0 and job_id in cancel.stdout
    watched = tunery(cli_server, "fine-tuning", "watch", job_id, timeout=120)
    assert watched.returncode == 3 and f"{job_id} was cancelled" in watched.stdout


def test_preview_marks_the_trained_text(cli_server: LiveServer, tmp_path: Path) -> None:
    path = conversation_file(tmp_path / "p.jsonl", n=3)
    up = json.loads(tunery(cli_server, "files", "upload", path, "--json").stdout)
    shown = tunery(cli_server, "fine-tuning", "preview", up["id"], "--model", "tunery/tiny-llama", "--top-k", "2")
    assert shown.returncode == 0, shown.stderr
    assert "Row 2:" in shown.stdout and "Row 3" not in shown.stdout
    # Only the answer and its end-of-turn marker are between the markers.
    assert re.search(r"<\|im_start\|>assistant\n\[\[The \w+ is \w+\.<\|im_end\|>\n\]\]", shown.stdout), shown.stdout
    everything = json.loads(tunery(cli_server, "fine-tuning", "preview", up["id"], "--model", "tunery/tiny-llama",
                                   "--top-k", "1", "--train-on-inputs", "--json").stdout)
    assert [s["trained"] for s in everything["rows"][0]["segments"]] == [True]

def test_chat_with_the_fine_tuned_model(cli_server: LiveServer, completed_job: str) -> None:
    name = str(read_json(cli_server, "fine-tuning", "retrieve", completed_job)["model_output_name"])  # type: ignore[index]
    question = [{"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": "What color is the sky0?"}]
    api = httpx.post(f"{cli_server.base_url}/v1/chat/completions", timeout=300,
                     headers={"Authorization": f"Bearer {cli_server.api_key}"},
                     json={"model": name, "messages": question, "temperature": 0, "max_tokens": 8})
    expected = api.json()["choices"][0]["message"]["content"]
    one = tunery(cli_server, "chat", name, "--system", "Answer briefly.", "-p", "What color is the sky0?",
                 "--temperature", "0", "--max-tokens", "8")
    assert one.returncode == 0, one.stderr
    assert one.stdout == expected + "\n"
    # Interactive, from a pipe: each line a turn, the conversation kept; an empty line ends it.
    two = subprocess.run([TUNERY, "chat", name, "--system", "Answer briefly.", "--temperature", "0", "--max-tokens",
                          "8"], input="What color is the sky0?\nAnd the sea1?\n\n", env=client_env(cli_server),
                         capture_output=True, text=True, timeout=120)
    assert two.returncode == 0, two.stderr
    assert two.stdout.startswith(expected + "\n") and len(two.stdout.splitlines()) >= 2
    assert_one_line_error(tunery(cli_server, "chat", "default/no-such-model", "-p", "Hi"), "no-such-model")
