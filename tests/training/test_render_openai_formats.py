"""OpenAI's legacy function calling trains exactly like the tool calls it stands for."""

from __future__ import annotations

import json
from typing import Any

from tests.datasets.test_openai_chat_format import FUNCTIONS_EXAMPLE, TOOLS_EXAMPLE
from tunery.datasets import DatasetFormat
from tunery.training.data.render import IGNORE, Renderer


def test_legacy_functions_render_and_mask_like_their_tools(tokenizer: Any) -> None:
    renderer = Renderer(tokenizer)
    modern = json.loads(json.dumps(TOOLS_EXAMPLE))
    modern["messages"][1]["tool_calls"][0]["id"] = "call_1"  # the id the legacy call is given
    modern["messages"][2]["name"] = "get_current_weather"
    legacy = renderer.render(FUNCTIONS_EXAMPLE, DatasetFormat.CONVERSATION)
    assert legacy == renderer.render(modern, DatasetFormat.CONVERSATION)
    trained = tokenizer.decode([t for t, label in zip(legacy.input_ids, legacy.labels, strict=True) if label != IGNORE])
    assert "get_current_weather" in trained and "21 degrees" in trained  # the call and the answer are trained
    assert "What is the weather" not in trained  # the user turn is not
