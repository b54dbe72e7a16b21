"""The models this server can fine-tune: built-ins, registered directories, and Hugging Face ids
(Together's model names among them) from the cache or, where allowed, the hub — resolved with the
server's settings."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tunery.models.builtin import BUILTINS
from tunery.models.limits import model_limits, why_no_vision
from tunery.models.registry import ResolvedModel, resolve, together_models


class ModelCatalog:
    def __init__(self, cache_dir: Path, allow_network: bool = False):
        self.cache_dir = cache_dir
        self.allow_network = allow_network

    def resolve(self, name: str, registered: Mapping[str, str], revision: str | None = None,
                token: str | None = None, weights: bool = True) -> ResolvedModel:
        return resolve(name, cache_dir=self.cache_dir, registered=registered, allow_network=self.allow_network,
                       revision=revision, token=token, weights=weights)

    def limits(self, name: str, registered: Mapping[str, str]) -> dict[str, Any]:
        """The model's ``FinetuneModelLimits``; needs only its config (a hub model's weights are
        fetched by the job that trains it)."""
        return model_limits(name, self.resolve(name, registered, weights=False).path)

    def why_no_vision(self, name: str, registered: Mapping[str, str]) -> str | None:
        """Why a vision-language model cannot train on images (None for a text model or one that can);
        needs only its config, like ``limits``."""
        return why_no_vision(self.resolve(name, registered, weights=False).path)

    def supported(self, registered: Mapping[str, str]) -> list[str]:
        """Built-ins, registered names and, where hub downloads are allowed, Together's model names."""
        together = sorted(set(together_models()) - set(registered)) if self.allow_network else []
        return sorted(BUILTINS) + sorted(registered) + together
