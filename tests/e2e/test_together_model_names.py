"""Together's model names work unchanged: a job created with the seeds' example model,
``meta-llama/Meta-Llama-3.1-8B-Instruct-Reference``, trains on the Hugging Face model the shipped
table says it stands for (``meta-llama/Llama-3.1-8B-Instruct``) — the built-in tiny model's files
stand in for Llama's. Hub downloads off, it comes from the server's Hugging Face cache; on, from a
hub (``tests/fake_hub.py`` on 127.0.0.1, through the real ``huggingface_hub`` client): the create
request fetches only its config and tokenizer, the job the weights. A model the server cannot have is
a 400 at create that names it, for ``model`` and for ``from_hf_model``, never a job that waits."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer, sdk_client, start_server
from tests.e2e.test_jobs_sdk import wait_for
from tests.fake_hub import FakeHub, running_hub
from tests.models.test_models_registry import cache_model
from tests.sample_data import conversation_file
from tunery.models.builtin import ensure_builtin

pytestmark = pytest.mark.slow
REFERENCE = "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("names")
    tiny = ensure_builtin("tunery/tiny-llama", tmp / "built")
    cache_model(tmp / "hf", "meta-llama/Llama-3.1-8B-Instruct", tiny)
    s = start_server(tmp, TUNERY_WORKERS="1", TUNERY_HEARTBEAT_INTERVAL_S="0.5", HF_HUB_CACHE=str(tmp / "hf"))
    yield s
    s.stop()


def test_a_together_model_name_trains_the_model_it_stands_for(server: LiveServer, tmp_path: Path) -> None:
    client = sdk_client(server)
    f = client.files.upload(conversation_file(tmp_path / "train.jsonl", n=16), purpose="fine-tune")
    job = client.fine_tuning.create(training_file=f.id, model=REFERENCE, lora=True, n_epochs=1, batch_size=8,
                                    learning_rate=1e-3, max_seq_length=128)
    done = wait_for(client, job.id, {"completed", "error", "cancelled"})
    events = client.fine_tuning.list_events(job.id).data
    assert done.status == "completed", [e.message for e in events]
    assert done.model == REFERENCE
    assert done.model_output_name.startswith("default/Meta-Llama-3.1-8B-Instruct-Reference-")


def test_a_model_the_server_cannot_have_is_refused_at_create(server: LiveServer, tmp_path: Path) -> None:
    client = sdk_client(server)
    f = client.files.upload(conversation_file(tmp_path / "train.jsonl", n=8), purpose="fine-tune")
    http = httpx.Client(base_url=server.base_url + "/v1", headers={"Authorization": f"Bearer {server.api_key}"},
                        timeout=60)
    jobs = len(http.get("/fine-tunes").json()["data"])
    r = http.post("/fine-tunes", json={"training_file": f.id, "model": "meta-llama/Llama-3.3-70B-Instruct-Reference"})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == "model"
    assert "Together's name for the Hugging Face model meta-llama/Llama-3.3-70B-Instruct" in error["message"]
    assert "hub downloads are off" in error["message"]
    r = http.post("/fine-tunes", json={"training_file": f.id, "model": "tunery/tiny-llama",
                                       "from_hf_model": "acme/not-anywhere"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "from_hf_model", r.text
    assert 'model "acme/not-anywhere" is not built in' in r.json()["error"]["message"]
    assert len(http.get("/fine-tunes").json()["data"]) == jobs  # nothing was accepted
    # Hub downloads are off here, so Together's names are not offered.
    assert REFERENCE not in http.get("/fine-tunes/models/supported").json()["models"]


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeHub]:
    with running_hub("hub-token") as hub:
        hub.add("meta-llama/Llama-3.1-8B-Instruct",
                ensure_builtin("tunery/tiny-llama", tmp_path_factory.mktemp("hub") / "built"))
        yield hub


@pytest.fixture(scope="module")
def online(hub: FakeHub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("online")
    s = start_server(tmp, TUNERY_WORKERS="1", TUNERY_HEARTBEAT_INTERVAL_S="0.5", TUNERY_ALLOW_HUB_DOWNLOADS="true",
                     HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0", HF_HUB_CACHE=str(tmp / "hf"))
    yield s
    s.stop()


def test_with_the_hub_a_name_is_checked_at_create_and_its_weights_fetched_by_the_job(
        online: LiveServer, hub: FakeHub, tmp_path: Path) -> None:
    client = sdk_client(online)
    http = httpx.Client(base_url=online.base_url + "/v1", headers={"Authorization": f"Bearer {online.api_key}"},
                        timeout=60)
    assert REFERENCE in http.get("/fine-tunes/models/supported").json()["models"]
    f = client.files.upload(conversation_file(tmp_path / "train.jsonl", n=16), purpose="fine-tune")
    weights = "meta-llama/Llama-3.1-8B-Instruct/model.safetensors"
    r = http.post("/fine-tunes", json={"training_file": f.id, "model": REFERENCE, "batch_size": 8,
                                       "learning_rate": 1e-3, "max_seq_length": 128})
    at_create = list(hub.downloads)
    assert r.status_code == 200, r.text
    assert "meta-llama/Llama-3.1-8B-Instruct/config.json" in at_create and weights not in at_create
    done = wait_for(client, r.json()["id"], {"completed", "error", "cancelled"})
    events = client.fine_tuning.list_events(done.id).data
    assert done.status == "completed", [e.message for e in events]
    assert hub.downloads.count(weights) == 1
    types = [e.type for e in events]
    assert types.index("model_downloading") < types.index("model_download_complete") < types.index("training_start")

    missing = http.post("/fine-tunes", json={"training_file": f.id, "model": "acme/missing"})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "model"
    assert 'model "acme/missing" does not exist on Hugging Face' in missing.json()["error"]["message"]
    revision = http.post("/fine-tunes", json={"training_file": f.id, "model": "tunery/tiny-llama",
                                              "from_hf_model": "meta-llama/Llama-3.1-8B-Instruct",
                                              "hf_model_revision": "v9"})
    assert revision.status_code == 400 and revision.json()["error"]["param"] == "from_hf_model"
    assert 'has no revision "v9"' in revision.json()["error"]["message"]
