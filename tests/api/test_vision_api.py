"""Vision at job creation, without a worker: limits say which models see images, a text model refuses
image data and train_vision by name, multimodal_params round-trips, and the estimate and preview
count the image tokens the processor puts in each sequence."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import TUNERY, LiveServer
from tests.sample_data import conversation_file, write_jsonl
from tests.sample_images import colour_samples

VLM, TEXT = "tunery/tiny-vlm", "tunery/tiny-llama"
IMAGE_TOKENS = 16


@pytest.fixture(scope="module")
def http(live_server: LiveServer) -> httpx.Client:
    return httpx.Client(base_url=live_server.base_url, headers={"Authorization": f"Bearer {live_server.api_key}"},
                        timeout=120)


@pytest.fixture(scope="module")
def images_id(together_client, tmp_path_factory: pytest.TempPathFactory) -> str:  # type: ignore[no-untyped-def]
    rows = colour_samples(3, seed=0)
    rows[1]["messages"][0]["content"].insert(0, rows[0]["messages"][0]["content"][0])  # two images
    path = write_jsonl(tmp_path_factory.mktemp("img") / "images.jsonl", rows)
    uploaded = together_client.files.upload(path)
    assert together_client.files.retrieve(uploaded.id).processing_status == "COMPLETED"
    return str(uploaded.id)


@pytest.fixture(scope="module")
def text_id(together_client, tmp_path_factory: pytest.TempPathFactory) -> str:  # type: ignore[no-untyped-def]
    return str(together_client.files.upload(conversation_file(tmp_path_factory.mktemp("t") / "t.jsonl", n=4)).id)


def create(http: httpx.Client, **body: Any) -> httpx.Response:
    return http.post("/v1/fine-tunes", json=body)


def test_limits_say_which_models_see_images(together_client) -> None:  # type: ignore[no-untyped-def]
    assert together_client.fine_tuning.model_limits(model_name=VLM).supports_vision is True
    assert together_client.fine_tuning.model_limits(model_name=TEXT).supports_vision is False


@pytest.mark.slow  # the CLI imports torch
def test_a_registered_vision_language_directory_goes_the_same_path(together_client, http: httpx.Client,  # type: ignore[no-untyped-def]
                                                                    live_server: LiveServer, tiny_vlm: Path,
                                                                    images_id: str) -> None:
    subprocess.run([TUNERY, "models", "add", "acme/my-vlm", str(tiny_vlm), "--data-dir", str(live_server.data_dir)],
                   env=live_server.env, check=True, capture_output=True)
    assert together_client.fine_tuning.model_limits(model_name="acme/my-vlm").supports_vision is True
    rows = together_client.fine_tuning.preview(model="acme/my-vlm", training_file=images_id, top_k=1).rows
    assert rows[0].model_dump()["num_image_tokens"] == IMAGE_TOKENS
    r = create(http, model="acme/my-vlm", training_file=images_id, multimodal_params={"train_vision": True})
    assert r.status_code == 200 and r.json()["multimodal_params"] == {"train_vision": True}


REGISTER = """
import sys
from tunery.cli.options import load_settings, open_db
from tunery.store.base_models import register_model
with open_db(load_settings(None)).session() as s:
    for name, path in zip(sys.argv[1::2], sys.argv[2::2]):
        register_model(s, name, path)
"""


@pytest.mark.slow
def test_each_registered_family_goes_the_same_path(together_client, http: httpx.Client,  # type: ignore[no-untyped-def]
                                                   live_server: LiveServer, vlm_family: Any, images_id: str) -> None:
    """Qwen2-VL, Qwen2.5-VL, SmolVLM and Gemma 3 directories, registered as `tunery models add` does (the same
    store call, in the server's environment): limits, preview and estimate with image tokens, create."""
    from tests.vlm_families import FAMILIES

    names = {family: f"acme/{family}" for family in FAMILIES}
    subprocess.run([sys.executable, "-c", REGISTER, *[a for f in FAMILIES for a in (names[f], str(vlm_family(f)))]],
                   env={**live_server.env, "TUNERY_DATA_DIR": str(live_server.data_dir)}, check=True)
    for family, name in names.items():
        assert together_client.fine_tuning.model_limits(model_name=name).supports_vision is True, family
        rows = together_client.fine_tuning.preview(model=name, training_file=images_id, top_k=3).model_dump()["rows"]
        assert [r["num_images"] for r in rows] == [1, 2, 1], family
        for row in rows:
            assert row["num_image_tokens"] >= row["num_images"] * 4
            image = {t for start, end in row["image_spans"] for t in range(start, end)}
            assert all(row["labels"][t] == -100 for t in image)
            assert not image & {t for start, end in row["trained_spans"] for t in range(start, end)}
            assert row["num_trained_tokens"] > 0
        estimate = http.post("/v1/fine-tunes/estimate-price", json={"training_file": images_id, "model": name}).json()
        assert estimate["estimated_train_token_count"] == sum(r["num_tokens"] for r in rows)
        r = create(http, model=name, training_file=images_id, multimodal_params={"train_vision": True})
        assert r.status_code == 200 and r.json()["multimodal_params"] == {"train_vision": True}, r.text


def test_a_text_model_refuses_images_and_train_vision_by_name(http: httpx.Client, images_id: str,
                                                              text_id: str) -> None:
    r = create(http, model=TEXT, training_file=images_id)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["param"] == "training_file" and f'training_file "{images_id}" has images' in error["message"]
    assert "does not take images (supports_vision is false)" in error["message"]
    r = create(http, model=TEXT, training_file=text_id, validation_file=images_id)
    assert r.status_code == 400 and r.json()["error"]["param"] == "validation_file"
    r = create(http, model=TEXT, training_file=text_id, multimodal_params={"train_vision": True})
    assert r.status_code == 400 and r.json()["error"]["param"] == "multimodal_params"
    assert "non-multimodal model `tunery/tiny-llama`" in r.json()["error"]["message"]


def test_multimodal_params_round_trip(http: httpx.Client, together_client, images_id: str,  # type: ignore[no-untyped-def]
                                      text_id: str) -> None:
    for sent, echoed in (({"train_vision": True}, {"train_vision": True}), (None, {"train_vision": False})):
        body = {"model": VLM, "training_file": images_id, **({"multimodal_params": sent} if sent else {})}
        r = create(http, **body)
        assert r.status_code == 200, r.text
        assert r.json()["multimodal_params"] == echoed
        assert http.get(f"/v1/fine-tunes/{r.json()['id']}").json()["multimodal_params"] == echoed
    job = together_client.fine_tuning.create(training_file=images_id, model=VLM, train_vision=True)
    assert together_client.fine_tuning.retrieve(job.id).multimodal_params.train_vision is True
    # A vision-language model trains on text-only data too; a text model's job has no multimodal_params.
    assert create(http, model=VLM, training_file=text_id).status_code == 200
    assert "multimodal_params" not in create(http, model=TEXT, training_file=text_id).json()


def test_estimate_and_preview_count_image_tokens(http: httpx.Client, together_client, images_id: str,  # type: ignore[no-untyped-def]
                                                 text_id: str) -> None:
    preview = together_client.fine_tuning.preview(model=VLM, training_file=images_id, top_k=3).model_dump()
    rows = preview["rows"]
    assert [r["num_images"] for r in rows] == [1, 2, 1]
    assert [r["num_image_tokens"] for r in rows] == [IMAGE_TOKENS, 2 * IMAGE_TOKENS, IMAGE_TOKENS]
    for row in rows:
        image = {t for start, end in row["image_spans"] for t in range(start, end)}
        assert all(row["tokens"][t] == "<image>" and row["labels"][t] == -100 for t in image)
        assert not image & {t for start, end in row["trained_spans"] for t in range(start, end)}
        assert row["num_trained_tokens"] > 0
    estimate = http.post("/v1/fine-tunes/estimate-price", json={"training_file": images_id, "model": VLM}).json()
    assert estimate["estimated_train_token_count"] == sum(r["num_tokens"] for r in rows)
    # Together cannot estimate images for a text model; neither do we (create refuses it).
    text_model = http.post("/v1/fine-tunes/estimate-price", json={"training_file": images_id, "model": TEXT}).json()
    assert text_model["estimation_available"] is False and text_model["unavailable_reason"] == "multimodal_dataset"


def test_upload_refuses_a_broken_image_naming_the_line(together_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from together import BadRequestError

    rows = colour_samples(3, seed=0)
    rows[2]["messages"][0]["content"][0]["image_url"]["url"] = "data:image/png;base64,aGVsbG8="
    with pytest.raises(BadRequestError) as caught:
        together_client.files.upload(write_jsonl(tmp_path / "broken.jsonl", rows), check=False)
    assert caught.value.body["error"]["message"] == ('line 3: messages[0].content[0].image_url.url must be a decodable '
                                            'image; got "5 bytes that are no image file"')
