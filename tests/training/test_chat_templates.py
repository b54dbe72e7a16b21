"""Loss masking with the official chat templates of real model families (tests/fixtures/chat_templates),
run unchanged on the built-in tiny tokenizer. Every case decodes the trained spans and compares
them with text written out by hand from reading the template; a template that refuses a case must
refuse it with its own message."""

from __future__ import annotations

import json
from typing import Any

import pytest
from transformers import AutoTokenizer

from tests.training.chat_fixtures import NAMES, fixture_tokenizer
from tunery.training.data.chat import ConversationRefused
from tunery.training.data.render import IGNORE, Example, Renderer


@pytest.fixture(scope="module")
def tokenizers(tiny_llama: Any) -> dict[str, Any]:
    base = AutoTokenizer.from_pretrained(tiny_llama)
    return {name: fixture_tokenizer(base, name) for name in NAMES}


def trained_text(tokenizer: Any, example: Example) -> list[str]:
    """The decoded text of each maximal run of trained tokens."""
    spans: list[list[int]] = []
    previous = False
    for token, label in zip(example.input_ids, example.labels, strict=True):
        trained = label != IGNORE
        if trained:
            assert label == token
            if not previous:
                spans.append([])
            spans[-1].append(token)
        previous = trained
    return [tokenizer.decode(span) for span in spans]


TOOLS = [{"type": "function", "function": {
    "name": "weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
CASES: dict[str, tuple[list[dict[str, Any]], list[Any] | None]] = {
    "system": ([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
    ], None),
    "no_system": ([
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": " Hello there. "},  # templates that trim, trim it
        {"role": "user", "content": "And Spain?"},
        {"role": "assistant", "content": "Madrid."},
    ], None),
    # OpenAI's (and Together's) shape: content null, arguments a JSON string.
    "tools": ([
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call12345", "type": "function",
             "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call12345", "content": "sunny, 20C"},
        {"role": "assistant", "content": "Sunny, 20C."},
    ], TOOLS),
    # Both names for the field; by default only the final assistant turn of reasoning data trains.
    "reasoning": ([
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!", "reasoning_content": "A greeting."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4", "reasoning": "Add them."},
    ], None),
    "weights": ([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi", "weight": 1},
        {"role": "assistant", "content": "Hello!", "weight": 0},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
    ], None),
}

NO_REASONING = "does not render the reasoning of messages[3]"
NO_TOOL_CALLS = "leaves out the tool calls of messages[1]"
NO_SYSTEM = "refuses this conversation: System role not supported"
ALTERNATE = "refuses this conversation: Conversation roles must alternate user/assistant/user/assistant/..."


class Refused(str):
    """An expected refusal: a part of its message."""


CHATML = "<|im_end|>\n"
LLAMA = "<|eot_id|>"
GEMMA = "<end_of_turn>\n"
PHI = "<|end|>\n"
R1_EOS = "<｜end▁of▁sentence｜>"
LLAMA_TOOL_CALL = '{"name": "weather", "parameters": {"city": "Paris"}}' + LLAMA
QWEN_TOOL_CALL = '<tool_call>\n{"name": "weather", "arguments": {"city": "Paris"}}\n</tool_call>' + CHATML
EMPTY_THINK = "<think>\n\n</think>\n\n"
HARMONY_FINAL = "<|channel|>final<|message|>"

EXPECTED: dict[str, dict[str, list[str] | Refused]] = {
    "llama-3.1-8b-instruct": {
        "system": [f"Hello!{LLAMA}", f"Paris.{LLAMA}"],
        "no_system": [f"Hello there.{LLAMA}", f"Madrid.{LLAMA}"],  # | trim
        "tools": [LLAMA_TOOL_CALL, f"Sunny, 20C.{LLAMA}"],
        "reasoning": Refused(NO_REASONING),
        "weights": [f"<|start_header_id|>user<|end_header_id|>\n\nHi{LLAMA}", f"Paris.{LLAMA}"],
    },
    "qwen2.5-7b-instruct": {
        "system": [f"Hello!{CHATML}", f"Paris.{CHATML}"],
        "no_system": [f" Hello there. {CHATML}", f"Madrid.{CHATML}"],
        "tools": [QWEN_TOOL_CALL, f"Sunny, 20C.{CHATML}"],
        "reasoning": Refused(NO_REASONING),
        "weights": [f"<|im_start|>user\nHi{CHATML}", f"Paris.{CHATML}"],
    },
    # Qwen3 writes a <think> block into assistant turns after the last user query (empty when there
    # is no reasoning) and drops earlier reasoning: trained as rendered.
    "qwen3-0.6b": {
        "system": [f"Hello!{CHATML}", f"{EMPTY_THINK}Paris.{CHATML}"],
        "no_system": [f" Hello there. {CHATML}", f"{EMPTY_THINK}Madrid.{CHATML}"],
        "tools": [QWEN_TOOL_CALL, f"{EMPTY_THINK}Sunny, 20C.{CHATML}"],
        "reasoning": [f"<think>\nAdd them.\n</think>\n\n4{CHATML}"],
        "weights": [f"<|im_start|>user\nHi{CHATML}", f"{EMPTY_THINK}Paris.{CHATML}"],
    },
    "gemma-2-2b-it": {
        "system": Refused(NO_SYSTEM),
        "no_system": [f"Hello there.{GEMMA}", f"Madrid.{GEMMA}"],
        "tools": Refused(ALTERNATE),
        "reasoning": Refused(NO_REASONING),
        "weights": Refused(NO_SYSTEM),
    },
    # Gemma 3 writes the system prompt into the first user turn, so that turn carries it.
    "gemma-3-1b-it": {
        "system": [f"Hello!{GEMMA}", f"Paris.{GEMMA}"],
        "no_system": [f"Hello there.{GEMMA}", f"Madrid.{GEMMA}"],
        "tools": Refused(ALTERNATE),
        "reasoning": Refused(NO_REASONING),
        "weights": [f"<start_of_turn>user\nBe brief.\n\nHi{GEMMA}", f"Paris.{GEMMA}"],
    },
    # No role header: the body starts after [/INST], with the template's own space. The system
    # prompt goes into the last user turn only, so a conversation ending in an assistant turn has
    # none; the system message's own turn is just <s>.
    "mistral-7b-instruct-v0.3": {
        "system": [" Hello!</s>", " Paris.</s>"],
        "no_system": [" Hello there.</s>", " Madrid.</s>"],
        "tools": ['[TOOL_CALLS] [{"name": "weather", "arguments": {"city": "Paris"}, "id": "call12345"}]</s>',
                  " Sunny, 20C.</s>"],
        "reasoning": Refused(NO_REASONING),
        "weights": ["[INST] Hi[/INST]", " Paris.</s>"],
    },
    # Phi-3 ends a conversation without a generation prompt with EOS: the last turn trains it.
    "phi-3-mini-4k-instruct": {
        "system": [f"Hello!{PHI}", f"Paris.{PHI}<|endoftext|>"],
        "no_system": [f" Hello there. {PHI}", f"Madrid.{PHI}<|endoftext|>"],
        "tools": Refused(NO_TOOL_CALLS),
        "reasoning": Refused(NO_REASONING),
        "weights": [f"<|user|>\nHi{PHI}", f"Paris.{PHI}<|endoftext|>"],
    },
    "phi-3.5-mini-instruct": {
        "system": [f"Hello!{PHI}", f"Paris.{PHI}<|endoftext|>"],
        "no_system": [f" Hello there. {PHI}", f"Madrid.{PHI}<|endoftext|>"],
        "tools": Refused(NO_TOOL_CALLS),
        "reasoning": Refused(NO_REASONING),
        "weights": [f"<|user|>\nHi{PHI}", f"Paris.{PHI}<|endoftext|>"],
    },
    "smollm2-instruct": {
        "system": [f"Hello!{CHATML}", f"Paris.{CHATML}"],
        "no_system": [f" Hello there. {CHATML}", f"Madrid.{CHATML}"],
        "tools": Refused(NO_TOOL_CALLS),
        "reasoning": Refused(NO_REASONING),
        "weights": [f"<|im_start|>user\nHi{CHATML}", f"Paris.{CHATML}"],
    },
    # The prompt after a tool result is <｜tool▁outputs▁end｜>, so it is not trained; the template
    # reads no reasoning field and strips <think> from contents.
    "deepseek-r1-distill-llama-8b": {
        "system": [f"Hello!{R1_EOS}", f"Paris.{R1_EOS}"],
        "no_system": [f" Hello there. {R1_EOS}", f"Madrid.{R1_EOS}"],
        "tools": ["<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>weather\n"
                  '```json\n{"city": "Paris"}\n```<｜tool▁call▁end｜>', f"Sunny, 20C.{R1_EOS}"],
        "reasoning": Refused(NO_REASONING),
        "weights": ["<｜User｜>Hi", f"Paris.{R1_EOS}"],
    },
    # Phi-4 writes the assistant header into the user turn, so a trained user turn carries it.
    "phi-4": {
        "system": ["Hello!<|im_end|>", "Paris.<|im_end|>"],
        "no_system": [" Hello there. <|im_end|>", "Madrid.<|im_end|>"],
        "tools": Refused(NO_TOOL_CALLS),
        "reasoning": Refused(NO_REASONING),
        "weights": ["<|im_start|>user<|im_sep|>Hi<|im_end|><|im_start|>assistant<|im_sep|>", "Paris.<|im_end|>"],
    },
    # gpt-oss closes earlier turns with <|end|> and the last with <|return|>; a tool call ends with
    # <|call|> (the tool result's header repeats the function name, and is not trained); the final
    # turn's reasoning is an analysis message before the final one.
    "gpt-oss-120b": {
        "system": [f"{HARMONY_FINAL}Hello!<|end|>", f"{HARMONY_FINAL}Paris.<|return|>"],
        "no_system": [f"{HARMONY_FINAL} Hello there. <|end|>", f"{HARMONY_FINAL}Madrid.<|return|>"],
        "tools": [' to=functions.weather<|channel|>commentary json<|message|>{"city": "Paris"}<|call|>',
                  f"{HARMONY_FINAL}Sunny, 20C.<|return|>"],
        "reasoning": [f"<|channel|>analysis<|message|>Add them.<|end|><|start|>assistant{HARMONY_FINAL}4<|return|>"],
        "weights": ["<|start|>user<|message|>Hi<|end|>", f"{HARMONY_FINAL}Paris.<|return|>"],
    },
    # Qwen1.5 writes <|im_end|> after the last turn only before a generation prompt: earlier turns
    # train theirs, the last has none to train. Its system turn's <|im_end|> follows the same rule,
    # so a trained user turn after a system prompt starts with it.
    "qwen1.5-chat": {
        "system": [f"Hello!{CHATML}", "Paris."],
        "no_system": [f" Hello there. {CHATML}", "Madrid."],
        "tools": Refused(NO_TOOL_CALLS),
        "reasoning": Refused(NO_REASONING),
        "weights": [f"{CHATML}<|im_start|>user\nHi", "Paris."],
    },
    # Community templates written over several lines: the layout whitespace Hugging Face's
    # trim_blocks leaves is rendered, and only what follows the role header trains.
    "community-llama-3-instruct": {
        "system": [f"Hello!{LLAMA}\n\n", f"Paris.{LLAMA}\n\n"],
        "no_system": [f"Hello there.{LLAMA}\n\n", f"Madrid.{LLAMA}\n\n"],
        "tools": Refused(ALTERNATE),
        "reasoning": Refused(NO_REASONING),
        "weights": [f"    <|start_header_id|>user<|end_header_id|>\n\nHi{LLAMA}\n\n", f"Paris.{LLAMA}\n\n"],
    },
    # Its generation prompt follows a blank line that the middle of a conversation does not have.
    "community-gemma-it": {
        "system": [f"Hello!{GEMMA}\n\n", f"Paris.{GEMMA}\n\n"],
        "no_system": [f"Hello there.{GEMMA}\n\n", f"Madrid.{GEMMA}\n\n"],
        "tools": Refused(ALTERNATE),
        "reasoning": Refused(NO_REASONING),
        "weights": [f"\n\n    <start_of_turn>user\nBe brief.\n\nHi{GEMMA}\n\n", f"Paris.{GEMMA}\n\n"],
    },
}
EXPECTED["llama-3.2-3b-instruct"] = EXPECTED["llama-3.1-8b-instruct"]


def test_every_fixture_has_expectations() -> None:
    assert sorted(EXPECTED) == NAMES


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("name", NAMES)
def test_trained_spans_are_exactly_the_assistant_turns(tokenizers: dict[str, Any], name: str, case: str) -> None:
    tokenizer = tokenizers[name]
    messages, tools = CASES[case]
    expected = EXPECTED[name][case]
    if isinstance(expected, Refused):
        with pytest.raises(ConversationRefused) as refused:
            Renderer(tokenizer).conversation(messages, tools)
        assert expected in refused.value.message
        return
    marked = Renderer(tokenizer).marked_conversation(messages, tools)
    assert trained_text(tokenizer, marked.example) == expected
    if case != "weights":  # whatever the template does, no user, system or tool text trains by default
        trained = "".join(expected)
        assert not [m for m in messages if m["role"] != "assistant" and m["content"] in trained]


@pytest.mark.parametrize("name", NAMES)
def test_tokens_are_what_apply_chat_template_gives(tokenizers: dict[str, Any], name: str) -> None:
    tokenizer = tokenizers[name]
    for case in ("system", "no_system"):
        messages, _ = CASES[case]
        try:
            reference = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
        except Exception:  # noqa: BLE001 - the template refuses the case; the test above covers that
            continue
        assert Renderer(tokenizer).conversation(messages).input_ids == list(reference)


@pytest.mark.parametrize("name", ["qwen2.5-7b-instruct", "llama-3.1-8b-instruct", "mistral-7b-instruct-v0.3"])
def test_tool_arguments_given_as_json_strings_render_as_objects(tokenizers: dict[str, Any], name: str) -> None:
    # The templates tojson the arguments; given OpenAI's JSON string they would encode it twice.
    # Hugging Face and vLLM hand templates objects, so training sees what inference sees.
    tokenizer = tokenizers[name]
    messages, tools = CASES["tools"]
    as_objects = json.loads(json.dumps(messages))
    as_objects[1]["tool_calls"][0]["function"]["arguments"] = {"city": "Paris"}
    del as_objects[1]["content"]
    renderer = Renderer(tokenizer)
    assert renderer.conversation(messages, tools) == renderer.conversation(as_objects, tools)
    reference = tokenizer.apply_chat_template(as_objects, tools=tools, tokenize=False)
    assert renderer.chat.render(messages, tools) == reference


def test_train_on_inputs_trains_everything_but_weight_zero_turns(tokenizers: dict[str, Any]) -> None:
    tokenizer = tokenizers["qwen3-0.6b"]
    messages, _ = CASES["weights"]
    example = Renderer(tokenizer, True).conversation(messages)
    assert trained_text(tokenizer, example) == [
        f"<|im_start|>system\nBe brief.{CHATML}<|im_start|>user\nHi{CHATML}",
        f"<|im_start|>user\nCapital of France?{CHATML}<|im_start|>assistant\n{EMPTY_THINK}Paris.{CHATML}",
    ]


def test_reasoning_weight_one_trains_an_earlier_turn_as_rendered(tokenizers: dict[str, Any]) -> None:
    tokenizer = tokenizers["qwen3-0.6b"]
    messages = json.loads(json.dumps(CASES["reasoning"][0]))
    messages[1]["weight"] = 1
    example = Renderer(tokenizer).conversation(messages)
    # Qwen3 drops reasoning before the last user query; the weight trains what it renders.
    assert trained_text(tokenizer, example) == [f"Hello!{CHATML}", f"<think>\nAdd them.\n</think>\n\n4{CHATML}"]


def test_reasoning_written_into_content_is_parsed_by_qwen3(tokenizers: dict[str, Any]) -> None:
    tokenizer = tokenizers["qwen3-0.6b"]
    messages = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "<think>\nAdd.\n</think>\n\n4"}]
    assert trained_text(tokenizer, Renderer(tokenizer).conversation(messages)) == [
        f"<think>\nAdd.\n</think>\n\n4{CHATML}"]


def test_json_escaped_tool_results_are_located(tokenizers: dict[str, Any]) -> None:
    # Llama 3.1 writes a tool message's content through tojson: quotes and newlines come out
    # escaped, so the text is found by its escaped form.
    tokenizer = tokenizers["llama-3.1-8b-instruct"]
    messages, tools = CASES["tools"]
    messages = json.loads(json.dumps(messages))
    messages[2]["content"] = 'temp "20"\nsunny'
    marked = Renderer(tokenizer).marked_conversation(messages, tools)
    assert '"temp \\"20\\"\\nsunny"' in marked.text
    assert trained_text(tokenizer, marked.example) == [LLAMA_TOOL_CALL, f"Sunny, 20C.{LLAMA}"]


def test_consecutive_tool_results_split_inside_one_user_turn(tokenizers: dict[str, Any]) -> None:
    # Qwen wraps consecutive tool results in one user turn; weight 1 on the first trains its part.
    tokenizer = tokenizers["qwen2.5-7b-instruct"]
    call = {"type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}}
    messages = [
        {"role": "user", "content": "Paris and Rome?"},
        {"role": "assistant", "tool_calls": [
            call, {**call, "function": {**call["function"], "arguments": {"city": "Rome"}}}]},
        {"role": "tool", "content": "sunny", "weight": 1},
        {"role": "tool", "content": "rain"},
        {"role": "assistant", "content": "Sunny, then rain."},
    ]
    assert trained_text(tokenizer, Renderer(tokenizer).conversation(messages, TOOLS)) == [
        '<tool_call>\n{"name": "weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "weather", "arguments": {"city": "Rome"}}\n</tool_call>' + CHATML
        + "<|im_start|>user\n<tool_response>\nsunny\n</tool_response>",
        f"Sunny, then rain.{CHATML}",
    ]


GENERATION_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' }}"
    "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{% else %}{{ m['content'] + '<|im_end|>' }}{% endif %}{{ '\\n' }}{% endfor %}"
)


def test_generation_blocks_mark_the_assistant_bodies(tokenizers: dict[str, Any]) -> None:
    tokenizer = fixture_tokenizer_with(tokenizers["smollm2-instruct"], GENERATION_TEMPLATE)
    messages, _ = CASES["no_system"]
    # The block ends before the newline, so the newline is not trained.
    assert trained_text(tokenizer, Renderer(tokenizer).conversation(messages)) == [
        " Hello there. <|im_end|>", "Madrid.<|im_end|>"]


def fixture_tokenizer_with(tokenizer: Any, template: str) -> Any:
    import copy

    other = copy.deepcopy(tokenizer)
    other.chat_template = template
    return other


def test_a_template_that_rewrites_text_untraceably_is_refused(tokenizers: dict[str, Any]) -> None:
    template = ("{% for m in messages %}"
                "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] | upper + '<|im_end|>\\n' }}{% endfor %}")
    tokenizer = fixture_tokenizer_with(tokenizers["smollm2-instruct"], template)
    with pytest.raises(ConversationRefused, match="cannot trace back"):
        Renderer(tokenizer).conversation(CASES["no_system"][0])
    # Training every token needs no turns, so it works.
    assert Renderer(tokenizer, True).conversation(CASES["no_system"][0]).num_trained > 0


# A community Llama 3 template that writes a newline after every conversation. It closes no turn
# (turns end at <|eot_id|> when another message follows), so it is not trained.
LLAMA3_TRAILING_NEWLINE = (
    "{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + "
    "message['content'] + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}{{ '\\n' }}"
)
# Meta-Llama-3-8B-Instruct's first template (llama.cpp tests/test-chat-template.cpp, "Llama-3"):
# it writes the assistant header after every conversation, asked or not.
LLAMA3_ALWAYS_PROMPTS = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
)


def test_whitespace_a_template_leaves_at_its_end_is_not_trained(tokenizers: dict[str, Any]) -> None:
    tokenizer = fixture_tokenizer_with(tokenizers["llama-3.1-8b-instruct"], LLAMA3_TRAILING_NEWLINE)
    example = Renderer(tokenizer).conversation(CASES["system"][0])
    assert tokenizer.decode(example.input_ids).endswith("Paris.<|eot_id|>\n")
    assert trained_text(tokenizer, example) == [f"Hello!{LLAMA}", f"Paris.{LLAMA}"]


def test_a_template_that_always_prompts_ends_turns_at_eos(tokenizers: dict[str, Any]) -> None:
    # The header it writes after every conversation is not part of the last turn, nor is the start
    # of the next header (which user and assistant headers share) part of an earlier one.
    tokenizer = fixture_tokenizer_with(tokenizers["llama-3.1-8b-instruct"], LLAMA3_ALWAYS_PROMPTS)
    example = Renderer(tokenizer).conversation(CASES["system"][0])
    assert tokenizer.decode(example.input_ids).endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert trained_text(tokenizer, example) == [f"Hello!{LLAMA}", f"Paris.{LLAMA}"]
    weighted = Renderer(tokenizer).conversation(CASES["weights"][0])
    assert trained_text(tokenizer, weighted) == [
        f"<|start_header_id|>user<|end_header_id|>\n\nHi{LLAMA}", f"Paris.{LLAMA}"]


def test_a_template_that_always_prompts_is_refused_when_eos_does_not_close_turns(tokenizers: dict[str, Any]) -> None:
    tokenizer = fixture_tokenizer_with(tokenizers["llama-3.1-8b-instruct"], LLAMA3_ALWAYS_PROMPTS)
    tokenizer.add_special_tokens({"eos_token": "<|end_of_text|>"})  # the first Llama 3 tokenizers' EOS
    with pytest.raises(ConversationRefused, match="appends the assistant prompt even when no generation prompt"):
        Renderer(tokenizer).conversation(CASES["system"][0])


def test_preference_outputs_may_call_tools_and_reason(tokenizers: dict[str, Any]) -> None:
    tokenizer = tokenizers["qwen3-0.6b"]
    call = {"id": "call12345", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}
    record = {"input": {"messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": TOOLS},
              "preferred_output": [{"role": "assistant", "content": None, "tool_calls": [call]}],
              "non_preferred_output": [{"role": "assistant", "content": "No idea.", "reasoning": "Guess."}]}
    chosen, rejected = Renderer(tokenizer).preference(record)
    assert trained_text(tokenizer, chosen) == [f"{EMPTY_THINK}{QWEN_TOOL_CALL}"]
    assert trained_text(tokenizer, rejected) == [f"<think>\nGuess.\n</think>\n\nNo idea.{CHATML}"]



def test_a_tool_call_the_template_leaves_out_is_refused(tokenizers: dict[str, Any]) -> None:
    # gpt-oss renders only the first of several tool calls in one message: the second would be lost.
    tokenizer = tokenizers["gpt-oss-120b"]
    paris = {"type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}}
    rome = {"type": "function", "function": {"name": "weather", "arguments": {"city": "Rome"}}}
    messages = [
        {"role": "user", "content": "Paris and Rome?"},
        {"role": "assistant", "tool_calls": [paris, rome]},
        {"role": "tool", "content": "sunny"},
        {"role": "tool", "content": "rain"},
        {"role": "assistant", "content": "Sunny, then rain."},
    ]
    with pytest.raises(ConversationRefused, match=r"leaves out the tool calls of messages\[1\]"):
        Renderer(tokenizer).conversation(messages, TOOLS)
    one_call = [messages[0], {"role": "assistant", "tool_calls": [paris]}, messages[2], messages[4]]
    assert trained_text(tokenizer, Renderer(tokenizer).conversation(one_call, TOOLS))[0] == (
        ' to=functions.weather<|channel|>commentary json<|message|>{"city": "Paris"}<|call|>')
