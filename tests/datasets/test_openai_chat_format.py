"""OpenAI's chat and preference formats: the examples from OpenAI's fine-tuning guides validate, and
each rule of its additions (legacy functions, parallel_tool_calls) fails naming the line and field."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tunery.datasets import DatasetFormat, check_record, detect_format
from tunery.datasets.legacy_functions import as_tools
from tunery.errors import DatasetInvalid

WEATHER = {"name": "get_current_weather", "description": "Get the current weather",
           "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}
ARGS = json.dumps({"location": "San Francisco, USA"})
# OpenAI's supervised fine-tuning guide: tools, a tool call and its result, and parallel_tool_calls.
TOOLS_EXAMPLE = {
    "messages": [
        {"role": "user", "content": "What is the weather in San Francisco?"},
        {"role": "assistant", "tool_calls": [{"id": "call_id", "type": "function",
                                              "function": {"name": "get_current_weather", "arguments": ARGS}}]},
        {"role": "tool", "tool_call_id": "call_id", "content": "21.0"},
        {"role": "assistant", "content": "It is 21 degrees celsius in San Francisco, CA", "weight": 1},
    ],
    "tools": [{"type": "function", "function": WEATHER}],
    "parallel_tool_calls": False,
}
# The legacy function-calling form of the same conversation.
FUNCTIONS_EXAMPLE = {
    "messages": [
        {"role": "user", "content": "What is the weather in San Francisco?"},
        {"role": "assistant", "function_call": {"name": "get_current_weather", "arguments": ARGS}},
        {"role": "function", "name": "get_current_weather", "content": "21.0"},
        {"role": "assistant", "content": "It is 21 degrees celsius in San Francisco, CA", "weight": 1},
    ],
    "functions": [WEATHER],
}
# OpenAI's DPO guide.
PREFERENCE_EXAMPLE = {
    "input": {"messages": [{"role": "user", "content": "Hello, can you tell me how cold San Francisco is today?"}],
              "tools": [], "parallel_tool_calls": True},
    "preferred_output": [{"role": "assistant", "content": "Today in San Francisco, it is 14 degrees Celsius."}],
    "non_preferred_output": [{"role": "assistant", "content": "It is not particularly cold in San Francisco today."}],
}


@pytest.mark.parametrize(("record", "fmt"), [(TOOLS_EXAMPLE, DatasetFormat.CONVERSATION),
                                             (FUNCTIONS_EXAMPLE, DatasetFormat.CONVERSATION),
                                             (PREFERENCE_EXAMPLE, DatasetFormat.PREFERENCE)])
def test_openais_documented_examples_are_valid(record: dict[str, Any], fmt: DatasetFormat) -> None:
    assert detect_format(record, 1) is fmt
    facts = check_record(record, fmt, 1)
    assert facts.has_tools is (fmt is DatasetFormat.CONVERSATION)


def _with(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**json.loads(json.dumps(base)), **changes}


def _two_calls() -> dict[str, Any]:
    record = _with(TOOLS_EXAMPLE)
    call = record["messages"][1]["tool_calls"][0]
    record["messages"][1]["tool_calls"] = [call, {**call, "id": "call_2"}]
    return record


def _messages(*changes: tuple[int, dict[str, Any] | None]) -> dict[str, Any]:
    record = _with(FUNCTIONS_EXAMPLE)
    for index, message in changes:
        record["messages"][index] = message
    return record


BAD = [
    (_two_calls(), "messages[1].tool_calls must hold one tool call, because parallel_tool_calls is false"),
    (_with(TOOLS_EXAMPLE, parallel_tool_calls="no"), 'parallel_tool_calls must be true or false; got "no"'),
    (_messages((2, {"role": "function", "content": "21.0"})),
     'messages[2] is missing "name" (a function message names the function it answers)'),
    (_messages((0, {"role": "user", "content": "hi", "function_call": {"name": "f", "arguments": "{}"}})),
     "messages[0].function_call is only allowed on assistant messages"),
    (_messages((1, {"role": "assistant", "content": "ok"})),
     "messages[2].role must not be function: a function message must follow an assistant message"),
    (_messages((1, {"role": "assistant", "function_call": {"name": "f", "arguments": "{}"},
                    "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{}"}}]})),
     "messages[1].function_call must not be given with tool_calls"),
    (_messages((1, {"role": "assistant", "function_call": {"name": "f"}})),
     "messages[1].function_call.arguments must be a JSON string or an object; got null"),
    (_with(FUNCTIONS_EXAMPLE, functions=[{"description": "no name"}]), "functions[0].name must be a string"),
    (_with(PREFERENCE_EXAMPLE, input={**PREFERENCE_EXAMPLE["input"], "parallel_tool_calls": 1}),
     "input.parallel_tool_calls must be true or false; got 1"),
]


@pytest.mark.parametrize(("record", "message"), BAD)
def test_openai_format_rules_name_the_line_and_field(record: dict[str, Any], message: str) -> None:
    with pytest.raises(DatasetInvalid) as caught:
        check_record(record, detect_format(record, 9), 9)
    assert caught.value.message.startswith(f"line 9: {message}"), caught.value.message
    assert caught.value.line == 9


def test_legacy_functions_become_the_equivalent_tool_calls() -> None:
    messages, tools = as_tools(FUNCTIONS_EXAMPLE["messages"], None, FUNCTIONS_EXAMPLE["functions"])
    assert tools == [{"type": "function", "function": WEATHER}]
    call = messages[1]["tool_calls"][0]
    assert call == {"id": "call_1", "type": "function",
                    "function": {"name": "get_current_weather", "arguments": ARGS}}
    assert "function_call" not in messages[1]
    assert messages[2] == {"role": "tool", "name": "get_current_weather", "content": "21.0", "tool_call_id": "call_1"}
    assert messages[3] is FUNCTIONS_EXAMPLE["messages"][3]  # untouched messages are the same objects
    plain, no_tools = as_tools(TOOLS_EXAMPLE["messages"])
    assert plain == TOOLS_EXAMPLE["messages"] and no_tools is None
