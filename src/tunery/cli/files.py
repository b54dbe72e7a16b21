"""`tunery files upload|check|list|retrieve|delete|content`: dataset files on a tunery server.

`check` runs the server's own validator locally (no server needed), so its messages and line
numbers are exactly those an upload would get.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from tunery.cli.client import ApiKey, BaseUrl, Client, CliError
from tunery.cli.output import Json, human_bytes, local_time, print_fields, print_json, print_table
from tunery.cli.transfer import check_local_file, file_type_of, upload_file

app = typer.Typer(no_args_is_help=True, help="Upload, validate and manage dataset files.")

Purpose = Annotated[str, typer.Option("--purpose", help="fine-tune, eval, calibration or batch-api.")]
FileId = Annotated[str, typer.Argument(help="File id (file-…).")]
PURPOSES = ("fine-tune", "eval", "calibration", "batch-api")


def checked_purpose(purpose: str) -> str:
    if purpose not in PURPOSES:
        raise CliError(f"--purpose must be one of {', '.join(PURPOSES)}; got {purpose!r}")
    return purpose


def describe_file(f: dict[str, Any]) -> dict[str, Any]:
    report = f.get("validation_report") or {}
    return {
        "ID": f.get("id"), "Name": f.get("filename"), "Size": human_bytes(f.get("bytes")),
        "Type": f.get("FileType"), "Purpose": f.get("purpose"), "Status": f.get("processing_status"),
        "Format": (report.get("dataset_format") or "").lower() or None, "Samples": report.get("nlines"),
        "Error": report.get("error"), "Created": local_time(f.get("created_at")),
    }


@app.command("upload")
def upload(
    file: Annotated[Path, typer.Argument(help="A .jsonl (or .parquet; .csv for eval) dataset.")],
    purpose: Purpose = "fine-tune", json: Json = False, base_url: BaseUrl = None, api_key: ApiKey = None,
) -> None:
    """Upload a dataset (with a progress bar) and show the server's validation result."""
    client = Client.connect(base_url, api_key)
    result = upload_file(client, file, checked_purpose(purpose), show_progress=not json)
    if json:
        print_json(result.file)
        return
    if result.existing:
        typer.echo(f"Already uploaded (same name and contents): {result.file['id']}")
    report = result.file.get("validation_report") or {}
    fmt = (report.get("dataset_format") or "").lower()
    typer.echo(f"Valid {fmt} dataset, {report.get('nlines', '?')} samples: {result.file['id']}")


@app.command("check")
def check(
    file: Annotated[Path, typer.Argument(help="The dataset to validate.")], purpose: Purpose = "fine-tune",
    model: Annotated[str | None, typer.Option(
        "--model", "-m", help="Also render the data with this model's chat template, as a job would: a built-in or "
        "registered model, a cached Hugging Face id, or a local model directory.")] = None,
    train_on_inputs: Annotated[bool | None, typer.Option(
        "--train-on-inputs/--no-train-on-inputs", help="With --model: train every token (default: auto).")] = None,
    method: Annotated[str, typer.Option("--method", help="With --model: sft, or dpo for preference data.")] = "sft",
    top_k: Annotated[int, typer.Option("--top-k", help="With --model: rows to show with their trained text.")] = 3,
    json: Json = False,
    data_dir: Annotated[Path | None, typer.Option(
        "--data-dir", help="With --model: where registered models are (default $TUNERY_DATA_DIR).")] = None,
) -> None:
    """Validate a dataset locally with the server's validator (exit 1 when it is invalid). With
    --model, also render every sample with that model's chat template, report the first line it
    refuses, and show the first rows with their trained text marked."""
    from tunery.datasets import validate_stream

    check_local_file(file)
    with open(file, "rb") as f:
        report = validate_stream(f, file_type_of(file), checked_purpose(purpose))
    result: dict[str, Any] = report.to_json()
    problem = None if report.valid else report.error
    if model is not None and report.valid:
        result["model_check"] = _check_with_model(file, model, train_on_inputs, method, top_k, data_dir)
        problem = result["model_check"]["problem"]
    if json:
        print_json(result)
    elif problem is None:
        fmt = report.dataset_format.value if report.dataset_format else "unknown"
        typer.echo(f"OK: {file} is a valid {fmt} dataset with {report.num_samples} samples")
        if model is not None:
            _print_model_check(result["model_check"])
    else:
        typer.echo(f"Invalid: {file}: {problem}", err=True)
    if problem is not None:
        raise typer.Exit(1)


def _check_with_model(file: Path, model: str, train_on_inputs: bool | None, method: str, top_k: int,
                      data_dir: Path | None) -> dict[str, Any]:
    """Render ``file`` as a job on ``model`` would: its problem (naming the line) or its tokens, and
    the first ``top_k`` rows in trained and untrained segments."""
    from tunery.datasets import DatasetFormat, detect_format, iter_records
    from tunery.training.data.dataset import scan_file
    from tunery.training.data.render import Renderer
    from tunery.training.model import load_tokenizer

    if method not in ("sft", "dpo"):
        raise CliError(f"--method must be sft or dpo; got {method!r}")
    renderer = Renderer(load_tokenizer(_local_model_dir(model, data_dir)),
                        False if method == "dpo" else ("auto" if train_on_inputs is None else train_on_inputs))
    scan = scan_file(file, file_type_of(file), renderer, method)
    rows: list[dict[str, Any]] = []
    if scan.problem is None and file_type_of(file) == "jsonl":
        with open(file, "rb") as stream:
            for line, record in iter_records(stream):
                if len(rows) >= top_k:
                    break
                fmt = detect_format(record, line)
                marked = (renderer.marked_preference(record) if fmt is DatasetFormat.PREFERENCE
                          else (renderer.marked(record, fmt),))
                rows += [{"line": line, "segments": [{"text": t, "trained": trained} for t, trained in m.segments()],
                          "num_tokens": len(m.example), "num_trained_tokens": m.example.num_trained} for m in marked]
    return {"model": model, "method": method, "tokens": scan.tokens, "problem": scan.problem, "rows": rows}


def _print_model_check(check: dict[str, Any]) -> None:
    from tunery.cli.trained_text import legend, print_row

    typer.echo(f"{check['model']} renders every sample: {check['tokens']} tokens in one pass. {legend()}")
    for row in check["rows"]:
        print_row(f"\nLine {row['line']}: {row['num_tokens']} tokens, {row['num_trained_tokens']} trained",
                  row["segments"])


def _local_model_dir(model: str, data_dir: Path | None) -> Path:
    """A model directory given directly, or a name as the server would resolve it here."""
    from tunery.cli.options import load_settings, open_db
    from tunery.errors import NotFound
    from tunery.models.catalog import ModelCatalog

    if (Path(model) / "config.json").is_file():
        return Path(model)
    settings = load_settings(data_dir)
    registered: dict[str, str] = {}
    database = settings.resolved_database_url
    if not database.startswith("sqlite:///") or Path(database.removeprefix("sqlite:///")).is_file():
        from tunery.store.base_models import registered_models

        with open_db(settings).session() as s:
            registered = dict(registered_models(s))
    try:
        return ModelCatalog(settings.models_dir).resolve(model, registered).path
    except NotFound as error:
        raise CliError(error.message) from None


@app.command("list")
def list_(json: Json = False, base_url: BaseUrl = None, api_key: ApiKey = None) -> None:
    """List your files, newest first."""
    files = Client.connect(base_url, api_key).get("/v1/files")["data"]
    if json:
        print_json(files)
        return
    print_table(
        ["ID", "Name", "Size", "Purpose", "Status", "Samples", "Created"],
        ([f["id"], f.get("filename"), human_bytes(f.get("bytes")), f.get("purpose"), f.get("processing_status"),
          (f.get("validation_report") or {}).get("nlines"), local_time(f.get("created_at"))] for f in files),
    )


@app.command("retrieve")
def retrieve(file_id: FileId, json: Json = False, base_url: BaseUrl = None, api_key: ApiKey = None) -> None:
    """Show one file and its validation report."""
    f = Client.connect(base_url, api_key).get(f"/v1/files/{file_id}")
    if json:
        print_json(f)
    else:
        print_fields(describe_file(f))


@app.command("delete")
def delete(file_id: FileId, json: Json = False, base_url: BaseUrl = None, api_key: ApiKey = None) -> None:
    """Delete a file and its bytes."""
    result = Client.connect(base_url, api_key).delete(f"/v1/files/{file_id}")
    if json:
        print_json(result)
    else:
        typer.echo(f"Deleted {file_id}")


@app.command("content")
def content(
    file_id: FileId,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write here instead of to stdout.")] = None,
    base_url: BaseUrl = None, api_key: ApiKey = None,
) -> None:
    """Print (or save) a file's contents."""
    client = Client.connect(base_url, api_key)
    with client.stream("GET", f"/v1/files/{file_id}/content") as r:
        if output is None:
            for chunk in r.iter_bytes():
                sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
            return
        try:
            with open(output, "wb") as f:
                for chunk in r.iter_bytes():
                    f.write(chunk)
        except OSError as e:
            raise CliError(f"cannot write {output}: {e.strerror}") from None
    typer.echo(f"Saved {file_id} to {output}", err=True)
