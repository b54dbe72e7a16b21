"""Resolve a base-model name to a local directory.

Three kinds of name, tried in this order:

1. built-in (``tunery/tiny-llama``, ``tunery/small-llama``): built into ``cache_dir`` on first use;
2. registered by the operator (``tunery models add NAME PATH``; the database owns that table and
   the caller passes it in as a mapping): the directory as given;
3. anything else is a Hugging Face hub id, fetched with ``snapshot_download`` — from the local
   Hugging Face cache only, unless ``allow_network`` is true.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tunery.errors import NotFound
from tunery.models.builtin import BUILTINS, ensure_builtin

ModelSource = Literal["builtin", "registered", "huggingface"]

# Weights in safetensors plus everything a tokenizer or config may need; never pickles.
HF_ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.model", "*.txt", "*.tiktoken", "tokenizer*"]


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
) -> ResolvedModel:
    """Return where model ``name`` lives on this machine, building or downloading it if needed.

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
    return ResolvedModel(name, _from_hub(name, allow_network, revision, token, hf_cache_dir), "huggingface", revision)


def _from_hub(
    repo_id: str,
    allow_network: bool,
    revision: str | None,
    token: str | None,
    hf_cache_dir: str | os.PathLike[str] | None,
) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        path = snapshot_download(
            repo_id,
            revision=revision,
            # Only the caller's (the job's) token, never the server's own hub login: a tenant must
            # not reach a gated or private model through the operator's account.
            token=token or False,
            cache_dir=Path(hf_cache_dir) if hf_cache_dir is not None else None,
            local_files_only=not allow_network,
            allow_patterns=HF_ALLOW_PATTERNS,
        )
    except (LocalEntryNotFoundError, HFValidationError) as exc:
        where = "" if allow_network else ", and not in the Hugging Face cache"
        raise NotFound(
            f'model "{repo_id}" is not built in, not registered{where}; '
            f"register a local directory with 'tunery models add NAME PATH'",
            param="model",
        ) from exc
    except GatedRepoError as exc:
        raise NotFound(
            f'model "{repo_id}" is gated on Hugging Face; pass a token that has access', param="model"
        ) from exc
    except RevisionNotFoundError as exc:
        raise NotFound(f'model "{repo_id}" has no revision "{revision}" on Hugging Face', param="model") from exc
    except RepositoryNotFoundError as exc:
        raise NotFound(f'model "{repo_id}" does not exist on Hugging Face (or is private)', param="model") from exc
    resolved = Path(str(path))
    if not (resolved / "config.json").is_file():
        raise NotFound(
            f'model "{repo_id}" on Hugging Face has no config.json; it is not a transformers model', param="model"
        )
    return resolved
