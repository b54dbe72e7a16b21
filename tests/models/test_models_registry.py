from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunery.errors import NotFound
from tunery.models.registry import builtin_names, resolve


def test_builtin_names_resolve_to_a_built_directory(tiny_llama: Path) -> None:
    assert builtin_names() == ["tunery/small-llama", "tunery/tiny-llama", "tunery/tiny-vlm"]
    model = resolve("tunery/tiny-llama", cache_dir=tiny_llama.parent)
    assert (model.name, model.path, model.source) == ("tunery/tiny-llama", tiny_llama, "builtin")


def test_registered_names_resolve_to_their_directory(tiny_llama: Path, tmp_path: Path) -> None:
    model = resolve("acme/mine", cache_dir=tmp_path, registered={"acme/mine": str(tiny_llama)})
    assert (model.path, model.source) == (tiny_llama, "registered")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotFound, match="holds no config.json"):
        resolve("acme/empty", cache_dir=tmp_path, registered={"acme/empty": str(tmp_path / "empty")})


def test_unknown_names_offline_say_how_to_register(tmp_path: Path) -> None:
    with pytest.raises(NotFound) as caught:
        resolve("org/x", cache_dir=tmp_path, hf_cache_dir=tmp_path / "hf")
    assert caught.value.message == (
        'model "org/x" is not built in, not registered, and not in the Hugging Face cache; '
        "register a local directory with 'tunery models add NAME PATH'"
    )
    assert caught.value.param == "model"


def test_hub_ids_come_from_the_hugging_face_cache_offline(tmp_path: Path) -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "models--org--cached"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps({"model_type": "llama"}))
    model = resolve("org/cached", cache_dir=tmp_path, hf_cache_dir=tmp_path / "hf")
    assert (model.path, model.source) == (snapshot, "huggingface")


def test_hf_model_revision_picks_that_snapshot_from_the_cache(tmp_path: Path) -> None:
    repo = tmp_path / "hf" / "models--org--cached"
    (repo / "refs").mkdir(parents=True)
    commits = {"main": "a" * 40, "v2": "b" * 40}
    for ref, commit in commits.items():
        (repo / "refs" / ref).write_text(commit)
        (repo / "snapshots" / commit).mkdir(parents=True)
        (repo / "snapshots" / commit / "config.json").write_text(json.dumps({"model_type": "llama", "ref": ref}))
    for revision, commit in [(None, "a" * 40), ("v2", "b" * 40), ("b" * 40, "b" * 40)]:
        model = resolve("org/cached", cache_dir=tmp_path, hf_cache_dir=tmp_path / "hf", revision=revision)
        assert model.path == repo / "snapshots" / commit, revision
    with pytest.raises(NotFound, match="not in the Hugging Face cache"):
        resolve("org/cached", cache_dir=tmp_path, hf_cache_dir=tmp_path / "hf", revision="v3")
