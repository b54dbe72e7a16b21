"""Resolve a base-model name to a local directory.

Three kinds of name, tried in this order:

1. built-in (``tunery/tiny-llama``, ``tunery/small-llama``): built into ``cache_dir`` on first use;
2. registered by the operator (``tunery models add NAME PATH``; the database owns that table and
   the caller passes it in as a mapping): the directory as given;
3. anything else is a Hugging Face hub id — or one of Together's model names, which stand for the
   Hugging Face models listed in ``together_models.json`` — fetched with ``snapshot_download``:
   from the local Hugging Face cache only, unless ``allow_network`` is true.

``weights=False`` asks only for what describes a model (config, tokenizer, chat template): enough for
its limits and to check a dataset against its template, without downloading gigabytes of weights.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

from tunery.errors import NotFound
from tunery.models.builtin import BUILTINS, ensure_builtin

ModelSource = Literal["builtin", "registered", "huggingface"]

# What describes a model: its config, tokenizer and chat template.
HF_METADATA_PATTERNS = ["*.json", "*.jinja", "*.model", "*.txt", "*.tiktoken", "tokenizer*"]
# Plus the weights, in safetensors; never pickles.
HF_ALLOW_PATTERNS = [*HF_METADATA_PATTERNS, "*.safetensors"]
TOGETHER_MODELS = Path(__file__).with_name("together_models.json")


@cache
def together_models() -> dict[str, str]:
    """Together's fine-tunable model names → the Hugging Face model each stands for."""
    models: dict[str, str] = json.loads(TOGETHER_MODELS.read_text())["models"]
    return models


def hub_id(name: str) -> str:
    """The Hugging Face id ``name`` stands for: itself, unless it is one of Together's names."""
    return together_models().get(name, name)


@dataclass(frozen=True)
class ResolvedModel:
    name: str
    path: Path
    source: ModelSource
    revision: str | None = None


def builtin_names() -> list[str]:
    return sorted(BUILTINS)


def resolve(
    name: str,
    *,
    cache_dir: str | os.PathLike[str],
    registered: Mapping[str, str] | None = None,
    allow_network: bool = False,
    revision: str | None = None,
    token: str | None = None,
    hf_cache_dir: str | os.PathLike[str] | None = None,
    weights: bool = True,
) -> ResolvedModel:
    """Return where model ``name`` lives on this machine, building or downloading it if needed
    (without ``weights``, a hub model's config and tokenizer only).

    Raises ``NotFound`` (param ``model``) with a message that says how to make the name resolve.
    """
    if name in BUILTINS:
        return ResolvedModel(name, ensure_builtin(name, cache_dir), "builtin")
    if registered and name in registered:
        path = Path(registered[name])
        if not (path / "config.json").is_file():
            raise NotFound(
                f'model "{name}" is registered at {path}, but that directory holds no config.json',
                param="model",
            )
        return ResolvedModel(name, path, "registered")
    path = _from_hub(name, allow_network, revision, token, hf_cache_dir, weights)
    return ResolvedModel(name, path, "huggingface", revision)


def _from_hub(
    name: str,
    allow_network: bool,
    revision: str | None,
    token: str | None,
    hf_cache_dir: str | os.PathLike[str] | None,
    weights: bool,
) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo_id = hub_id(name)
    what = f'model "{name}"' + (f" (Together's name for the Hugging Face model {repo_id})" if repo_id != name else "")
    try:
        path = snapshot_download(
            repo_id,
            revision=revision,
            # Only the caller's (the job's) token, never the server's own hub login: a tenant must
            # not reach a gated or private model through the operator's account.
            token=token or False,
            cache_dir=Path(hf_cache_dir) if hf_cache_dir is not None else None,
            local_files_only=not allow_network,
            allow_patterns=HF_ALLOW_PATTERNS if weights else HF_METADATA_PATTERNS,
        )
    except HFValidationError as exc:
        raise NotFound(f"{what} is not built in, not registered, and not a Hugging Face model id; register a "
                       "local directory with 'tunery models add NAME PATH'", param="model") from exc
    except LocalEntryNotFoundError as exc:
        if allow_network:  # the hub could not be reached
            raise NotFound(f"{what} could not be fetched from the Hugging Face hub: {exc.__cause__ or exc}",
                           param="model") from exc
        raise NotFound(
            f"{what} is not built in, not registered, and not in the Hugging Face cache (hub downloads are off "
            "on this server: TUNERY_ALLOW_HUB_DOWNLOADS); register a local directory with 'tunery models add "
            "NAME PATH'",
            param="model",
        ) from exc
    except GatedRepoError as exc:
        raise NotFound(f"{what} is gated on Hugging Face; pass a token that has access", param="model") from exc
    except RevisionNotFoundError as exc:
        raise NotFound(f'{what} has no revision "{revision}" on Hugging Face', param="model") from exc
    except RepositoryNotFoundError as exc:
        raise NotFound(f"{what} does not exist on Hugging Face (or is private)", param="model") from exc
    resolved = Path(str(path))
    if not (resolved / "config.json").is_file():
        raise NotFound(f"{what} on Hugging Face has no config.json; it is not a transformers model", param="model")
    if weights and not any(resolved.glob("*.safetensors")):
        raise NotFound(f"{what} has no weights in safetensors format"
                       + ("" if allow_network else " in the Hugging Face cache"), param="model")
    return resolved
