"""``hf_output_repo_name``: a finished job's model goes to a Hugging Face repository, through the
real ``huggingface_hub`` client talking to tests/fake_hub.py (the hub's upload API, on loopback)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import LiveServer, sdk_client, start_server
from tests.e2e.test_jobs_sdk import MODEL, extract, wait_for
from tests.fake_hub import FakeHub, running_hub
from tests.sample_data import conversation_file

pytestmark = pytest.mark.slow
TOKEN = "hf_secret_token_1234"
DONE = {"completed", "error", "user_error", "cancelled"}


@pytest.fixture(scope="module")
def hub() -> Iterator[FakeHub]:
    with running_hub(TOKEN) as h:
        yield h


@pytest.fixture(scope="module")
def server(hub: FakeHub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    s = start_server(tmp_path_factory.mktemp("hub"), TUNERY_WORKERS="1", HF_ENDPOINT=hub.url,
                     HF_HUB_OFFLINE="0")  # the tests' servers are offline by default
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server: LiveServer):  # type: ignore[no-untyped-def]
    return sdk_client(server)


@pytest.fixture(scope="module")
def train_id(client, tmp_path_factory: pytest.TempPathFactory) -> str:  # type: ignore[no-untyped-def]
    return str(client.files.upload(conversation_file(tmp_path_factory.mktemp("d") / "t.jsonl", n=16)).id)


def test_the_model_lands_in_the_repo(client, hub: FakeHub, train_id: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM

    job = client.fine_tuning.create(training_file=train_id, model=MODEL, lora=True, n_epochs=1, batch_size=8,
                                    max_seq_length=128, hf_output_repo_name="alice/tuned", hf_api_token=TOKEN)
    done = wait_for(client, job.id, DONE, timeout=400)
    events = client.fine_tuning.list_events(job.id).data
    assert done.status == "completed", [e.message for e in events]
    # Together's event types have none for the hub: the upload events say it in their message.
    shown = [(e.type, e.message.split(":")[0]) for e in events]
    pushing = ("model_uploading", "Uploading the model to Hugging Face repo alice/tuned")
    pushed = ("model_upload_complete", "Model uploaded to Hugging Face")
    assert shown.index(pushing) < shown.index(pushed) < [t for t, _ in shown].index("job_complete"), shown
    assert all(TOKEN not in (e.message or "") for e in events)
    assert hub.private["alice/tuned"]

    # The repository holds the merged model at its root — byte for byte what tunery serves — and the adapter.
    pushed = hub.write("alice/tuned", tmp_path / "repo")
    assert (pushed / "adapter" / "adapter_config.json").is_file()
    archive = tmp_path / "merged.tar.zst"
    client.fine_tuning.content(ft_id=job.id, checkpoint="merged").write_to_file(archive)
    served = extract(archive, tmp_path / "served")
    assert (pushed / "model.safetensors").read_bytes() == (served / "model.safetensors").read_bytes()
    model = AutoModelForCausalLM.from_pretrained(pushed)
    assert model.num_parameters() > 0


def test_a_refused_upload_keeps_the_model_and_says_why(client, hub: FakeHub, train_id: str) -> None:  # type: ignore[no-untyped-def]
    job = client.fine_tuning.create(training_file=train_id, model=MODEL, lora=True, n_epochs=1, batch_size=8,
                                    max_seq_length=128, hf_output_repo_name="alice/other",
                                    hf_api_token="hf_wrong_token_5678")
    done = wait_for(client, job.id, DONE, timeout=400)
    events = client.fine_tuning.list_events(job.id).data
    assert done.status == "completed", [e.message for e in events]
    [warning] = [e for e in events if e.type == "warning" and "Hugging Face" in (e.message or "")]
    assert warning.level in ("error", "Error") and "alice/other" in warning.message and "401" in warning.message
    assert all("hf_wrong_token_5678" not in (e.message or "") for e in events)
    assert "alice/other" not in hub.repos
    kinds = {c.checkpoint_type for c in client.fine_tuning.list_checkpoints(job.id).data}
    assert "Final Merged" in kinds
