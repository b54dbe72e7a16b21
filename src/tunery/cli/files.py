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
def check(file: Annotated[Path, typer.Argument(help="The dataset to validate.")], purpose: Purpose = "fine-tune",
          json: Json = False) -> None:
    """Validate a dataset locally with the server's validator (exit 1 when it is invalid)."""
    from tunery.datasets import validate_stream

    check_local_file(file)
    with open(file, "rb") as f:
        report = validate_stream(f, file_type_of(file), checked_purpose(purpose))
    if json:
        print_json(report.to_json())
    elif report.valid:
        fmt = report.dataset_format.value if report.dataset_format else "unknown"
        typer.echo(f"OK: {file} is a valid {fmt} dataset with {report.num_samples} samples")
    if not report.valid:
        if not json:
            typer.echo(f"Invalid: {file}: {report.error}", err=True)
        raise typer.Exit(1)


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
