"""Dataset formats: detect which format a sample is in, and check one sample against its format.

A *sample* is one JSON object (one JSONL line). The formats are Together's
(``reference/together-behaviour.md`` §1.5, ``together-sdk-contract.md`` §7.2):

    general        {"text": str}
    conversation   {"messages": [message, ...], "tools"?: [tool, ...], "functions"?: [function, ...],
                    "parallel_tool_calls"?: bool}
    instruction    {"prompt": str, "completion": str}
    preference     {"input": {"messages": [...], "tools"?: [...], "parallel_tool_calls"?: bool},
                    "preferred_output": [assistant message], "non_preferred_output": [assistant message]}
    pretokenized   Parquet rows with input_ids (+ attention_mask, labels, position_ids); see validate.py

Together's and OpenAI's chat formats are one format: OpenAI's additions are its legacy function
calling (top-level ``functions``, an assistant's ``function_call``, ``function`` messages answering
it; ``legacy_functions.py`` turns them into tools for rendering) and ``parallel_tool_calls``
(false: no assistant message may make more than one tool call).

Every problem is raised as :class:`tunery.errors.DatasetInvalid` with a message of the form
``line N: <json path> <problem>; got <value>`` and ``param`` set to the JSON path, so a user can
find and fix the exact field. These functions are pure and allocate little: the validator calls
them once per sample on files of many GB.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from itertools import combinations
from typing import Any, NoReturn

from tunery.datasets.images import MAX_IMAGES_PER_SAMPLE, ImageInvalid, image_bytes, open_image
from tunery.errors import DatasetInvalid


class DatasetFormat(StrEnum):
    """The format of a whole dataset file; every sample in a file has the same one."""

    GENERAL = "general"
    CONVERSATION = "conversation"
    INSTRUCTION = "instruction"
    PREFERENCE = "preference"
    PRETOKENIZED = "pretokenized"
    # Prompts for reinforcement fine-tuning (OpenAI's format): ``messages`` that end with the turn the
    # model answers, plus any other fields, which graders read as ``{{ item.field }}``.
    REINFORCEMENT = "reinforcement"


# Required and optional top-level keys of each JSONL format, in the order messages list them.
REQUIRED_KEYS: dict[DatasetFormat, tuple[str, ...]] = {
    DatasetFormat.GENERAL: ("text",),
    DatasetFormat.CONVERSATION: ("messages",),
    DatasetFormat.INSTRUCTION: ("prompt", "completion"),
    DatasetFormat.PREFERENCE: ("input", "preferred_output", "non_preferred_output"),
}
OPTIONAL_KEYS: dict[DatasetFormat, tuple[str, ...]] = {
    DatasetFormat.GENERAL: (),
    DatasetFormat.CONVERSATION: ("tools", "functions", "parallel_tool_calls"),
    DatasetFormat.INSTRUCTION: (),
    DatasetFormat.PREFERENCE: (),
}
_ALL_KEYS: dict[DatasetFormat, frozenset[str]] = {
    fmt: frozenset(REQUIRED_KEYS[fmt] + OPTIONAL_KEYS[fmt]) for fmt in REQUIRED_KEYS
}
_REQUIRED: dict[DatasetFormat, frozenset[str]] = {fmt: frozenset(keys) for fmt, keys in REQUIRED_KEYS.items()}
_REQUIRED_SETS = tuple(_REQUIRED.items())
# Every key set that is exactly one format's required keys plus any of its optional ones (the
# formats share no keys, so no set belongs to two formats).
_FORMAT_BY_KEYS: dict[frozenset[str], DatasetFormat] = {
    _REQUIRED[fmt] | frozenset(extra): fmt
    for fmt, optional in OPTIONAL_KEYS.items()
    for size in range(len(optional) + 1)
    for extra in combinations(optional, size)
}

# "function" is OpenAI's legacy tool-result role (the answer to an assistant's function_call).
ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool", "function")
TOOL_RESULT_ROLES: tuple[str, ...] = ("tool", "function")
MESSAGE_KEYS: tuple[str, ...] = (
    "role",
    "content",
    "tool_calls",
    "function_call",
    "tool_call_id",
    "name",
    "weight",
    "reasoning",
    "reasoning_content",
)
_ROLE_SET = frozenset(ROLES)
_CALLED_TOOLS = "assistant+tool_calls"  # role-order state after an assistant message with tool_calls
# Roles a plain {"role", "content": str} message may have after each state (tuples, not sets:
# ``in`` must not hash a role that may be any JSON value).
_PLAIN_NEXT: dict[str | None, tuple[str, ...]] = {
    None: ("user", "assistant", "system"),
    "system": ("user", "assistant"),
    "user": ("assistant",),
    "assistant": ("user",),
    "tool": ("assistant",),
    "function": ("assistant",),
    _CALLED_TOOLS: (),
}
_MESSAGE_KEY_SET = frozenset(MESSAGE_KEYS)
_PREFERENCE_INPUT_KEYS = frozenset(("messages", "tools", "parallel_tool_calls"))
OUTPUT_MESSAGE_KEYS: tuple[str, ...] = ("role", "content", "tool_calls", "reasoning", "reasoning_content")
_OUTPUT_MESSAGE_KEYS = frozenset(OUTPUT_MESSAGE_KEYS)

_SHOW_MAX_CHARS = 80


@dataclass(frozen=True, slots=True)
class RecordFacts:
    """Which optional features one sample uses; the validator ORs them over the file."""

    has_message_weights: bool = False
    has_tools: bool = False
    is_multimodal: bool = False
    has_reasoning: bool = False
    has_parallel_tool_calls: bool = False


NO_FACTS = RecordFacts()


def detect_format(record: dict[str, Any], line: int) -> DatasetFormat:
    """Return the one format whose required keys ``record`` has.

    Raises ``DatasetInvalid`` when the record is not an object, matches no format, matches more
    than one (e.g. both ``text`` and ``messages``), or has a top-level key its format does not
    allow. ``line`` is the 1-based physical line, used only in messages.
    """
    if not isinstance(record, dict):
        raise DatasetInvalid(f"line {line}: the line must be a JSON object; got {show(record)}", line=line)
    fmt = _FORMAT_BY_KEYS.get(frozenset(record))
    if fmt is not None:  # the common case: exactly the keys of one format
        return DatasetFormat.REINFORCEMENT if fmt is DatasetFormat.CONVERSATION and _awaits_answer(record) else fmt
    matches = [fmt for fmt, required in _REQUIRED_SETS if required <= record.keys()]
    if len(matches) > 1:
        names = ", ".join(fmt.value for fmt in matches)
        raise DatasetInvalid(
            f"line {line}: sample matches more than one dataset format ({names}); got keys {_keys(record)}",
            line=line,
        )
    if not matches:
        raise _no_format_error(record, line)
    if matches == [DatasetFormat.CONVERSATION] and _awaits_answer(record):
        return DatasetFormat.REINFORCEMENT  # its other keys are the item's fields
    _check_keys(record, matches[0], line)
    return matches[0]


def _awaits_answer(record: dict[str, Any]) -> bool:
    """Messages whose last turn is not the assistant's: a prompt, not a sample to imitate."""
    messages = record.get("messages")
    return (isinstance(messages, list) and bool(messages) and isinstance(messages[-1], dict)
            and messages[-1].get("role") != "assistant")


def check_record(record: dict[str, Any], fmt: DatasetFormat, line: int) -> RecordFacts:
    """Check every field of ``record`` against ``fmt``; return the optional features it uses.

    Raises ``DatasetInvalid`` naming the line, the JSON path of the first bad field and the
    problem. Checks the top-level keys too, so it is complete without ``detect_format``.
    ``PRETOKENIZED`` is a Parquet-only format and is rejected here.
    """
    if not isinstance(record, dict):
        raise DatasetInvalid(f"line {line}: the line must be a JSON object; got {show(record)}", line=line)
    if fmt is DatasetFormat.PRETOKENIZED:
        raise DatasetInvalid(
            f"line {line}: the pretokenized format is only accepted as Parquet; got a JSON sample", line=line
        )
    if fmt is DatasetFormat.REINFORCEMENT:
        return _check_reinforcement(record, line)
    keys = record.keys()
    if not (keys >= _REQUIRED[fmt] and keys <= _ALL_KEYS[fmt]):
        missing = [key for key in REQUIRED_KEYS[fmt] if key not in record]
        if missing:
            raise _missing_key_error(record, fmt, missing[0], line)
        _check_keys(record, fmt, line)
    return _FIELD_CHECKS[fmt](record, line)


def _check_general(record: dict[str, Any], line: int) -> RecordFacts:
    _require_str(record["text"], "text", line)
    if not record["text"]:
        _fail(line, "text", "must not be empty", record["text"])
    return NO_FACTS


def _check_instruction(record: dict[str, Any], line: int) -> RecordFacts:
    _require_str(record["prompt"], "prompt", line)
    _require_str(record["completion"], "completion", line)
    return NO_FACTS


# --- error helpers ---------------------------------------------------------------------------


def show(value: Any) -> str:
    """Render ``value`` for an error message: compact JSON, cut to a readable length."""
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= _SHOW_MAX_CHARS else text[: _SHOW_MAX_CHARS - 1] + "…"


def _fail(line: int, path: str, problem: str, value: Any) -> NoReturn:
    """Raise ``DatasetInvalid("line N: <path> <problem>; got <value>", param=<path>)``."""
    raise DatasetInvalid(f"line {line}: {path} {problem}; got {show(value)}", line=line, param=path)


def _keys(record: Mapping[str, Any]) -> str:
    return ", ".join(json.dumps(key) for key in record) if record else "{}"


def _no_format_error(record: dict[str, Any], line: int) -> DatasetInvalid:
    """A record matching no format: name the missing key if exactly one format is half-present."""
    partial = [fmt for fmt, required in _REQUIRED_SETS if required & record.keys()]
    if len(partial) == 1:
        fmt = partial[0]
        missing = next(key for key in REQUIRED_KEYS[fmt] if key not in record)
        return _missing_key_error(record, fmt, missing, line)
    return DatasetInvalid(
        f"line {line}: sample matches no dataset format (expected text, messages, prompt and completion, "
        f"or input, preferred_output and non_preferred_output); got keys {_keys(record)}",
        line=line,
    )


def _missing_key_error(record: dict[str, Any], fmt: DatasetFormat, key: str, line: int) -> DatasetInvalid:
    return DatasetInvalid(
        f'line {line}: sample is missing key "{key}" ({_article(fmt)} {fmt.value} sample has keys '
        f"{', '.join(REQUIRED_KEYS[fmt] + OPTIONAL_KEYS[fmt])}); got keys {_keys(record)}",
        line=line,
        param=key,
    )


def _check_keys(record: dict[str, Any], fmt: DatasetFormat, line: int) -> None:
    """Reject top-level keys the format does not allow, naming the first one in file order."""
    allowed = _ALL_KEYS[fmt]
    if record.keys() <= allowed:
        return
    unknown = next(key for key in record if key not in allowed)
    raise DatasetInvalid(
        f'line {line}: unknown key "{unknown}"; {_article(fmt)} {fmt.value} sample has keys '
        f"{', '.join(REQUIRED_KEYS[fmt] + OPTIONAL_KEYS[fmt])}",
        line=line,
        param=unknown,
    )


def _article(fmt: DatasetFormat) -> str:
    return "an" if fmt.value[0] in "aeiou" else "a"


def _require_str(value: Any, path: str, line: int) -> None:
    if not isinstance(value, str):
        _fail(line, path, "must be a string", value)


# --- conversation ----------------------------------------------------------------------------


def _check_conversation(record: dict[str, Any], line: int) -> RecordFacts:
    """Check ``messages`` (and ``tools``, ``functions``, ``parallel_tool_calls``) of a conversation sample."""
    has_tools = False
    if "tools" in record:
        _check_tools(record["tools"], "tools", line)
        has_tools = bool(record["tools"])
    if "functions" in record:
        _check_functions(record["functions"], "functions", line)
        has_tools = has_tools or bool(record["functions"])
    facts = _check_messages(record["messages"], "messages", line, preference_input=False)
    _check_parallel_tool_calls(record, record["messages"], "", line, facts)
    return _with_tools(facts) if has_tools else facts


def _check_reinforcement(record: dict[str, Any], line: int) -> RecordFacts:
    """A reinforcement prompt: its messages as a preference input's (no assistant turn needed, not
    ending with one) and its tools; every other key is the grader's to read."""
    if "messages" not in record:
        raise DatasetInvalid(f'line {line}: sample is missing key "messages" (a reinforcement sample has '
                             "messages ending with the turn the model answers, plus any fields)",
                             line=line, param="messages")
    has_tools = False
    if "tools" in record:
        _check_tools(record["tools"], "tools", line)
        has_tools = bool(record["tools"])
    facts = _check_messages(_developer_as_system(record["messages"]), "messages", line, preference_input=True)
    return _with_tools(facts) if has_tools else facts


def _developer_as_system(messages: Any) -> Any:
    """OpenAI's reinforcement prompts often open with a ``developer`` message: its name for the system
    message (training renders it as one where the chat template has no developer role)."""
    if not isinstance(messages, list):
        return messages
    return [{**m, "role": "system"} if isinstance(m, dict) and m.get("role") == "developer" else m for m in messages]


def _check_parallel_tool_calls(holder: dict[str, Any], messages: list[Any], path: str, line: int,
                               facts: RecordFacts) -> None:
    """``parallel_tool_calls`` is a boolean; when false, no assistant message makes several tool calls."""
    if "parallel_tool_calls" not in holder:
        return
    flag = holder["parallel_tool_calls"]
    if not isinstance(flag, bool):
        _fail(line, f"{path}parallel_tool_calls", "must be true or false", flag)
    if flag is False and facts.has_parallel_tool_calls:
        index = next(i for i, m in enumerate(messages) if len(m.get("tool_calls") or ()) > 1)
        calls = messages[index]["tool_calls"]
        _fail(line, f"{path}messages[{index}].tool_calls",
              f"must hold one tool call, because {path}parallel_tool_calls is false", calls)


def _check_messages(messages: Any, path: str, line: int, *, preference_input: bool) -> RecordFacts:
    """Check a message list: each message, the role order, and the assistant-turn rule.

    For a preference ``input`` (``preference_input=True``) no assistant turn is needed, and the
    list must not end with one (the outputs are the next assistant turn).
    """
    if not isinstance(messages, list):
        _fail(line, path, "must be a list of messages", messages)
    if not messages:
        _fail(line, path, "must not be empty", messages)
    weights = tools = images = reasoning = parallel = has_assistant = False
    image_count = 0
    state: str | None = None  # the previous role, or _CALLED_TOOLS
    for index, message in enumerate(messages):
        # Fast path for the common {"role": ..., "content": str} message in an allowed order.
        if (
            type(message) is dict
            and len(message) == 2
            and type(message.get("content")) is str
            and message.get("role") in _PLAIN_NEXT[state]
        ):
            state = message["role"]
            has_assistant = has_assistant or state == "assistant"
            continue
        item = f"{path}[{index}]"
        role = _check_message_shape(message, item, line)
        _check_role_order(role, state, index, item, line)
        content = message.get("content")
        if content is not None and not isinstance(content, str):
            image_count += _check_content_parts(content, role, item, line)
        weights |= _check_weight(message, item, line)
        calls = _check_optional_fields(message, role, item, line)
        tools |= calls > 0 or role in TOOL_RESULT_ROLES
        parallel |= calls > 1
        reasoning |= "reasoning" in message or "reasoning_content" in message
        has_assistant = has_assistant or role == "assistant"
        state = _CALLED_TOOLS if calls else role
    if image_count:
        images = True
        if image_count > MAX_IMAGES_PER_SAMPLE:
            _fail(line, path, f"must hold at most {MAX_IMAGES_PER_SAMPLE} images per sample", image_count)
    last_role = "assistant" if state == _CALLED_TOOLS else state
    _check_turns(messages, last_role, has_assistant, path, line, preference_input=preference_input)
    if not (weights or tools or images or reasoning):
        return NO_FACTS
    return RecordFacts(weights, tools, images, reasoning, parallel)


def _check_message_shape(message: Any, item: str, line: int) -> str:
    """Check a message is an object with a known role and only known keys; return its role."""
    if not isinstance(message, dict):
        _fail(line, item, "must be an object with role and content", message)
    if "role" not in message:
        _fail(line, item, 'is missing "role"', message)
    role = message["role"]
    if not isinstance(role, str) or role not in _ROLE_SET:
        _fail(line, f"{item}.role", f"must be one of {', '.join(ROLES)}", role)
    if not message.keys() <= _MESSAGE_KEY_SET:
        unknown = next(key for key in message if key not in _MESSAGE_KEY_SET)
        raise DatasetInvalid(
            f'line {line}: {item} has unknown key "{unknown}"; a message has keys {", ".join(MESSAGE_KEYS)}',
            line=line,
            param=f"{item}.{unknown}",
        )
    content = message.get("content")
    if content is None and not (role == "assistant" and (message.get("tool_calls") or message.get("function_call"))):
        if "content" in message:
            _fail(line, f"{item}.content", "must be a string or a list of content parts", content)
        _fail(
            line,
            item,
            'is missing "content" (only an assistant message with tool_calls or function_call may omit it)',
            message,
        )
    return role


def _check_role_order(role: str, state: str | None, index: int, item: str, line: int) -> None:
    """Enforce: optional leading system, then user/assistant alternate; tool messages answer tool_calls.

    ``state`` is the previous message's role, or ``_CALLED_TOOLS`` after an assistant message
    with tool_calls.
    """
    previous_called_tools = state == _CALLED_TOOLS
    previous = "assistant" if previous_called_tools else state
    if role == "system":
        if index != 0:
            _fail(line, f"{item}.role", "must not be system: a system message may only come first", role)
        return
    if role in TOOL_RESULT_ROLES:
        if previous in TOOL_RESULT_ROLES or (previous == "assistant" and previous_called_tools):
            return
        _fail(
            line,
            f"{item}.role",
            f"must not be {role}: a {role} message must follow an assistant message with tool_calls (or "
            "function_call) or another tool result",
            role,
        )
    if previous == "assistant" and previous_called_tools:
        _fail(line, f"{item}.role", "must be tool: the previous assistant message has tool_calls", role)
    if role == "user" and previous in TOOL_RESULT_ROLES:
        _fail(line, f"{item}.role", f"must be assistant or tool after a {previous} message", role)
    if role == previous:
        _fail(
            line,
            f"{item}.role",
            f"must not repeat {role}: after the optional system message, user and assistant must alternate",
            role,
        )


def _check_turns(
    messages: list[Any],
    last_role: str | None,
    has_assistant: bool,
    path: str,
    line: int,
    *,
    preference_input: bool,
) -> None:
    """The assistant-turn rule: conversations need one; a preference input must not end with one."""
    if preference_input:
        if last_role == "assistant":
            _fail(
                line,
                path,
                "must not end with an assistant message (the outputs are the assistant turn)",
                [message["role"] for message in messages],
            )
        if last_role == "system":
            _fail(line, path, "must have a user message after the system message", ["system"])
        return
    if not has_assistant:
        _fail(
            line,
            path,
            "must contain at least one assistant message",
            [message["role"] for message in messages],
        )


def _check_weight(message: dict[str, Any], item: str, line: int) -> bool:
    """Return whether the message carries a weight; it must be the integer 0 or 1."""
    if "weight" not in message:
        return False
    weight = message["weight"]
    if type(weight) is not int or weight not in (0, 1):  # bool is an int subclass: exclude it
        _fail(line, f"{item}.weight", "must be 0 or 1", weight)
    return True


def _check_optional_fields(message: dict[str, Any], role: str, item: str, line: int) -> int:
    """Check name, tool_call_id, reasoning fields, tool_calls and the legacy function_call; return the
    number of tool calls."""
    if "name" in message:
        _require_str(message["name"], f"{item}.name", line)
    elif role == "function":
        _fail(line, item, 'is missing "name" (a function message names the function it answers)', message)
    if "function_call" in message:
        if role != "assistant":
            _fail(line, f"{item}.function_call", "is only allowed on assistant messages", message["function_call"])
        if "tool_calls" in message:
            _fail(line, f"{item}.function_call", "must not be given with tool_calls (use one or the other)",
                  message["function_call"])
        _check_function_call(message["function_call"], f"{item}.function_call", line)
        return 1
    if "tool_call_id" in message:
        if role != "tool":
            _fail(line, f"{item}.tool_call_id", "is only allowed on tool messages", message["tool_call_id"])
        _require_str(message["tool_call_id"], f"{item}.tool_call_id", line)
    for key in ("reasoning", "reasoning_content"):
        if key in message:
            if role != "assistant":
                _fail(line, f"{item}.{key}", "is only allowed on assistant messages", message[key])
            _require_str(message[key], f"{item}.{key}", line)
    if "tool_calls" not in message:
        return 0
    if role != "assistant":
        _fail(line, f"{item}.tool_calls", "is only allowed on assistant messages", message["tool_calls"])
    return _check_tool_calls(message["tool_calls"], f"{item}.tool_calls", line)


def _check_tool_calls(calls: Any, path: str, line: int) -> int:
    """Check OpenAI-style tool calls: ``[{"id"?, "type"?: "function", "function": {name, arguments}}]``."""
    if not isinstance(calls, list) or not calls:
        _fail(line, path, "must be a non-empty list of tool calls", calls)
    for index, call in enumerate(calls):
        item = f"{path}[{index}]"
        if not isinstance(call, dict):
            _fail(line, item, "must be an object with a function", call)
        if "id" in call:
            _require_str(call["id"], f"{item}.id", line)
        if call.get("type", "function") != "function":
            _fail(line, f"{item}.type", 'must be "function"', call["type"])
        function = call.get("function")
        if not isinstance(function, dict):
            _fail(line, f"{item}.function", "must be an object with name and arguments", function)
        _require_str(function.get("name"), f"{item}.function.name", line)
        arguments = function.get("arguments")
        if not isinstance(arguments, str | dict):
            _fail(line, f"{item}.function.arguments", "must be a JSON string or an object", arguments)
    return len(calls)


def _check_function_call(call: Any, path: str, line: int) -> None:
    """OpenAI's legacy ``{"name": str, "arguments": str}`` (arguments is JSON text)."""
    if not isinstance(call, dict):
        _fail(line, path, "must be an object with name and arguments", call)
    _require_str(call.get("name"), f"{path}.name", line)
    if not isinstance(call.get("arguments"), str | dict):
        _fail(line, f"{path}.arguments", "must be a JSON string or an object", call.get("arguments"))
    unknown = [key for key in call if key not in ("name", "arguments")]
    if unknown:
        raise DatasetInvalid(f'line {line}: {path} has unknown key "{unknown[0]}"; a function_call has keys name, '
                             "arguments", line=line, param=f"{path}.{unknown[0]}")


def _check_functions(functions: Any, path: str, line: int) -> None:
    """OpenAI's legacy function definitions: ``[{"name", "description"?, "parameters"?}]``."""
    if not isinstance(functions, list):
        _fail(line, path, "must be a list of functions", functions)
    for index, function in enumerate(functions):
        item = f"{path}[{index}]"
        if not isinstance(function, dict):
            _fail(line, item, "must be an object with a name", function)
        _require_str(function.get("name"), f"{item}.name", line)
        if "description" in function:
            _require_str(function["description"], f"{item}.description", line)
        if "parameters" in function and not isinstance(function["parameters"], dict):
            _fail(line, f"{item}.parameters", "must be a JSON schema object", function["parameters"])


def _check_tools(tools: Any, path: str, line: int) -> None:
    """Check OpenAI-style tool definitions: ``[{"type": "function", "function": {"name", ...}}]``."""
    if not isinstance(tools, list):
        _fail(line, path, "must be a list of tools", tools)
    for index, tool in enumerate(tools):
        item = f"{path}[{index}]"
        if not isinstance(tool, dict):
            _fail(line, item, "must be an object with type and function", tool)
        if tool.get("type") != "function":
            _fail(line, f"{item}.type", 'must be "function"', tool.get("type"))
        function = tool.get("function")
        if not isinstance(function, dict):
            _fail(line, f"{item}.function", "must be an object with a name", function)
        _require_str(function.get("name"), f"{item}.function.name", line)
        if "parameters" in function and not isinstance(function["parameters"], dict):
            _fail(line, f"{item}.function.parameters", "must be a JSON schema object", function["parameters"])


def _merged(a: RecordFacts, b: RecordFacts) -> RecordFacts:
    if b is NO_FACTS:
        return a
    return RecordFacts(*(x or y for x, y in zip(dataclasses.astuple(a), dataclasses.astuple(b), strict=True)))


def _with_tools(facts: RecordFacts) -> RecordFacts:
    return RecordFacts(
        facts.has_message_weights,
        True,
        facts.is_multimodal,
        facts.has_reasoning,
        facts.has_parallel_tool_calls,
    )


# --- multimodal content ----------------------------------------------------------------------


def _check_content_parts(content: Any, role: str, item: str, line: int) -> int:
    """Check an OpenAI-style content part list; return how many images it holds."""
    path = f"{item}.content"
    if not isinstance(content, list):
        _fail(line, path, "must be a string or a list of content parts", content)
    if not content:
        _fail(line, path, "must not be an empty list", content)
    images = 0
    for index, part in enumerate(content):
        part_path = f"{path}[{index}]"
        if not isinstance(part, dict):
            _fail(line, part_path, 'must be an object with "type"', part)
        kind = part.get("type")
        if kind == "text":
            _check_part_keys(part, "text", part_path, line)
            _require_str(part.get("text"), f"{part_path}.text", line)
        elif kind == "image_url":
            if role != "user":
                _fail(line, part_path, "is an image, and images are only allowed in user messages", role)
            _check_part_keys(part, "image_url", part_path, line)
            _check_image_url(part.get("image_url"), f"{part_path}.image_url", line)
            images += 1
        else:
            _fail(line, f"{part_path}.type", 'must be "text" or "image_url"', kind)
    return images


def _check_part_keys(part: dict[str, Any], field: str, path: str, line: int) -> None:
    unknown = [key for key in part if key not in ("type", field)]
    if unknown:
        raise DatasetInvalid(
            f'line {line}: {path} has unknown key "{unknown[0]}"; a {field} part has keys type, {field}',
            line=line,
            param=f"{path}.{unknown[0]}",
        )


def _check_image_url(image: Any, path: str, line: int) -> None:
    """An image is ``{"url": "data:image/<png|jpeg|webp>;base64,...", "detail"?}``: at most 10 MiB, and
    decodable (a broken image would otherwise only fail the training job, far from its line)."""
    if not isinstance(image, dict) or not isinstance(image.get("url"), str):
        _fail(line, path, 'must be an object with a "url" string', image)
    try:
        open_image(image_bytes(image["url"]))
    except ImageInvalid as exc:
        _fail(line, f"{path}.url", exc.problem, exc.value)


# --- preference ------------------------------------------------------------------------------


def _check_preference(record: dict[str, Any], line: int) -> RecordFacts:
    """Check a preference (DPO) sample: the input conversation and the two one-message outputs."""
    prompt = record["input"]
    if not isinstance(prompt, dict):
        _fail(line, "input", "must be an object with messages", prompt)
    if "messages" not in prompt:
        _fail(line, "input", 'is missing "messages"', prompt)
    if not prompt.keys() <= _PREFERENCE_INPUT_KEYS:
        unknown = next(key for key in prompt if key not in _PREFERENCE_INPUT_KEYS)
        raise DatasetInvalid(
            f'line {line}: input has unknown key "{unknown}"; a preference input has keys messages, tools, '
            "parallel_tool_calls",
            line=line,
            param=f"input.{unknown}",
        )
    has_tools = "tools" in prompt
    if has_tools:
        _check_tools(prompt["tools"], "input.tools", line)
        has_tools = bool(prompt["tools"])
    facts = _check_messages(prompt["messages"], "input.messages", line, preference_input=True)
    _check_parallel_tool_calls(prompt, prompt["messages"], "input.", line, facts)
    for output in ("preferred_output", "non_preferred_output"):
        facts = _merged(facts, _check_output(record[output], output, line))
    return _with_tools(facts) if has_tools else facts


def _check_output(output: Any, path: str, line: int) -> RecordFacts:
    """A preference output is a list of exactly one assistant message: ``content``, and optionally
    ``tool_calls`` (then content may be null or absent) and ``reasoning``/``reasoning_content``."""
    if not isinstance(output, list) or len(output) != 1:
        _fail(line, path, "must be a list of exactly one assistant message", output)
    message = output[0]
    item = f"{path}[0]"
    if not isinstance(message, dict):
        _fail(line, item, "must be an object with role and content", message)
    if not message.keys() <= _OUTPUT_MESSAGE_KEYS:
        unknown = next(key for key in message if key not in _OUTPUT_MESSAGE_KEYS)
        raise DatasetInvalid(
            f'line {line}: {item} has unknown key "{unknown}"; an output message has keys '
            f"{', '.join(OUTPUT_MESSAGE_KEYS)}",
            line=line,
            param=f"{item}.{unknown}",
        )
    if message.get("role") != "assistant":
        _fail(line, f"{item}.role", 'must be "assistant"', message.get("role"))
    calls = _check_optional_fields(message, "assistant", item, line)
    if message.get("content") is None and not calls:
        if "content" in message:
            _fail(line, f"{item}.content", "must be a string (null only with tool_calls)", None)
        _fail(line, item, 'is missing "content" (only an output with tool_calls may omit it)', message)
    if message.get("content") is not None:
        _require_str(message["content"], f"{item}.content", line)
    reasoning = "reasoning" in message or "reasoning_content" in message
    if not (calls or reasoning):
        return NO_FACTS
    return RecordFacts(False, calls > 0, False, reasoning, calls > 1)


_FIELD_CHECKS: dict[DatasetFormat, Callable[[dict[str, Any], int], RecordFacts]] = {
    DatasetFormat.GENERAL: _check_general,
    DatasetFormat.CONVERSATION: _check_conversation,
    DatasetFormat.INSTRUCTION: _check_instruction,
    DatasetFormat.PREFERENCE: _check_preference,
}
