"""The models this server can fine-tune: built-ins, registered directories and cached hub ids,
resolved with the server's settings."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tunery.models.builtin import BUILTINS
from tunery.models.limits import model_limits, why_no_vision
from tunery.models.registry import ResolvedModel, resolve


class ModelCatalog:
    def __init__(self, cache_dir: Path, allow_network: bool = False):
        self.cache_dir = cache_dir
        self.allow_network = allow_network

    def resolve(self, name: str, registered: Mapping[str, str], revision: str | None = None,
                token: str | None = None) -> ResolvedModel:
        return resolve(name, cache_dir=self.cache_dir, registered=registered, allow_network=self.allow_network,
                       revision=revision, token=token)

    def limits(self, name: str, registered: Mapping[str, str]) -> dict[str, Any]:
        return model_limits(name, self.resolve(name, registered).path)

    def why_no_vision(self, name: str, registered: Mapping[str, str]) -> str | None:
        """Why a vision-language model cannot train on images (None for a text model or one that can)."""
        return why_no_vision(self.resolve(name, registered).path)

    def supported(self, registered: Mapping[str, str]) -> list[str]:
        return sorted(BUILTINS) + sorted(registered)
