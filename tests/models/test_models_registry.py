from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tunery.errors import NotFound
from tunery.models.catalog import ModelCatalog
from tunery.models.registry import builtin_names, hub_id, resolve, together_models


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
        'model "org/x" is not built in, not registered, and not in the Hugging Face cache (hub downloads are '
        "off on this server: TUNERY_ALLOW_HUB_DOWNLOADS); register a local directory with 'tunery models add NAME PATH'"
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
    model = resolve("org/cached", cache_dir=tmp_path, hf_cache_dir=tmp_path / "hf", weights=False)  # config only
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
        model = resolve("org/cached", cache_dir=tmp_path, hf_cache_dir=tmp_path / "hf", revision=revision,
                        weights=False)
        assert model.path == repo / "snapshots" / commit, revision
    with pytest.raises(NotFound, match="not in the Hugging Face cache"):
        resolve("org/cached", cache_dir=tmp_path, hf_cache_dir=tmp_path / "hf", revision="v3", weights=False)


def cache_model(hf_cache: Path, repo_id: str, model_dir: Path, weights: bool = True) -> Path:
    """``model_dir``'s files as the Hugging Face cache holds ``repo_id`` at main."""
    commit = "c" * 40
    repo = hf_cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    shutil.copytree(model_dir, snapshot, ignore=None if weights else shutil.ignore_patterns("*.safetensors"))
    return snapshot


def test_togethers_names_stand_for_their_hugging_face_models(tiny_llama: Path, tmp_path: Path) -> None:
    assert hub_id("meta-llama/Meta-Llama-3.1-8B-Instruct-Reference") == "meta-llama/Llama-3.1-8B-Instruct"
    assert hub_id("Qwen/Qwen3-8B") == "Qwen/Qwen3-8B" and hub_id("org/mine") == "org/mine"
    snapshot = cache_model(tmp_path / "hf", "meta-llama/Llama-3.1-8B-Instruct", tiny_llama)
    model = resolve("meta-llama/Meta-Llama-3.1-8B-Instruct-Reference", cache_dir=tmp_path, hf_cache_dir=tmp_path / "hf")
    assert (model.name, model.path, model.source) == ("meta-llama/Meta-Llama-3.1-8B-Instruct-Reference", snapshot,
                                                      "huggingface")
    with pytest.raises(NotFound) as caught:
        resolve("meta-llama/Llama-3.3-70B-Instruct-Reference", cache_dir=tmp_path, hf_cache_dir=tmp_path / "hf")
    assert caught.value.message.startswith('model "meta-llama/Llama-3.3-70B-Instruct-Reference" (Together\'s name '
                                           "for the Hugging Face model meta-llama/Llama-3.3-70B-Instruct) is not")


def test_a_model_cached_without_weights_describes_it_but_cannot_train(tiny_llama: Path, tmp_path: Path) -> None:
    snapshot = cache_model(tmp_path / "hf", "org/config-only", tiny_llama, weights=False)
    assert resolve("org/config-only", cache_dir=tmp_path, hf_cache_dir=tmp_path / "hf", weights=False).path == snapshot
    with pytest.raises(NotFound, match="has no weights in safetensors format in the Hugging Face cache"):
        resolve("org/config-only", cache_dir=tmp_path, hf_cache_dir=tmp_path / "hf")


def test_togethers_names_are_listed_only_where_the_hub_can_be_reached(tmp_path: Path) -> None:
    offline, online = ModelCatalog(tmp_path), ModelCatalog(tmp_path, allow_network=True)
    assert "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference" not in offline.supported({})
    listed = online.supported({"acme/mine": "/x"})
    assert "tunery/tiny-llama" in listed
    assert "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference" in listed and "acme/mine" in listed
    assert set(together_models()) <= set(listed)
