"""`tunery fine-tuning create|preview|list|retrieve|events|checkpoints|metrics|cancel|delete|download|watch`.

`create` lives in ``create_job.py`` (it has a flag per API field); `watch` in ``watch.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from tunery.cli import create_job
from tunery.cli.client import ApiKey, BaseUrl, Client
from tunery.cli.output import Json, human_bytes, local_time, number, print_fields, print_json, print_table
from tunery.cli.trained_text import legend, print_row
from tunery.cli.transfer import download_model
from tunery.cli.watch import watch_job

app = typer.Typer(no_args_is_help=True, help="Create, follow and download fine-tuning jobs.")

JobId = Annotated[str, typer.Argument(help="Job id (ft-…).")]


app.command("create")(create_job.create)


@app.command("preview")
def preview(
    training_file: Annotated[str, typer.Argument(help="A validated training file (file-…).")],
    model: Annotated[str, typer.Option("--model", "-m", help="The base model whose chat template renders the data.")],
    top_k: Annotated[int, typer.Option("--top-k", help="How many rows from the start of the file.")] = 3,
    train_on_inputs: Annotated[bool | None, typer.Option(
        "--train-on-inputs/--no-train-on-inputs", help="Train every token (default: auto).")] = None,
    method: Annotated[str, typer.Option("--method", help="sft, or dpo for preference data.")] = "sft",
    json: Json = False, base_url: BaseUrl = None, api_key: ApiKey = None,
) -> None:
    """Show how the first rows of a training file are rendered and which text is trained, before
    paying for a job."""
    body: dict[str, Any] = {"model": model, "training_file": training_file, "top_k": top_k, "training_method": method}
    if train_on_inputs is not None:
        body["train_on_inputs"] = train_on_inputs
    result = Client.connect(base_url, api_key).post("/v1/fine-tunes/preview", json=body)
    if json:
        print_json(result)
        return
    typer.echo(f"{result['model']}: {result['dataset_format']} data, train_on_inputs={result['train_on_inputs']}, "
               f"max_seq_length {result['max_seq_length']}. {legend()}")
    for index, row in enumerate(result["rows"], start=1):
        what = f" {row['output']}" if row.get("output") else ""
        cut = ", cut to max_seq_length" if row.get("truncated") else ""
        print_row(f"\nRow {index}{what}: {row['num_tokens']} tokens, {row['num_trained_tokens']} trained{cut}",
                  row.get("segments") or [])


@app.command("list")
def list_(json: Json = False, base_url: BaseUrl = None, api_key: ApiKey = None) -> None:
    """List your fine-tuning jobs, newest first."""
    jobs = Client.connect(base_url, api_key).get("/v1/fine-tunes")["data"]
    if json:
        print_json(jobs)
        return
    print_table(
        ["ID", "Model", "Output model", "Status", "Steps", "Created"],
        ([j["id"], j.get("model"), j.get("model_output_name"), j.get("status"), _steps(j),
          local_time(j.get("created_at"))] for j in jobs),
    )


@app.command("retrieve")
def retrieve(job_id: JobId, json: Json = False, base_url: BaseUrl = None, api_key: ApiKey = None) -> None:
    """Show one job."""
    job = Client.connect(base_url, api_key).get(f"/v1/fine-tunes/{job_id}")
    if json:
        print_json(job)
        return
    print_fields({
        "ID": job["id"], "Status": job.get("status"), "Model": job.get("model"),
        "Output model": job.get("model_output_name"), "Training file": job.get("training_file"),
        "Validation file": job.get("validation_file"), "From checkpoint": job.get("from_checkpoint"),
        "Method": _method(job), "Training type": _training_type(job), "Epochs": job.get("n_epochs"),
        "Steps": _steps(job), "Batch size": job.get("batch_size"), "Learning rate": job.get("learning_rate"),
        "Tokens": job.get("token_count"), "Created": local_time(job.get("created_at")),
        "Started": local_time(job.get("started_at")), "Updated": local_time(job.get("updated_at")),
        "Error": job.get("error"),
    })


@app.command("events")
def events(job_id: JobId, json: Json = False, base_url: BaseUrl = None, api_key: ApiKey = None) -> None:
    """List a job's events, oldest first."""
    data = Client.connect(base_url, api_key).get(f"/v1/fine-tunes/{job_id}/events")["data"]
    if json:
        print_json(data)
        return
    print_table(["Time", "Type", "Level", "Message"],
                ([local_time(e.get("created_at")), e.get("type"), e.get("level"), e.get("message")] for e in data))


@app.command("checkpoints")
def checkpoints(job_id: JobId, json: Json = False, base_url: BaseUrl = None, api_key: ApiKey = None) -> None:
    """List a job's downloadable checkpoints."""
    data = Client.connect(base_url, api_key).get(f"/v1/fine-tunes/{job_id}/checkpoints")["data"]
    if json:
        print_json(data)
        return
    print_table(
        ["Download ID", "Type", "Step", "Size", "Created"],
        ([c.get("name") or job_id, c.get("checkpoint_type"), c.get("step"), human_bytes(c.get("size")),
          local_time(c.get("created_at"))] for c in data),
    )


@app.command("metrics")
def metrics(
    job_id: JobId,
    step_from: Annotated[int | None, typer.Option("--from-step", help="First global step.")] = None,
    step_to: Annotated[int | None, typer.Option("--to-step", help="Last global step.")] = None,
    resolution: Annotated[int | None, typer.Option(help="At most this many training rows.")] = None,
    json: Json = False, base_url: BaseUrl = None, api_key: ApiKey = None,
) -> None:
    """List a job's training metrics (loss, learning rate, eval loss, …) by step."""
    rows = Client.connect(base_url, api_key).get(
        f"/v1/fine-tunes/{job_id}/metrics", global_step_from=step_from, global_step_to=step_to, resolution=resolution,
    )["metrics"] or []
    if json:
        print_json(rows)
        return
    keys = ["train/loss", "eval/loss", "train/learning_rate", "train/grad_norm", "train/tokens_per_second",
            "train/epoch"]
    shown = [k for k in keys if any(k in r for r in rows)]
    print_table(["Step", *[k.split("/", 1)[1].replace("_", " ") for k in shown]],
                ([r.get("train/global_step"), *[number(r.get(k)) for k in shown]] for r in rows))


@app.command("cancel")
def cancel(job_id: JobId, json: Json = False, base_url: BaseUrl = None, api_key: ApiKey = None) -> None:
    """Cancel a job (a running one stops at its next step)."""
    job = Client.connect(base_url, api_key).post(f"/v1/fine-tunes/{job_id}/cancel")
    if json:
        print_json(job)
    else:
        typer.echo(f"{job_id}: {job.get('status')}")


@app.command("delete")
def delete(job_id: JobId, json: Json = False, base_url: BaseUrl = None, api_key: ApiKey = None) -> None:
    """Delete a finished job and its checkpoints."""
    result = Client.connect(base_url, api_key).delete(f"/v1/fine-tunes/{job_id}")
    if json:
        print_json(result)
    else:
        typer.echo(f"Deleted {job_id}")


@app.command("download")
def download(
    job_id: Annotated[str, typer.Argument(help="Job id, or ft-…:STEP for an intermediate checkpoint.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="File (or directory) to write.")] = None,
    checkpoint: Annotated[str | None, typer.Option(
        "--checkpoint", "-c", help="merged (LoRA default), adapter, or model_output_path (full fine-tunes).")] = None,
    step: Annotated[int | None, typer.Option("--step", "-s", help="An intermediate checkpoint's step.")] = None,
    json: Json = False, base_url: BaseUrl = None, api_key: ApiKey = None,
) -> None:
    """Download a job's model as a .tar.zst; an interrupted download resumes where it stopped."""
    result = download_model(Client.connect(base_url, api_key), job_id, checkpoint, step, output, show_progress=not json)
    if json:
        print_json({"path": str(result.path.resolve()), "size": result.size, "resumed_from": result.resumed_from})
        return
    if result.resumed_from:
        typer.echo(f"Resumed an interrupted download at {human_bytes(result.resumed_from)}")
    typer.echo(f"Saved {result.path} ({human_bytes(result.size)})")


@app.command("watch")
def watch(job_id: JobId, base_url: BaseUrl = None, api_key: ApiKey = None) -> None:
    """Follow a job live until it ends; exit 0 when it completed, 1 when it failed, 3 when cancelled.
    Ctrl-C stops watching and leaves the job running."""
    raise typer.Exit(watch_job(Client.connect(base_url, api_key), job_id))


def _steps(job: dict[str, Any]) -> str:
    total = job.get("total_steps")
    return f"{job.get('steps_completed') or 0}/{total}" if total else ""


def _method(job: dict[str, Any]) -> str:
    method = job.get("training_method") or {}
    return str(method.get("method", "")).upper()


def _training_type(job: dict[str, Any]) -> str:
    t = job.get("training_type") or {}
    if t.get("type") == "Lora":
        return f"LoRA (r={t.get('lora_r')}, alpha={t.get('lora_alpha')}, {t.get('lora_trainable_modules')})"
    return str(t.get("type", ""))

