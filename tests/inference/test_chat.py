"""Splitting generated text into reasoning, content and tool calls, streamed or whole, for the tool-call
formats of real templates; and rendering OpenAI-shaped messages through a chat template."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tunery.inference.chat import OutputParser, normalise_messages, parse_tool_calls, render_chat
from tunery.models.builtin import CHAT_TEMPLATE

HERMES = "{% for tool in tools %}{{ tool | tojson }}{% endfor %}<tool_call>{{ name }}</tool_call><think>"
MISTRAL = "{% if tools %}[AVAILABLE_TOOLS]{{ tools }}[/AVAILABLE_TOOLS]{% endif %}[TOOL_CALLS]"
LLAMA = 'Respond with {"name": function name, "parameters": dictionary of argument name and its value}'


def streamed(parser: OutputParser, text: str, piece: int) -> tuple[str, str, Any]:
    reasoning = content = ""
    for i in range(0, len(text), piece):
        r, c = parser.feed(text[i : i + piece])
        reasoning, content = reasoning + r, content + c
    done = parser.finish()
    return reasoning + done.reasoning_tail, content + done.content_tail, done


@pytest.mark.parametrize("piece", [1, 3, 1000])
def test_hermes_calls_and_reasoning_stream_like_the_whole(piece: int) -> None:
    text = ('<think>The user wants weather.</think>\n\nLet me check. <tool_call>\n{"name": "get_weather", '
            '"arguments": {"city": "Paris"}}\n</tool_call><tool_call>{"name": "get_time", "arguments": {}}</tool_call>')
    reasoning, content, done = streamed(OutputParser(HERMES, tools=True), text, piece)
    assert reasoning == done.reasoning == "The user wants weather."
    assert content == "Let me check. " and done.content == "Let me check."
    assert [c["function"]["name"] for c in done.tool_calls] == ["get_weather", "get_time"]
    assert json.loads(done.tool_calls[0]["function"]["arguments"]) == {"city": "Paris"}
    assert done.tool_calls[0]["type"] == "function" and done.tool_calls[0]["id"].startswith("call_")


def test_other_formats_and_what_is_not_a_call() -> None:
    mistral = OutputParser(MISTRAL, tools=True)
    mistral.feed('[TOOL_CALLS] [{"name": "add", "arguments": {"a": 1, "b": 2}}]')
    assert mistral.finish().tool_calls[0]["function"] == {"name": "add", "arguments": '{"a": 1, "b": 2}'}
    llama = OutputParser(LLAMA, tools=True)
    llama.feed('{"name": "add", "parameters": {"a": 1}}')
    assert llama.finish().tool_calls[0]["function"]["arguments"] == '{"a": 1}'
    # Without tools in the request, or with a broken call, the text is content.
    plain = OutputParser(HERMES, tools=False)
    assert plain.feed('<tool_call>{"name": "x"}</tool_call>') == ("", '<tool_call>{"name": "x"}</tool_call>')
    broken = OutputParser(HERMES, tools=True)
    r, c, done = streamed(broken, "Sure <tool_call>{not json</tool_call>", 4)
    assert done.tool_calls is None and c == done.content == "Sure <tool_call>{not json</tool_call>"
    assert parse_tool_calls('{"arguments": {}}') == []


def test_a_prompt_that_opens_the_thinking_block_starts_in_reasoning() -> None:
    parser = OutputParser(HERMES, tools=False, prompt_text="<|im_start|>assistant\n<think>\n")
    reasoning, content, _ = streamed(parser, "hmm, four.\n</think>\n\n4", 2)
    assert (reasoning, content) == ("hmm, four.\n", "4")
    # A template without <think> leaves the tag alone.
    assert OutputParser("{{ messages }}", tools=False).feed("<think>x</think>y") == ("", "<think>x</think>y")


def test_openai_messages_render_through_the_template(tokenizer: Any) -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}]},
                {"role": "tool", "content": "42", "tool_call_id": "c1"}]
    assert normalise_messages(messages)[0]["content"] == "Hi there"
    assert tokenizer.chat_template == CHAT_TEMPLATE
    text, ids = render_chat(tokenizer, messages, [{"type": "function", "function": {"name": "f"}}], {})
    assert 'Hi there' in text and '<tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call>' in text
    assert text.endswith("<|im_start|>assistant\n") and ids[0] == tokenizer.bos_token_id
