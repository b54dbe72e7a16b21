"""The jobs API without a worker: validation that names every problem, defaults, cancel of a
queued job, limits, deletion rules, and secrets that never come back."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer
from tests.sample_data import conversation_file, preference_file

MODEL = "tunery/tiny-llama"
SECRET = "wk-very-secret-0123456789"


@pytest.fixture(scope="module")
def http(live_server: LiveServer) -> httpx.Client:
    return httpx.Client(base_url=live_server.base_url, headers={"Authorization": f"Bearer {live_server.api_key}"},
                        timeout=60)


@pytest.fixture(scope="module")
def train_id(together_client, tmp_path_factory: pytest.TempPathFactory) -> str:  # type: ignore[no-untyped-def]
    return str(together_client.files.upload(conversation_file(tmp_path_factory.mktemp("d") / "t.jsonl")).id)


@pytest.fixture(scope="module")
def pref_id(together_client, tmp_path_factory: pytest.TempPathFactory) -> str:  # type: ignore[no-untyped-def]
    return str(together_client.files.upload(preference_file(tmp_path_factory.mktemp("p") / "p.jsonl")).id)


def create(http: httpx.Client, **body: Any) -> httpx.Response:
    return http.post("/v1/fine-tunes", json={"model": MODEL, **body})


# (request fields, the param the error names, what its message says)
BAD_FIELDS = [
    ({"learning_rate": 5}, "learning_rate", "learning_rate must be in ["),
    ({"n_epochs": 0}, "n_epochs", "n_epochs must be between 1 and"),
    ({"n_checkpoints": 1000}, "n_checkpoints", "n_checkpoints must be between 1 and"),
    ({"batch_size": 100000}, "batch_size", "Requested batch size of 100000 is higher than the maximum"),
    ({"warmup_ratio": 2}, "warmup_ratio", "Warmup ratio should be between 0 and 1 (got 2"),
    ({"max_grad_norm": -1}, "max_grad_norm", "Max gradient norm should be non-negative (got -1"),
    ({"weight_decay": -1}, "weight_decay", "Weight decay should be non-negative (got -1"),
    ({"max_seq_length": 10}, "max_seq_length", "Maximum sequence length must be greater than"),
    ({"max_seq_length": 10**7}, "max_seq_length", "Maximum sequence length for SFT training must be less than"),
    ({"suffix": "x" * 41}, "suffix", "suffix must be 1-40 characters"),
    ({"lr_scheduler": {"lr_scheduler_type": "cosine", "lr_scheduler_args": {"min_lr_ratio": -1}}},
     "lr_scheduler.lr_scheduler_args.min_lr_ratio", "Min learning rate ratio should be between 0 and 1 (got -1"),
    ({"lr_scheduler": {"lr_scheduler_type": "cosine", "lr_scheduler_args": {"num_cycles": 0}}},
     "lr_scheduler.lr_scheduler_args.num_cycles", "Number of cycles should be greater than 0 (got 0"),
    ({"training_type": {"type": "Lora", "lora_r": 100000}}, "lora_r", "lora_r must be between 1 and"),
    ({"training_type": {"type": "Lora", "lora_dropout": 1.5}}, "lora_dropout", "LoRA dropout must be in [0, 1)"),
    ({"training_type": {"type": "Lora", "lora_trainable_modules": "q_proj,bogus"}}, "lora_trainable_modules",
     "lora_trainable_modules has unknown modules ['bogus']"),
    ({"training_method": {"method": "sft", "dpo_beta": 0.5}}, "training_method.dpo_beta",
     "dpo_beta is only supported for DPO training"),
    ({"training_method": {"method": "ppo"}}, "training_method",
     'training_method must be one of sft, dpo, grpo; got "ppo"'),
    ({"n_evals": 3}, "n_evals", "n_evals=3 needs a validation_file"),
    ({"early_stopping_enabled": True}, "validation_file", "Early stopping requires a validation file"),
    ({"validation_file": "file-nope"}, "validation_file", 'validation_file "file-nope" does not exist'),
]


@pytest.mark.parametrize(("fields", "param", "says"), BAD_FIELDS,
                         ids=[f"{p}-{i}" for i, (_, p, _) in enumerate(BAD_FIELDS)])
def test_each_bad_field_is_refused_by_name(http: httpx.Client, train_id: str, fields: dict, param: str,
                                           says: str) -> None:
    r = create(http, training_file=train_id, **fields)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error"
    assert err["param"] == param
    assert says in err["message"]


def test_every_problem_is_reported_at_once(http: httpx.Client, train_id: str) -> None:
    r = create(http, training_file=train_id, learning_rate=5, n_epochs=0, warmup_ratio=3, suffix="!bad")
    msg = r.json()["error"]["message"]
    assert r.status_code == 400
    for word in ("learning_rate", "n_epochs", "Warmup ratio", "suffix"):
        assert word in msg


def test_inputs_must_exist_be_valid_and_match_the_method(http: httpx.Client, train_id: str, pref_id: str,
                                                          live_server: LiveServer) -> None:
    r = create(http, training_file="file-missing")
    assert r.status_code == 400 and r.json()["error"]["param"] == "training_file"
    r = http.post("/v1/fine-tunes", json={"training_file": train_id, "model": "org/not-here"})
    assert r.status_code == 400 and "not-here" in r.json()["error"]["message"]
    r = http.post("/v1/fine-tunes", json={"training_file": "file-nope", "model": "org/not-here"})
    assert "not-here" in r.json()["error"]["message"] and "file-nope" in r.json()["error"]["message"]
    r = http.post("/v1/fine-tunes", json={"training_file": train_id, "model": MODEL, "from_checkpoint": "ft-x"})
    assert r.status_code == 400 and "either a model or a checkpoint" in r.json()["error"]["message"]
    r = create(http, training_file=pref_id)
    assert r.status_code == 400 and "preference" in r.json()["error"]["message"]
    r = create(http, training_file=train_id, training_method={"method": "dpo"})
    assert r.status_code == 400 and "DPO needs a preference dataset" in r.json()["error"]["message"]
    bob = httpx.Client(base_url=live_server.base_url,
                       headers={"Authorization": f"Bearer {live_server.create_key('bob-jobs')}"})
    r = bob.post("/v1/fine-tunes", json={"model": MODEL, "training_file": train_id})
    assert r.status_code == 400 and "does not exist" in r.json()["error"]["message"]


def test_defaults_resolved_like_together(http: httpx.Client, train_id: str) -> None:
    # The sync SDK's default payload (contract §5.3 A): no training_type → LoRA, r from limits, alpha 2r.
    r = create(http, training_file=train_id, validation_file="", packing=True, n_epochs=1, learning_rate=1e-5,
               batch_size="max", early_stopping_enabled=False,
               training_method={"method": "sft", "train_on_inputs": "auto"})
    assert r.status_code == 200, r.text
    job = r.json()
    limits = http.get("/v1/fine-tunes/models/limits", params={"model_name": MODEL}).json()
    rank = limits["lora_training"]["default_rank"]
    assert job["training_type"] == {"type": "Lora", "lora_r": rank, "lora_alpha": 2 * rank, "lora_dropout": 0.0,
                                    "lora_trainable_modules": "all-linear"}
    assert job["random_seed"] == 42 and job["status"] == "queued" and job["total_price"] == 0
    assert job["created_at"].endswith("Z") and job["queue_depth"] >= 0
    assert [e["type"] for e in job["events"]] == ["job_pending", "job_pending"]
    # Limits also resolve a job id and an output model name to the base model.
    assert http.get("/v1/fine-tunes/models/limits", params={"model_name": job["id"]}).json()["model_name"] == MODEL
    by_name = http.get("/v1/fine-tunes/models/limits", params={"model_name": job["model_output_name"]}).json()
    assert by_name["model_name"] == MODEL


def test_cancel_queued_job_at_once_and_delete_rules(http: httpx.Client, train_id: str) -> None:
    job = create(http, training_file=train_id).json()
    assert http.delete(f"/v1/fine-tunes/{job['id']}").status_code == 409
    r = http.post(f"/v1/fine-tunes/{job['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert http.post(f"/v1/fine-tunes/{job['id']}/cancel").status_code == 400
    assert http.delete(f"/v1/fine-tunes/{job['id']}").json()["deleted"] is True
    assert http.get(f"/v1/fine-tunes/{job['id']}").status_code == 404


def test_secrets_never_come_back(http: httpx.Client, train_id: str, live_server: LiveServer) -> None:
    r = create(http, training_file=train_id, wandb_key=SECRET, hf_api_token=SECRET + "hf", wandb_project_name="p")
    assert r.status_code == 200
    job_id = r.json()["id"]
    bodies = [r.text, http.get(f"/v1/fine-tunes/{job_id}").text, http.get("/v1/fine-tunes").text,
              http.get(f"/v1/fine-tunes/{job_id}/events").text]
    cancel = http.post(f"/v1/fine-tunes/{job_id}/cancel")
    assert cancel.status_code == 200, cancel.text
    assert not any(SECRET in b for b in bodies)
    assert SECRET not in live_server.log()
    # Cleared from the database once the job has ended.
    from tunery.store.db import Database
    from tunery.store.models import Job

    db = Database(live_server.database_url)
    with db.session() as s:
        job = s.get(Job, job_id)
        assert job is not None and job.secrets is None
    db.dispose()


def test_estimate_price_counts_real_tokens(http: httpx.Client, train_id: str) -> None:
    r = http.post("/v1/fine-tunes/estimate-price", json={"training_file": train_id, "model": MODEL, "n_epochs": 3,
                                                         "n_evals": 0, "training_type": None})
    body = r.json()
    assert r.status_code == 200 and body["estimation_available"] and body["allowed_to_proceed"]
    one = http.post("/v1/fine-tunes/estimate-price", json={"training_file": train_id, "model": MODEL,
                                                           "n_epochs": 1}).json()
    assert body["estimated_train_token_count"] == 3 * one["estimated_train_token_count"] > 0
    assert body["estimated_total_price"] == 0


def test_models_endpoints(http: httpx.Client) -> None:
    assert MODEL in http.get("/v1/fine-tunes/models/supported").json()["models"]
    ids = [m["id"] for m in http.get("/v1/models").json()["data"]]
    assert MODEL in ids


def test_preview_shows_which_tokens_are_trained(together_client, train_id: str) -> None:  # type: ignore[no-untyped-def]
    masked = together_client.fine_tuning.preview(model=MODEL, training_file=train_id, top_k=2)
    assert masked.dataset_format == "conversation" and len(masked.rows) == 2
    row = masked.rows[0]
    assert row.num_tokens == len(row.input_ids) == len(row.tokens) == len(row.labels)
    # Only the assistant answer is trained by default: one span, at the end, smaller than the row.
    assert len(row.trained_spans) == 1 and 0 < row.num_trained_tokens < row.num_tokens
    start, end = row.trained_spans[0]
    assert all(label == -100 for label in row.labels[:start])
    assert row.labels[start:end] == row.input_ids[start:end]
    everything = together_client.fine_tuning.preview(model=MODEL, training_file=train_id, top_k=1,
                                                     train_on_inputs=True)
    assert everything.rows[0].num_trained_tokens == everything.rows[0].num_tokens


# OpenAI's dialect: (method/hyperparameters as sent, the OpenAI param the 400 names, what its message says).
# Together's resolver checks these fields; the error names them as OpenAI's request did.
def _supervised(**h: Any) -> dict:
    return {"method": {"type": "supervised", "supervised": {"hyperparameters": h}}}


OPENAI_BAD_FIELDS = [
    (_supervised(n_epochs=51), "method.supervised.hyperparameters.n_epochs", "n_epochs must be between 1 and 50"),
    ({"hyperparameters": {"n_epochs": 100}}, "hyperparameters.n_epochs", "n_epochs must be between 1 and 50; got 100"),
    (_supervised(batch_size=100000), "method.supervised.hyperparameters.batch_size", "Requested batch size of 100000"),
    ({"hyperparameters": {"learning_rate_multiplier": 5000}}, "hyperparameters.learning_rate_multiplier",
     "the learning rate is 0.001 × learning_rate_multiplier"),
    ({"method": {"type": "dpo", "dpo": {"hyperparameters": {"batch_size": 100000}}}},
     "method.dpo.hyperparameters.batch_size", "Requested batch size of 100000"),
    ({"method": {"type": "reinforcement", "reinforcement": {"grader": {"type": "no-such-grader"}}}},
     "method.reinforcement.grader", "grader: "),
]


@pytest.mark.parametrize(("fields", "param", "says"), OPENAI_BAD_FIELDS,
                         ids=[p for _, p, _ in OPENAI_BAD_FIELDS])
def test_openai_jobs_name_openais_params(http: httpx.Client, train_id: str, pref_id: str, fields: dict, param: str,
                                         says: str) -> None:
    training_file = pref_id if "dpo" in param else train_id
    r = http.post("/v1/fine_tuning/jobs", json={"model": MODEL, "training_file": training_file, **fields})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert (err["type"], err["param"]) == ("invalid_request_error", param)
    assert says in err["message"] and "training_method" not in err["message"]


def test_openai_jobs_refuse_infinite_numbers(http: httpx.Client, train_id: str) -> None:
    r = http.post("/v1/fine_tuning/jobs", content=b'{"model": "%s", "training_file": "%s", "hyperparameters": '
                  b'{"learning_rate_multiplier": Infinity}}' % (MODEL.encode(), train_id.encode()),
                  headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["param"].startswith("hyperparameters.learning_rate_multiplier")


def test_openai_files_name_the_purposes_they_accept(http: httpx.Client) -> None:
    r = http.post("/v1/files", files={"file": ("t.jsonl", b"{}\n")}, data={"purpose": "assistants"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "purpose" and 'purpose must be "fine-tune"' in err["message"]
    assert "calibration" not in err["message"] and "'assistants'" in err["message"]
    r = http.post("/v1/uploads", json={"bytes": 10, "filename": "t.jsonl", "mime_type": "text/jsonl",
                                       "purpose": "batch"})
    assert r.status_code == 400 and r.json()["error"]["message"] == err["message"].replace("'assistants'", "'batch'")
    # Together's own upload form keeps Together's purposes.
    r = http.post("/v1/files/upload", files={"file": ("t.jsonl", b"{}\n")}, data={"purpose": "assistants"})
    assert r.status_code == 400 and "calibration" in r.json()["error"]["message"]
