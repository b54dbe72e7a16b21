"""`tunery chat MODEL`: talk to a base or fine-tuned model, the answer streamed as it is generated.

    tunery chat default/tiny-llama-mine-1a2b3c            # interactive; an empty line or Ctrl-D ends it
    tunery chat ft-… --system "Answer briefly." -p "What is the capital of France?"   # one question

MODEL is anything the API takes: a base model, a job's output name or id, or NAME:STEP for a checkpoint.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import httpx
import typer

from tunery.cli.client import ApiKey, BaseUrl, Client, CliError

# The first answer may wait for the model to load (or the engine to start); later tokens come fast.
ANSWER_TIMEOUT = httpx.Timeout(600.0, connect=5.0)


def chat(
    model: Annotated[str, typer.Argument(help="Base model, fine-tuned output name or job id (NAME:STEP for a "
                                              "checkpoint).")],
    prompt: Annotated[str | None, typer.Option("-p", "--prompt", help="Ask this once, print the answer, exit.")]
    = None,
    system: Annotated[str | None, typer.Option("--system", help="A system message to start the chat with.")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Most tokens per answer (default: the server's).")] = None,
    temperature: Annotated[float | None, typer.Option(help="0 for greedy answers (default: the model's).")] = None,
    base_url: BaseUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Chat with a model; answers stream in as they are generated."""
    client = Client.connect(base_url, api_key)
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    settings = {k: v for k, v in (("max_tokens", max_tokens), ("temperature", temperature)) if v is not None}
    if prompt is not None:
        stream_answer(client, model, [*messages, {"role": "user", "content": prompt}], settings)
        return
    interactive = sys.stdin.isatty()
    if interactive:
        typer.echo(f"Chatting with {model}. An empty line or Ctrl-D ends the chat.")
    while True:
        try:
            line = input("> " if interactive else "")
        except (EOFError, KeyboardInterrupt):
            typer.echo("")
            return
        if not line.strip():
            return
        messages.append({"role": "user", "content": line})
        messages.append({"role": "assistant", "content": stream_answer(client, model, messages, settings)})


def stream_answer(client: Client, model: str, messages: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    """Print the answer as it streams in; returns it whole."""
    body = {"model": model, "messages": messages, "stream": True, **settings}
    answer = []
    with client.stream("POST", "/v1/chat/completions", json=body, timeout=ANSWER_TIMEOUT) as response:
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: "):])
            if "error" in chunk:
                raise CliError(str(chunk["error"].get("message", "generation failed")))
            for choice in chunk.get("choices") or []:
                text = (choice.get("delta") or {}).get("content") or ""
                answer.append(text)
                sys.stdout.write(text)
                sys.stdout.flush()
    sys.stdout.write("\n")
    return "".join(answer)
