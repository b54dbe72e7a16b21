"""Loss masking on hand-written examples: which text is trained, span by span."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.training.samples import write_jsonl
from tunery.datasets import DatasetFormat
from tunery.errors import TrainingFailed
from tunery.training.data.dataset import load_examples
from tunery.training.data.render import IGNORE, Example, Renderer, from_pretokenized, truncate

BOS, EOS, END = "<|startoftext|>", "<|endoftext|>", "<|im_end|>\n"


def trained_spans(tokenizer: Any, example: Example) -> list[str]:
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


def render(tokenizer: Any, record: dict[str, Any], fmt: DatasetFormat, train_on_inputs: Any = "auto") -> Example:
    return Renderer(tokenizer, train_on_inputs).render(record, fmt)


CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris."},
]


def test_conversation_auto_trains_assistant_turns_without_headers(tokenizer: Any) -> None:
    example = render(tokenizer, {"messages": CHAT}, DatasetFormat.CONVERSATION)
    assert tokenizer.decode(example.input_ids) == (
        f"{BOS}<|im_start|>system\nBe brief.{END}<|im_start|>user\nHi{END}<|im_start|>assistant\nHello!{END}"
        f"<|im_start|>user\nCapital of France?{END}<|im_start|>assistant\nParis.{END}"
    )
    assert trained_spans(tokenizer, example) == [f"Hello!{END}", f"Paris.{END}"]


def test_conversation_false_is_the_same_as_auto(tokenizer: Any) -> None:
    auto = render(tokenizer, {"messages": CHAT}, DatasetFormat.CONVERSATION, "auto")
    assert render(tokenizer, {"messages": CHAT}, DatasetFormat.CONVERSATION, False) == auto


def test_conversation_true_trains_everything(tokenizer: Any) -> None:
    example = render(tokenizer, {"messages": CHAT}, DatasetFormat.CONVERSATION, True)
    assert example.labels == example.input_ids


def test_weight_zero_masks_an_assistant_turn(tokenizer: Any) -> None:
    messages = [dict(m) for m in CHAT]
    messages[2]["weight"] = 0
    example = render(tokenizer, {"messages": messages}, DatasetFormat.CONVERSATION)
    assert trained_spans(tokenizer, example) == [f"Paris.{END}"]


def test_weight_one_trains_a_user_turn_whole(tokenizer: Any) -> None:
    messages = [dict(m) for m in CHAT]
    messages[1]["weight"] = 1
    example = render(tokenizer, {"messages": messages}, DatasetFormat.CONVERSATION)
    assert trained_spans(tokenizer, example) == [f"<|im_start|>user\nHi{END}", f"Hello!{END}", f"Paris.{END}"]


def test_weight_zero_masks_even_with_train_on_inputs(tokenizer: Any) -> None:
    messages = [dict(m) for m in CHAT]
    messages[4]["weight"] = 0
    example = render(tokenizer, {"messages": messages}, DatasetFormat.CONVERSATION, True)
    text = tokenizer.decode(example.input_ids)
    assert trained_spans(tokenizer, example) == [text.removesuffix(f"<|im_start|>assistant\nParis.{END}")]


def test_tools_and_tool_turns_are_not_trained(tokenizer: Any) -> None:
    call = {"type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}}
    tool = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}
    record = {
        "tools": [tool],
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "content": "sunny"},
            {"role": "assistant", "content": "Sunny."},
        ],
    }
    example = render(tokenizer, record, DatasetFormat.CONVERSATION)
    text = tokenizer.decode(example.input_ids)
    assert text.startswith(f"{BOS}<|im_start|>system\nYou can call these tools:\n")
    assert "<|im_start|>tool\nsunny" in text
    assert trained_spans(tokenizer, example) == [
        '<tool_call>{"name": "weather", "arguments": {"city": "Paris"}}</tool_call>' + END,
        f"Sunny.{END}",
    ]


def test_instruction_trains_the_completion_and_eos(tokenizer: Any) -> None:
    record = {"prompt": "Q: 2 + 2?\nA:", "completion": " 4"}
    example = render(tokenizer, record, DatasetFormat.INSTRUCTION)
    assert tokenizer.decode(example.input_ids) == f"{BOS}Q: 2 + 2?\nA: 4{EOS}"
    assert trained_spans(tokenizer, example) == [f" 4{EOS}"]
    assert render(tokenizer, record, DatasetFormat.INSTRUCTION, False) == example
    everything = render(tokenizer, record, DatasetFormat.INSTRUCTION, True)
    assert everything.labels == everything.input_ids == example.input_ids


@pytest.mark.parametrize("train_on_inputs", ["auto", False, True])
def test_text_trains_everything_whatever_train_on_inputs(tokenizer: Any, train_on_inputs: Any) -> None:
    example = render(tokenizer, {"text": "hello world"}, DatasetFormat.GENERAL, train_on_inputs)
    assert tokenizer.decode(example.input_ids) == f"{BOS}hello world{EOS}"
    assert example.labels == example.input_ids
    assert example.num_trained == len(example) - 1  # token 0 is never predicted


def test_pretokenized_rows_are_used_as_given() -> None:
    row = {"input_ids": [5, 6, 7, 8], "labels": [IGNORE, IGNORE, 7, 8]}
    assert from_pretokenized(row) == [Example([5, 6, 7, 8], [IGNORE, IGNORE, 7, 8])]
    assert from_pretokenized({"input_ids": [5, 6]}) == [Example([5, 6], [5, 6])]


def test_pretokenized_padding_is_dropped_and_packed_rows_are_split() -> None:
    padded = {"input_ids": [5, 6, 7, 0, 0], "attention_mask": [1, 1, 1, 0, 0], "labels": [5, 6, 7, IGNORE, IGNORE]}
    assert from_pretokenized(padded) == [Example([5, 6, 7], [5, 6, 7])]
    packed = {"input_ids": [5, 6, 7, 8, 9], "position_ids": [0, 1, 0, 1, 2]}
    assert from_pretokenized(packed) == [Example([5, 6], [5, 6]), Example([7, 8, 9], [7, 8, 9])]


def test_truncate_keeps_the_head() -> None:
    example = Example([1, 2, 3, 4], [IGNORE, 2, 3, 4])
    assert truncate(example, 4) == (example, False)
    assert truncate(example, 2) == (Example([1, 2], [IGNORE, 2]), True)


def test_load_examples_counts_truncated_and_dropped(tokenizer: Any, tmp_path: Path) -> None:
    long_prompt = "word " * 40
    rows = [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
        {"messages": [{"role": "user", "content": long_prompt}, {"role": "assistant", "content": "cut"}]},
    ]
    data = load_examples(write_jsonl(tmp_path / "d.jsonl", rows), "jsonl", Renderer(tokenizer), max_seq_length=24)
    assert (data.samples, data.truncated, data.dropped, len(data.examples)) == (2, 1, 1, 1)
    assert data.format is DatasetFormat.CONVERSATION
    assert data.lengths == [len(data.examples[0])]


def test_load_examples_fails_as_user_error_when_nothing_is_left(tokenizer: Any, tmp_path: Path) -> None:
    rows = [{"messages": [{"role": "user", "content": "word " * 40}, {"role": "assistant", "content": "x"}]}]
    with pytest.raises(TrainingFailed) as caught:
        load_examples(write_jsonl(tmp_path / "d.jsonl", rows), "jsonl", Renderer(tokenizer), max_seq_length=16)
    assert caught.value.user_error
    assert "all 1 samples of the training file were dropped" in caught.value.message
    assert "max_seq_length=16" in caught.value.message


def test_load_examples_reads_pretokenized_parquet(tokenizer: Any, tmp_path: Path) -> None:
    table = pa.table({"input_ids": [[1, 2, 3], [4, 5]], "labels": [[IGNORE, 2, 3], [IGNORE, IGNORE]]})
    pq.write_table(table, tmp_path / "d.parquet")
    data = load_examples(tmp_path / "d.parquet", "parquet", Renderer(tokenizer), max_seq_length=8)
    assert data.examples == [Example([1, 2, 3], [IGNORE, 2, 3])]
    assert (data.samples, data.dropped, data.format) == (2, 1, DatasetFormat.PRETOKENIZED)


def test_padded_parquet_rows_train_one_row_per_sequence_with_padding_masked(tokenizer: Any, tmp_path: Path) -> None:
    # Together's recipe for training without packing: pad every sample, attention_mask 0 and labels -100
    # on the padding. With packing=false each row is one sequence of its own; its padding is neither
    # attended to nor trained (tunery drops it and pads each batch to its longest row).
    from tunery.training.data.collate import collate
    from tunery.training.data.packing import epoch_batches

    width, rows = 10, []
    for n in (4, 7, 10):
        ids = list(range(5, 5 + n))
        rows.append({"input_ids": ids + [0] * (width - n), "attention_mask": [1] * n + [0] * (width - n),
                     "labels": [IGNORE] * 2 + ids[2:] + [IGNORE] * (width - n)})
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "padded.parquet")
    data = load_examples(tmp_path / "padded.parquet", "parquet", Renderer(tokenizer), max_seq_length=64)
    assert data.lengths == [4, 7, 10]
    batches = epoch_batches(data.lengths, batch_size=2, capacity=64, packing=False, seed=0, epoch=0)
    assert sorted(len(row) for batch in batches for row in batch) == [1, 1, 1]  # one sequence per row
    batch = collate([[data.examples[i] for i in row] for row in batches[0]], pad_id=0)
    for b, row in enumerate(batches[0]):
        example = data.examples[row[0]]
        assert batch.targets[b, len(example) - 1:].eq(IGNORE).all()  # padding and the last token: no target
        assert batch.targets[b, : len(example) - 1].tolist() == example.labels[1:]
    assert batch.num_targets == sum(data.examples[row[0]].num_trained for row in batches[0])
