"""Format detection and per-sample checks: each rule has a valid and an invalid example."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from typing import Any

import pytest
from PIL import Image

from tests.sample_images import solid_url
from tunery.datasets import DatasetFormat, RecordFacts, check_record, detect_format
from tunery.datasets.formats import NO_FACTS, show
from tunery.datasets.images import MAX_IMAGE_BYTES, MAX_IMAGES_PER_SAMPLE, MAX_PIXELS
from tunery.errors import DatasetInvalid

PNG = solid_url()


def user(content: Any = "hi", **extra: Any) -> dict[str, Any]:
    return {"role": "user", "content": content, **extra}


def assistant(content: Any = "hello", **extra: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": content, **extra}


def call(name: str = "get_weather", call_id: str = "call_1") -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": '{"city": "Paris"}'}}


TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


def check(record: dict[str, Any], line: int = 7) -> RecordFacts:
    return check_record(record, detect_format(record, line), line)


def error_of(record: Any, line: int = 7) -> DatasetInvalid:
    with pytest.raises(DatasetInvalid) as caught:
        check(record, line)
    return caught.value


# --- detect_format ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"text": "Once upon a time"}, DatasetFormat.GENERAL),
        ({"messages": [user(), assistant()]}, DatasetFormat.CONVERSATION),
        ({"messages": [user(), assistant()], "tools": [TOOL]}, DatasetFormat.CONVERSATION),
        ({"prompt": "2+2=", "completion": "4"}, DatasetFormat.INSTRUCTION),
        (
            {
                "input": {"messages": [user()]},
                "preferred_output": [assistant()],
                "non_preferred_output": [assistant("go away")],
            },
            DatasetFormat.PREFERENCE,
        ),
    ],
)
def test_detect_format_by_keys(record: dict[str, Any], expected: DatasetFormat) -> None:
    assert detect_format(record, 1) is expected


def test_a_record_matching_two_formats_is_rejected_naming_both() -> None:
    with pytest.raises(DatasetInvalid) as caught:
        detect_format({"text": "a", "messages": []}, 3)
    assert caught.value.message == (
        'line 3: sample matches more than one dataset format (general, conversation); got keys "text", "messages"'
    )
    assert caught.value.line == 3


def test_a_record_matching_no_format_is_rejected() -> None:
    with pytest.raises(DatasetInvalid, match=r'^line 4: sample matches no dataset format .*; got keys "foo"$'):
        detect_format({"foo": 1}, 4)
    with pytest.raises(DatasetInvalid, match=r"^line 4: sample matches no dataset format .*; got keys \{\}$"):
        detect_format({}, 4)


def test_a_half_present_format_names_the_missing_key() -> None:
    with pytest.raises(DatasetInvalid) as caught:
        detect_format({"prompt": "2+2="}, 5)
    assert caught.value.message == (
        'line 5: sample is missing key "completion" (an instruction sample has keys prompt, completion); '
        'got keys "prompt"'
    )


def test_unknown_top_level_key_is_rejected() -> None:
    with pytest.raises(DatasetInvalid) as caught:
        detect_format({"messages": [], "foo": 1}, 3)
    assert caught.value.message == ('line 3: unknown key "foo"; a conversation sample has keys messages, tools, '
                                    'functions, parallel_tool_calls')
    assert caught.value.param == "foo"


def test_a_non_object_is_rejected() -> None:
    with pytest.raises(DatasetInvalid, match=r"^line 2: the line must be a JSON object; got \[1, 2\]$"):
        detect_format([1, 2], 2)  # type: ignore[arg-type]


# --- valid samples and their facts -----------------------------------------------------------


def test_plain_conversation_with_system_prompt_uses_no_features() -> None:
    record = {"messages": [{"role": "system", "content": "Be brief."}, user(), assistant(), user(), assistant()]}
    assert check(record) == RecordFacts()


def test_assistant_may_open_the_conversation() -> None:
    assert check({"messages": [assistant("Hi, how can I help?"), user(), assistant()]}) == RecordFacts()


def test_message_weights_are_reported() -> None:
    facts = check({"messages": [user(), assistant(weight=0), user(), assistant(weight=1)]})
    assert facts == RecordFacts(has_message_weights=True)


def test_tools_tool_calls_and_tool_messages_are_reported() -> None:
    record = {
        "tools": [TOOL],
        "messages": [
            user("Weather in Paris and Rome?"),
            {"role": "assistant", "tool_calls": [call(), call(call_id="call_2")]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            {"role": "tool", "tool_call_id": "call_2", "content": "rain", "name": "get_weather"},
            assistant("Sunny in Paris, rain in Rome."),
        ],
    }
    assert check(record) == RecordFacts(has_tools=True, has_parallel_tool_calls=True)


def test_tool_call_with_null_content_and_object_arguments_is_accepted() -> None:
    tool_call = {"type": "function", "function": {"name": "f", "arguments": {"x": 1}}}
    record = {"messages": [user(), {"role": "assistant", "content": None, "tool_calls": [tool_call]}]}
    assert check(record) == RecordFacts(has_tools=True)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_multimodal_content_lists_are_reported(fmt: str) -> None:
    url = solid_url(fmt=fmt).replace("image/jpeg", "image/jpg") if fmt == "JPEG" else solid_url(fmt=fmt)
    parts = [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": url}}]
    facts = check({"messages": [user(parts), assistant([{"type": "text", "text": "A cat."}])]})
    assert facts == RecordFacts(is_multimodal=True)


def test_text_only_content_lists_are_not_multimodal() -> None:
    assert check({"messages": [user([{"type": "text", "text": "hi"}]), assistant()]}) == RecordFacts()


def test_reasoning_is_reported() -> None:
    facts = check({"messages": [user(), assistant(reasoning="think"), user(), assistant(reasoning_content="t")]})
    assert facts == RecordFacts(has_reasoning=True)


def test_instruction_and_general_samples() -> None:
    assert check({"prompt": "", "completion": "4"}) == RecordFacts()
    assert check({"text": "x"}) == RecordFacts()


def test_preference_sample_with_system_prompt_and_tools() -> None:
    record = {
        "input": {"messages": [{"role": "system", "content": "s"}, user()], "tools": [TOOL]},
        "preferred_output": [assistant("Hello!")],
        "non_preferred_output": [assistant("go away")],
    }
    assert check(record) == RecordFacts(has_tools=True)


# --- invalid samples: (record, exact message after "line 7: ") -------------------------------


def _conversation(*messages: Any, **top: Any) -> dict[str, Any]:
    return {"messages": list(messages), **top}


def _image_conversation(url: str) -> dict[str, Any]:
    return _conversation(user([{"type": "image_url", "image_url": {"url": url}}]), assistant())


def _encoded(image: Image.Image, fmt: str) -> str:
    buf = io.BytesIO()
    image.save(buf, fmt)
    return base64.b64encode(buf.getvalue()).decode()


def _png_claiming(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header claims ``width`` x ``height`` (a decompression bomb's header)."""
    raw = base64.b64decode(_encoded(Image.new("RGB", (1, 1)), "PNG"))
    ihdr = b"IHDR" + struct.pack(">II", width, height) + raw[24:29]
    return raw[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + raw[33:]


CONVERSATION_ERRORS: list[tuple[str, dict[str, Any], str]] = [
    ("not a list", {"messages": "hi"}, 'messages must be a list of messages; got "hi"'),
    ("empty", {"messages": []}, "messages must not be empty; got []"),
    (
        "message not object",
        _conversation("hi", assistant()),
        'messages[0] must be an object with role and content; got "hi"',
    ),
    (
        "missing role",
        _conversation({"content": "hi"}, assistant()),
        'messages[0] is missing "role"; got {"content": "hi"}',
    ),
    (
        "bad role",
        _conversation(user(), assistant(), {"role": "bot", "content": "x"}),
        'messages[2].role must be one of system, user, assistant, tool, function; got "bot"',
    ),
    (
        "null role",
        _conversation({"role": None, "content": "x"}, assistant()),
        "messages[0].role must be one of system, user, assistant, tool, function; got null",
    ),
    (
        "unhashable role",
        _conversation({"role": ["user"], "content": "x"}, assistant()),
        'messages[0].role must be one of system, user, assistant, tool, function; got ["user"]',
    ),
    (
        "unknown message key",
        _conversation(user(), assistant(score=1)),
        'messages[1] has unknown key "score"; a message has keys role, content, tool_calls, function_call, '
        "tool_call_id, name, weight, reasoning, reasoning_content",
    ),
    (
        "missing content",
        _conversation({"role": "user"}, assistant()),
        'messages[0] is missing "content" (only an assistant message with tool_calls or function_call may omit it); '
        'got {"role": "user"}',
    ),
    (
        "null content",
        _conversation(user(None), assistant()),
        "messages[0].content must be a string or a list of content parts; got null",
    ),
    (
        "content number",
        _conversation(user(5), assistant()),
        "messages[0].content must be a string or a list of content parts; got 5",
    ),
    (
        "content empty list",
        _conversation(user([]), assistant()),
        "messages[0].content must not be an empty list; got []",
    ),
    (
        "part not object",
        _conversation(user(["hi"]), assistant()),
        'messages[0].content[0] must be an object with "type"; got "hi"',
    ),
    (
        "part bad type",
        _conversation(user([{"type": "audio", "audio": "x"}]), assistant()),
        'messages[0].content[0].type must be "text" or "image_url"; got "audio"',
    ),
    (
        "text part without text",
        _conversation(user([{"type": "text"}]), assistant()),
        "messages[0].content[0].text must be a string; got null",
    ),
    (
        "text part unknown key",
        _conversation(user([{"type": "text", "text": "a", "x": 1}]), assistant()),
        'messages[0].content[0] has unknown key "x"; a text part has keys type, text',
    ),
    (
        "image in assistant",
        _conversation(user(), assistant([{"type": "image_url", "image_url": {"url": PNG}}])),
        'messages[1].content[0] is an image, and images are only allowed in user messages; got "assistant"',
    ),
    (
        "image without url",
        _conversation(user([{"type": "image_url", "image_url": "data:image/png;base64,iVBO"}]), assistant()),
        'messages[0].content[0].image_url must be an object with a "url" string; '
        'got "data:image/png;base64,iVBO"',
    ),
    (
        "image http url",
        _conversation(user([{"type": "image_url", "image_url": {"url": "http://x/a.png"}}]), assistant()),
        "messages[0].content[0].image_url.url must be a base64 data URL "
        '(data:image/png|jpeg|webp;base64,...); got "http://x/a.png"',
    ),
    (
        "image gif",
        _conversation(user([{"type": "image_url", "image_url": {"url": "data:image/gif;base64,R0"}}]), assistant()),
        "messages[0].content[0].image_url.url must be a base64 data URL "
        '(data:image/png|jpeg|webp;base64,...); got "data:image/gif;base64,R0"',
    ),
    (
        "too many images",
        _conversation(
            user([{"type": "image_url", "image_url": {"url": PNG}}] * (MAX_IMAGES_PER_SAMPLE + 1)),
            assistant(),
        ),
        f"messages must hold at most {MAX_IMAGES_PER_SAMPLE} images per sample; got {MAX_IMAGES_PER_SAMPLE + 1}",
    ),
    (
        "image bad base64",
        _image_conversation("data:image/png;base64,not*base64"),
        'messages[0].content[0].image_url.url must hold valid base64 after the comma; got "not*base64"',
    ),
    (
        "image not an image",
        _image_conversation("data:image/png;base64," + base64.b64encode(b"plain text").decode()),
        "messages[0].content[0].image_url.url must be a decodable image; got \"10 bytes that are no image file\"",
    ),
    (
        "image truncated",
        _image_conversation("data:image/png;base64," + _encoded(Image.new("RGB", (64, 64)), "PNG")[:40]),
        "messages[0].content[0].image_url.url must be a decodable image; got",
    ),
    (
        "image really a gif",
        _image_conversation("data:image/png;base64," + _encoded(Image.new("RGB", (2, 2)), "GIF")),
        'messages[0].content[0].image_url.url must be a JPEG, PNG or WebP image; got "a GIF image"',
    ),
    (
        "image too many pixels",
        _image_conversation("data:image/png;base64," + base64.b64encode(_png_claiming(20000, 20000)).decode()),
        f'messages[0].content[0].image_url.url must have at most {MAX_PIXELS} pixels; got "400000000 pixels"',
    ),
    (
        "image over 10 MiB",
        _image_conversation("data:image/jpeg;base64," + "A" * 4 * (MAX_IMAGE_BYTES // 3 + 10)),
        "messages[0].content[0].image_url.url must hold an image of at most 10 MiB; "
        f'got "{(MAX_IMAGE_BYTES // 3 + 10) * 3} bytes"',
    ),
    ("weight 2", _conversation(user(), assistant(weight=2)), "messages[1].weight must be 0 or 1; got 2"),
    (
        "weight float",
        _conversation(user(), assistant(weight=0.5)),
        "messages[1].weight must be 0 or 1; got 0.5",
    ),
    (
        "weight bool",
        _conversation(user(), assistant(weight=True)),
        "messages[1].weight must be 0 or 1; got true",
    ),
    (
        "system not first",
        _conversation(user(), {"role": "system", "content": "s"}, assistant()),
        'messages[1].role must not be system: a system message may only come first; got "system"',
    ),
    (
        "user twice",
        _conversation(user(), user(), assistant()),
        "messages[1].role must not repeat user: after the optional system message, user and assistant must "
        'alternate; got "user"',
    ),
    (
        "assistant twice",
        _conversation({"role": "system", "content": "s"}, user(), assistant(), assistant()),
        "messages[3].role must not repeat assistant: after the optional system message, "
        'user and assistant must alternate; got "assistant"',
    ),
    (
        "tool without tool_calls",
        _conversation(user(), assistant(), {"role": "tool", "content": "r"}),
        "messages[2].role must not be tool: a tool message must follow an assistant message "
        'with tool_calls (or function_call) or another tool result; got "tool"',
    ),
    (
        "user after tool_calls",
        _conversation(user(), {"role": "assistant", "tool_calls": [call()]}, user()),
        'messages[2].role must be tool: the previous assistant message has tool_calls; got "user"',
    ),
    (
        "user after tool",
        _conversation(user(), {"role": "assistant", "tool_calls": [call()]}, {"role": "tool", "content": "r"}, user()),
        'messages[3].role must be assistant or tool after a tool message; got "user"',
    ),
    (
        "tool_calls on user",
        _conversation(user(tool_calls=[call()]), assistant()),
        "messages[0].tool_calls is only allowed on assistant messages; got "
        '[{"id": "call_1", "type": "function", "function": {"name": "get_weather", "argu…',
    ),
    (
        "tool_calls not list",
        _conversation(user(), {"role": "assistant", "tool_calls": "f()"}),
        'messages[1].tool_calls must be a non-empty list of tool calls; got "f()"',
    ),
    (
        "tool_call without name",
        _conversation(user(), assistant(tool_calls=[{"function": {"arguments": "{}"}}])),
        "messages[1].tool_calls[0].function.name must be a string; got null",
    ),
    (
        "tool_call bad type",
        _conversation(user(), assistant(tool_calls=[{**call(), "type": "code"}])),
        'messages[1].tool_calls[0].type must be "function"; got "code"',
    ),
    (
        "tool_call bad arguments",
        _conversation(user(), assistant(tool_calls=[{"function": {"name": "f", "arguments": 3}}])),
        "messages[1].tool_calls[0].function.arguments must be a JSON string or an object; got 3",
    ),
    (
        "tool_call_id on user",
        _conversation(user(tool_call_id="c"), assistant()),
        'messages[0].tool_call_id is only allowed on tool messages; got "c"',
    ),
    (
        "reasoning on user",
        _conversation(user(reasoning="r"), assistant()),
        'messages[0].reasoning is only allowed on assistant messages; got "r"',
    ),
    (
        "reasoning not string",
        _conversation(user(), assistant(reasoning_content=1)),
        "messages[1].reasoning_content must be a string; got 1",
    ),
    ("name not string", _conversation(user(name=1), assistant()), "messages[0].name must be a string; got 1"),
    (
        "tools not list",
        _conversation(user(), assistant(), tools={"a": 1}),
        'tools must be a list of tools; got {"a": 1}',
    ),
    (
        "tool bad type",
        _conversation(user(), assistant(), tools=[{"type": "retrieval"}]),
        'tools[0].type must be "function"; got "retrieval"',
    ),
    (
        "tool without name",
        _conversation(user(), assistant(), tools=[{"type": "function", "function": {}}]),
        "tools[0].function.name must be a string; got null",
    ),
]


def test_messages_awaiting_an_answer_are_a_reinforcement_prompt_with_any_fields() -> None:
    prompt = {"messages": [{"role": "system", "content": "s"}, user()], "answer": "4", "meta": {"tags": [1]}}
    assert detect_format(prompt, 7) is DatasetFormat.REINFORCEMENT and check(prompt) == NO_FACTS
    assert detect_format({"messages": [user()]}, 7) is DatasetFormat.REINFORCEMENT
    # OpenAI's reinforcement prompts may open with a developer message, its name for the system message
    developer = {"messages": [{"role": "developer", "content": "Answer with a number."}, user()], "answer": "4"}
    assert detect_format(developer, 7) is DatasetFormat.REINFORCEMENT and check(developer) == NO_FACTS
    late = {"messages": [user(), {"role": "developer", "content": "d"}, user()]}
    assert "a system message may only come first" in error_of(late).message
    # a conversation with an answer still may not carry unknown keys (a typo in an SFT file)
    assert 'unknown key "answer"' in error_of({"messages": [user(), assistant()], "answer": "4"}).message


@pytest.mark.parametrize(
    ("record", "message"),
    [case[1:] for case in CONVERSATION_ERRORS],
    ids=[case[0] for case in CONVERSATION_ERRORS],
)
def test_conversation_rule_violations(record: dict[str, Any], message: str) -> None:
    error = error_of(record)
    assert error.message.startswith(f"line 7: {message}")
    assert error.line == 7
    assert error.param is not None and message.startswith(error.param.rsplit(".", 1)[0])


PREFERENCE_OK = {
    "input": {"messages": [user()]},
    "preferred_output": [assistant("Hello!")],
    "non_preferred_output": [assistant("go away")],
}

PREFERENCE_ERRORS: list[tuple[str, dict[str, Any], str]] = [
    (
        "input not object",
        {**PREFERENCE_OK, "input": [user()]},
        'input must be an object with messages; got [{"role": "user", "content": "hi"}]',
    ),
    ("input without messages", {**PREFERENCE_OK, "input": {}}, 'input is missing "messages"; got {}'),
    (
        "input ends with assistant",
        {**PREFERENCE_OK, "input": {"messages": [user(), assistant()]}},
        "input.messages must not end with an assistant message (the outputs are the assistant turn); "
        'got ["user", "assistant"]',
    ),
    (
        "input only system",
        {**PREFERENCE_OK, "input": {"messages": [{"role": "system", "content": "s"}]}},
        'input.messages must have a user message after the system message; got ["system"]',
    ),
    (
        "input bad role",
        {**PREFERENCE_OK, "input": {"messages": [{"role": "human", "content": "x"}]}},
        'input.messages[0].role must be one of system, user, assistant, tool, function; got "human"',
    ),
    (
        "two preferred",
        {**PREFERENCE_OK, "preferred_output": [assistant(), assistant()]},
        "preferred_output must be a list of exactly one assistant message; "
        'got [{"role": "assistant", "content": "hello"}, {"role": "assistant", "content": "h…',
    ),
    (
        "output not list",
        {**PREFERENCE_OK, "non_preferred_output": assistant()},
        "non_preferred_output must be a list of exactly one assistant message; "
        'got {"role": "assistant", "content": "hello"}',
    ),
    (
        "output user",
        {**PREFERENCE_OK, "non_preferred_output": [user()]},
        'non_preferred_output[0].role must be "assistant"; got "user"',
    ),
    (
        "output content",
        {**PREFERENCE_OK, "preferred_output": [assistant([{"type": "text", "text": "x"}])]},
        'preferred_output[0].content must be a string; got [{"type": "text", "text": "x"}]',
    ),
    (
        "output missing content",
        {**PREFERENCE_OK, "preferred_output": [{"role": "assistant"}]},
        'preferred_output[0] is missing "content" (only an output with tool_calls may omit it); '
        'got {"role": "assistant"}',
    ),
]


def test_preference_outputs_may_call_tools_and_reason() -> None:
    call = {"id": "call12345", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}
    record = {**PREFERENCE_OK,
              "preferred_output": [{"role": "assistant", "content": None, "tool_calls": [call, call]}],
              "non_preferred_output": [{"role": "assistant", "content": "No.", "reasoning": "Refuse."}]}
    facts = check_record(record, DatasetFormat.PREFERENCE, 7)
    assert (facts.has_tools, facts.has_parallel_tool_calls, facts.has_reasoning) == (True, True, True)
    bad = {**record, "preferred_output": [{"role": "assistant", "content": None, "tool_calls": [{"function": {}}]}]}
    assert error_of(bad).message.startswith("line 7: preferred_output[0].tool_calls[0].function.name must be a string")


@pytest.mark.parametrize(
    ("record", "message"),
    [case[1:] for case in PREFERENCE_ERRORS],
    ids=[case[0] for case in PREFERENCE_ERRORS],
)
def test_preference_rule_violations(record: dict[str, Any], message: str) -> None:
    assert error_of(record).message == f"line 7: {message}"


def test_preference_unknown_keys() -> None:
    assert error_of({**PREFERENCE_OK, "input": {"messages": [user()], "x": 1}}).message == (
        'line 7: input has unknown key "x"; a preference input has keys messages, tools, parallel_tool_calls'
    )
    assert error_of({**PREFERENCE_OK, "preferred_output": [assistant(weight=1)]}).message == (
        'line 7: preferred_output[0] has unknown key "weight"; an output message has keys role, content, '
        "tool_calls, reasoning, reasoning_content"
    )


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"prompt": 1, "completion": "4"}, "prompt must be a string; got 1"),
        ({"prompt": "2+2=", "completion": None}, "completion must be a string; got null"),
        ({"text": ""}, 'text must not be empty; got ""'),
        ({"text": ["a"]}, 'text must be a string; got ["a"]'),
    ],
)
def test_instruction_and_general_violations(record: dict[str, Any], message: str) -> None:
    assert error_of(record).message == f"line 7: {message}"


def test_check_record_checks_keys_without_detect() -> None:
    with pytest.raises(DatasetInvalid, match=r'^line 2: sample is missing key "completion"'):
        check_record({"prompt": "x"}, DatasetFormat.INSTRUCTION, 2)
    with pytest.raises(DatasetInvalid, match=r'^line 2: unknown key "extra"; a general sample has keys text$'):
        check_record({"text": "x", "extra": 1}, DatasetFormat.GENERAL, 2)
    with pytest.raises(DatasetInvalid, match=r"^line 2: the pretokenized format is only accepted as Parquet"):
        check_record({"input_ids": [1]}, DatasetFormat.PRETOKENIZED, 2)


def test_show_cuts_long_values() -> None:
    assert show("x" * 500) == '"' + "x" * 78 + "…"
    assert show({"a": None}) == '{"a": null}'
