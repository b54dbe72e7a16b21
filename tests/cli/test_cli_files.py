"""`tunery files …` against a live server, and `files check` offline."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.cli.conftest import assert_one_line_error, tunery
from tests.conftest import LiveServer
from tests.sample_data import conversation_file

pytestmark = pytest.mark.slow


def invalid_file(path: Path) -> Path:
    good = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}'
    path.write_text(f"{good}\n{good}\n{{\"messages\": [{{\"role\": \"user\", \"content\": \"no answer\"}}]}}\n")
    return path


def test_check_uses_the_servers_validator_offline(tmp_path: Path) -> None:
    good = tunery(None, "files", "check", conversation_file(tmp_path / "ok.jsonl", n=5))
    assert good.returncode == 0 and "valid conversation dataset with 5 samples" in good.stdout

    bad = tunery(None, "files", "check", invalid_file(tmp_path / "bad.jsonl"))
    assert bad.returncode == 1
    assert "line 3: messages must contain at least one assistant message" in bad.stderr

    report = json.loads(tunery(None, "files", "check", tmp_path / "bad.jsonl", "--json").stdout)
    assert report["valid"] is False and report["line_number"] == 3

    assert_one_line_error(tunery(None, "files", "check", tmp_path / "missing.jsonl"), "file not found")
    assert_one_line_error(tunery(None, "files", "check", tmp_path / "ok.jsonl", "--purpose", "nonsense"))


def test_upload_list_retrieve_content_delete(cli_server: LiveServer, tmp_path: Path) -> None:
    path = conversation_file(tmp_path / "train.jsonl", n=12)
    up = tunery(cli_server, "files", "upload", path)
    assert up.returncode == 0, up.stderr
    file_id = re.search(r"(file-[0-9a-f-]+)", up.stdout).group(1)  # type: ignore[union-attr]
    assert "Valid conversation dataset, 12 samples" in up.stdout

    again = json.loads(tunery(cli_server, "files", "upload", path, "--json").stdout)
    assert again["id"] == file_id  # same name and bytes: the server already has it

    listed = json.loads(tunery(cli_server, "files", "list", "--json").stdout)
    assert file_id in [f["id"] for f in listed]
    assert file_id in tunery(cli_server, "files", "list").stdout

    one = json.loads(tunery(cli_server, "files", "retrieve", file_id, "--json").stdout)
    assert one["processing_status"] == "COMPLETED" and one["bytes"] == path.stat().st_size
    assert "Samples: 12" in tunery(cli_server, "files", "retrieve", file_id).stdout

    assert tunery(cli_server, "files", "content", file_id).stdout == path.read_text()
    saved = tmp_path / "copy.jsonl"
    assert tunery(cli_server, "files", "content", file_id, "-o", saved).returncode == 0
    assert saved.read_bytes() == path.read_bytes()

    assert json.loads(tunery(cli_server, "files", "delete", file_id, "--json").stdout)["deleted"] is True
    assert_one_line_error(tunery(cli_server, "files", "retrieve", file_id), file_id)


def test_upload_errors_are_one_line(cli_server: LiveServer, tmp_path: Path) -> None:
    bad = tunery(cli_server, "files", "upload", invalid_file(tmp_path / "bad.jsonl"))
    assert_one_line_error(bad, "bad.jsonl is not a valid dataset", "line 3:")
    assert_one_line_error(tunery(cli_server, "files", "upload", tmp_path / "missing.jsonl"), "file not found")
    (tmp_path / "data.txt").write_text("x\n")
    assert_one_line_error(tunery(cli_server, "files", "upload", tmp_path / "data.txt"), "unknown extension")
    assert_one_line_error(tunery(cli_server, "files", "list", "--api-key", "wrong"), "API key")
    unreachable = tunery(cli_server, "files", "list", TUNERY_BASE_URL="http://127.0.0.1:9")
    assert_one_line_error(unreachable, "cannot reach the tunery server at http://127.0.0.1:9")


def fixture_model(root: Path, name: str) -> Path:
    """A model directory whose tokenizer carries official template ``name`` (no weights are needed
    to render data)."""
    import shutil

    from transformers import AutoTokenizer

    from tests.training.chat_fixtures import fixture_tokenizer
    from tunery.models.builtin import ensure_builtin

    tiny = ensure_builtin("tunery/tiny-llama", root / "builtin")
    fixture_tokenizer(AutoTokenizer.from_pretrained(tiny), name).save_pretrained(root / name)
    shutil.copy(tiny / "config.json", root / name / "config.json")
    return root / name


def test_check_with_a_model_renders_with_its_template(tmp_path: Path) -> None:
    system = {"role": "system", "content": "Be brief."}
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [{"messages": turns}, {"messages": [system, *turns]}]))

    qwen = tunery(None, "files", "check", path, "--model", fixture_model(tmp_path, "qwen3-0.6b"), "--top-k", "1")
    assert qwen.returncode == 0, qwen.stderr
    assert "renders every sample" in qwen.stdout and "Trained text is between [[ and ]]" in qwen.stdout
    assert "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n[[<think>\n\n</think>\n\nHello!<|im_end|>\n]]" \
        in qwen.stdout

    gemma = tunery(None, "files", "check", path, "--model", fixture_model(tmp_path, "gemma-2-2b-it"))
    assert gemma.returncode == 1
    assert "line 2 of the training file: the chat template refuses this conversation: System role not supported" \
        in gemma.stderr

    # A built-in model name resolves as the server would.
    builtin = tunery(None, "files", "check", path, "--model", "tunery/tiny-llama", "--json",
                     TUNERY_DATA_DIR=str(tmp_path / "d"))
    report = json.loads(builtin.stdout)
    assert report["valid"] is True and report["model_check"]["problem"] is None
    assert report["model_check"]["tokens"] > 0 and len(report["model_check"]["rows"]) == 2
