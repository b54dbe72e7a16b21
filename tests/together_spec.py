"""Together's published OpenAPI spec (``tests/fixtures/together/openapi.yaml``, togethercomputer/openapi
at 090263a) as JSON Schema 2020-12, to validate tunery's responses against.

The spec is taken as published, with these changes only:
- its two self-contradictions: ``LRScheduler.lr_scheduler_args`` is a ``oneOf`` whose cosine branch
  also matches the linear one (so no cosine job could ever validate), and
  ``TrainingMethodSFT.train_on_inputs`` says ``type: boolean`` beside a ``oneOf`` that allows "auto";
- the event types of the `together` SDK's ``FinetuneEventType`` (generated from Together's newer
  spec: ``early_stopped``, ``tokenized_dataset_upload_complete``) join the spec's enum;
- ``nullable: true`` (OpenAPI 3.0's word, which the spec still uses, e.g. for an error's ``param``
  and ``code``) is read as the JSON Schema it stands for: the type or null.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any, get_args
from urllib.parse import quote

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC = Path(__file__).parent / "fixtures" / "together" / "openapi.yaml"
SPEC_URI = "urn:together-openapi"


def together_spec() -> dict[str, Any]:
    from together.types.finetune_event_type import FinetuneEventType

    spec: dict[str, Any] = yaml.safe_load(SPEC.read_text())
    schemas = spec["components"]["schemas"]
    args = schemas["LRScheduler"]["properties"]["lr_scheduler_args"]
    args["anyOf"] = args.pop("oneOf")
    del schemas["TrainingMethodSFT"]["properties"]["train_on_inputs"]["type"]
    events = schemas["FinetuneEventType"]["enum"]
    events += [t for t in get_args(FinetuneEventType) if t not in events]
    _allow_null(spec)
    return spec


def _allow_null(node: Any) -> None:
    if isinstance(node, dict):
        if node.pop("nullable", False) is True and isinstance(node.get("type"), str):
            node["type"] = [node["type"], "null"]
        for value in node.values():
            _allow_null(value)
    elif isinstance(node, list):
        for value in node:
            _allow_null(value)


def _pointer(*parts: str) -> str:
    """A JSON pointer into the spec, escaped for a URI fragment."""
    return quote("/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts), safe="/~")


@cache
def _registry() -> Registry:  # type: ignore[type-arg]
    return Registry().with_resource(SPEC_URI, Resource.from_contents(together_spec(), DRAFT202012))


def spec_errors(method: str, path: str, body: Any, status: int = 200) -> list[str]:
    """Where ``body`` breaks the spec's ``status`` JSON schema of ``method path`` (empty: nowhere)."""
    where = _pointer("paths", path, method, "responses", str(status), "content", "application/json", "schema")
    # Resolved inside the spec document, so the schema's own "#/components/…" refs work.
    validator = Draft202012Validator({"$ref": f"{SPEC_URI}#{where}"}, registry=_registry())
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(body)]
