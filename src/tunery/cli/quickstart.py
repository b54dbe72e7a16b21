"""`tunery quickstart`: the whole product in about two minutes on a laptop CPU.

It uses the tunery server at ``--base-url``/``$TUNERY_BASE_URL`` (default http://127.0.0.1:8000)
or, when none answers there, starts one (`tunery serve`, embedded worker included) and stops it at
the end unless ``--keep-server``. Then it writes the bundled question → answer dataset, uploads
it, fine-tunes the built-in ``tunery/tiny-llama`` on it while showing the live view, downloads the
model, and compares exact-match accuracy before and after on the dataset's prompts.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from tunery.cli.client import ApiKey, BaseUrl, Client, CliError, local_data_dir, resolve_base_url
from tunery.cli.local_server import LocalServer, local_server
from tunery.cli.options import DataDir
from tunery.cli.output import console, duration, human_bytes
from tunery.cli.transfer import download_model, upload_file
from tunery.cli.watch import EXIT_COMPLETED, EXIT_INTERRUPTED, watch_job

MODEL = "tunery/tiny-llama"
# Measured on a 2-core CPU: from random weights the 1M-parameter model needs about 1,000 steps of
# full fine-tuning to memorise the ~200 pairs. With these settings exact match was 100 % (seed 42,
# the default), 98.5 % (seed 1) and 99.5 % (seed 7); at 25 epochs it was 39-47 %, and larger
# batches or learning rates were less reliable. LoRA learns far slower on a model that knows
# nothing yet.
HYPERPARAMETERS: dict[str, Any] = {
    "training_type": {"type": "Full"},
    "n_epochs": 40,
    "learning_rate": 1e-3,
    "warmup_ratio": 0.05,
    "batch_size": 8,
    "max_seq_length": 128,
    "packing": False,
    "n_checkpoints": 1,
    "suffix": "quickstart",
}
# The model is tiny: thread hand-offs cost more than they save, and on a busy 2-core machine two
# intra-op threads made each step up to 50× slower. Only the server quickstart starts gets this.
EMBEDDED_SERVER_ENV = {"OMP_NUM_THREADS": "1"}
EXAMPLES = 5


def quickstart(
    directory: Annotated[Path, typer.Option("--dir", help="Where to put the dataset and the model.")] = Path(
        "tunery-quickstart"),
    keep_server: Annotated[bool, typer.Option("--keep-server", help="Leave a server it started running.")] = False,
    data_dir: DataDir = None, base_url: BaseUrl = None, api_key: ApiKey = None,
    samples: Annotated[int | None, typer.Option(hidden=True, help="Use only the first N pairs (tests).")] = None,
    epochs: Annotated[int | None, typer.Option(hidden=True, help="Override n_epochs (tests).")] = None,
) -> None:
    """Fine-tune the built-in tiny model on a bundled dataset end to end, and show before/after."""
    from tunery.quickstart.data import qa_pairs, write_dataset

    started = time.monotonic()
    out = console()
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    data_dir = (data_dir or local_data_dir()).expanduser().resolve()
    url = resolve_base_url(base_url)
    pairs = qa_pairs(samples)
    with ExitStack() as stack:
        with out.status(f"Looking for a tunery server at {url}…"):
            server = stack.enter_context(local_server(url, api_key, data_dir, directory / "server.log", keep_server,
                                                      EMBEDDED_SERVER_ENV))
        out.print(_server_line(server, directory))
        client = Client(server.base_url, server.api_key)
        dataset = write_dataset(directory / "quickstart.jsonl", pairs)
        out.print(f"Wrote {len(pairs)} question → answer pairs to {dataset}")
        file_id = upload_file(client, dataset).file["id"]
        out.print(f"Uploaded {file_id}: a valid dataset of {len(pairs)} samples")
        job = client.post("/v1/fine-tunes", json=_job_request(file_id, epochs))
        out.print(f"Created {job['id']}: full fine-tuning of {MODEL}, {job['n_epochs']} epochs, learning rate "
                  f"{job['learning_rate']:g}, batch size {job.get('requested_batch_size', job['batch_size'])}")
        code = watch_job(client, job["id"], out)
        if code == EXIT_INTERRUPTED and server.started and not keep_server:
            out.print(f"Stopping the server quickstart started: {job['id']} is requeued and continues when you run "
                      f"tunery serve --port {_port(server)} --data-dir {server.data_dir}")
        if code != EXIT_COMPLETED:
            raise typer.Exit(code)
        archive = download_model(client, job["id"], None, None, directory).path
        job = client.get(f"/v1/fine-tunes/{job['id']}")
        model_dir = _extract(archive, directory / "model")
        out.print(f"Downloaded {archive.name} ({human_bytes(archive.stat().st_size)}) and unpacked it to "
                  f"{model_dir}")
        before, after = _evaluate(out, client, pairs, job["model_output_name"])
    _print_results(out, job, before, after)
    server_state = "still running" if keep_server or not server.started else "stopped"
    _print_summary(out, server, server_state, job, file_id, dataset, archive, model_dir, time.monotonic() - started)


def _server_line(server: LocalServer, directory: Path) -> str:
    if not server.started:
        return f"Using the tunery server at {server.base_url}"
    return (f"Started a tunery server on {server.base_url} (data in {server.data_dir}, log in "
            f"{directory / 'server.log'})")


def _job_request(file_id: str, epochs: int | None) -> dict[str, Any]:
    body = {"training_file": file_id, "model": MODEL, **HYPERPARAMETERS}
    if epochs is not None:
        body["n_epochs"] = epochs
    return body


def _extract(archive: Path, dest: Path) -> Path:
    """Unpack the archive's one top folder as ``dest`` (replacing an older one)."""
    import shutil
    import tempfile

    from tunery.storage.archives import unpack

    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".unpack-") as tmp:
        top = unpack(archive, Path(tmp))
        if not (top / "config.json").is_file():
            raise CliError(f"{archive} does not hold a model directory")
        shutil.rmtree(dest, ignore_errors=True)
        top.rename(dest)
    return dest


def _evaluate(out: Any, client: Client, pairs: list[tuple[str, str]], tuned: str) -> tuple[Any, Any]:
    """Both models answer every question through the server's chat completions (greedy)."""
    from tunery.quickstart.evaluate import MAX_NEW_TOKENS, exact_match

    def asker(model: str) -> Any:
        def ask(messages: list[dict[str, str]]) -> str:
            body = {"model": model, "messages": messages, "temperature": 0, "max_tokens": MAX_NEW_TOKENS}
            return str(client.post("/v1/chat/completions", json=body)["choices"][0]["message"]["content"] or "")
        return ask

    with out.status(f"Asking the base and the fine-tuned model the {len(pairs)} dataset questions…"):
        return exact_match(asker(MODEL), pairs), exact_match(asker(tuned), pairs)


def _print_results(out: Any, job: dict[str, Any], before: Any, after: Any) -> None:
    table = Table("Model", "Exact match", title="Before / after (served by this server, greedy)",
                  title_justify="left")
    table.add_row(f"{MODEL} (before)", f"{before.correct}/{len(before.samples)}  {before.accuracy:.1%}")
    table.add_row(f"{escape(job['model_output_name'])} (after)",
                  f"[bold]{after.correct}/{len(after.samples)}  {after.accuracy:.1%}[/]")
    out.print(table)
    examples = Table("Question", "Expected", "Before", "After", title="Examples", title_justify="left")
    for b, a in list(zip(before.samples, after.samples, strict=True))[:EXAMPLES]:
        examples.add_row(escape(a.question), escape(a.expected), escape(_printable(b.got)),
                         ("[green]" if a.correct else "[red]") + escape(_printable(a.got)) + "[/]")
    out.print(examples)


def _printable(text: str, width: int = 24) -> str:
    """An untrained model's answer is byte soup: keep it to one short, printable line."""
    return "".join(c if c.isprintable() and c != "\ufffd" else "?" for c in text)[:width]


def _print_summary(out: Any, server: LocalServer, server_state: str, job: dict[str, Any], file_id: str,
                   dataset: Path, archive: Path, model_dir: Path, seconds: float) -> None:
    job_id = job["id"]
    where = f", data in {server.data_dir}" if server.data_dir else ""
    restart = ""
    if server_state == "stopped":
        restart = f"; restart it with: tunery serve --port {_port(server)} --data-dir {server.data_dir}"
    lines = [
        f"Done in {duration(seconds)}.",
        f"  Job      {job_id} (tunery fine-tuning retrieve {job_id})",
        f"  Dataset  {dataset} (uploaded as {file_id})",
        f"  Model    {model_dir} (archive: {archive})",
        f"  Server   {server.base_url}{where}, {server_state}{restart}",
        "",
        f"Chat with it: tunery chat {job['model_output_name']}",
        "",
        "Use the model with transformers:",
        "  from transformers import AutoModelForCausalLM, AutoTokenizer",
        f'  tok = AutoTokenizer.from_pretrained("{model_dir}")',
        f'  model = AutoModelForCausalLM.from_pretrained("{model_dir}")',
        '  ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of Kenya?"}],',
        '                                add_generation_prompt=True, return_tensors="pt", return_dict=True)',
        "  out = model.generate(**ids, max_new_tokens=8)",
        '  print(tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))',
        "",
        "Use the job and the model with the together SDK (base_url without /v1):",
        "  from together import Together",
        f'  client = Together(base_url="{server.base_url}", api_key=open("{_key_path(server)}").read().strip())',
        f'  print(client.fine_tuning.retrieve("{job_id}").status)',
        f'  r = client.chat.completions.create(model="{job["model_output_name"]}",',
        '                                     messages=[{"role": "user", "content": "What is the capital of Kenya?"}])',
        "  print(r.choices[0].message.content)",
        f'  client.fine_tuning.content(ft_id="{job_id}").write_to_file("model.tar.zst")',
    ]
    out.print(escape("\n".join(lines)), highlight=False)


def _port(server: LocalServer) -> str:
    return server.base_url.rsplit(":", 1)[-1]


def _key_path(server: LocalServer) -> Path:
    return (server.data_dir or local_data_dir()) / "api_key"
