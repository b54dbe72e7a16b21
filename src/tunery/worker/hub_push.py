"""Push a finished job's model to a Hugging Face hub repository (``hf_output_repo_name``).

The repository gets the merged model at its root, so ``from_pretrained("<repo>")`` loads it with
no base model at hand; a LoRA job's adapter goes under ``adapter/`` as well. The repository is
created (private) if it does not exist. The hub is ``huggingface.co`` unless ``HF_ENDPOINT`` names
another (a mirror, or a self-hosted hub), read by ``huggingface_hub`` itself.
"""

from __future__ import annotations

from pathlib import Path


class HubPushFailed(Exception):
    """The hub refused or could not be reached; the message says why, without the token."""


def push_model(final_dir: Path, repo_id: str, token: str | None, message: str) -> str:
    """Upload ``final_dir``'s ``model/`` (and ``adapter/`` if present) to ``repo_id``; returns the
    repository's URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token or False)  # never a token from the worker's own login
    try:
        url = api.create_repo(repo_id, private=True, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=final_dir / "model", commit_message=message)
        if (final_dir / "adapter").is_dir():
            api.upload_folder(repo_id=repo_id, folder_path=final_dir / "adapter", path_in_repo="adapter",
                              commit_message=f"{message} (LoRA adapter)")
    except Exception as e:  # refused, unreachable, offline: any of them is reported, none fails the job
        detail = f"{type(e).__name__}: {str(e).splitlines()[0]}" if str(e) else type(e).__name__
        raise HubPushFailed(_without(detail, token)) from None
    return str(url)


def _without(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text
