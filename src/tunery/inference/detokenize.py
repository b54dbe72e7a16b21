"""Turning a sequence's output tokens into text as they arrive, and cutting it at stop strings.

A token does not always decode to text on its own (a multi-byte character split over tokens, a
tokenizer that drops a word's leading space when decoding starts at it), so each step decodes a small
window that starts a few tokens back and emits only what the new token added (the approach of TGI
and vLLM). Text that could still become a stop string is held back until it cannot; the stop string
itself is never emitted.
"""

from __future__ import annotations

from typing import Any

REPLACEMENT = "\ufffd"  # what a partial UTF-8 sequence decodes to


class TextStream:
    def __init__(self, tokenizer: Any, stop: tuple[str, ...] = ()):
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.tokens: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0
        self.text = ""  # decoded so far, cut at a stop string once one is found
        self.emitted = 0  # characters of ``text`` already handed out
        self.stopped = False

    def push(self, token_id: int) -> str:
        """Add a generated token; returns the text that may be shown now (may be empty)."""
        if self.stopped:
            return ""
        self.tokens.append(token_id)
        self._read(final=False)
        return self._release(final=self.stopped)

    def flush(self) -> str:
        """The held-back text, once the sequence has ended (a partial character decodes as U+FFFD)."""
        if not self.stopped:
            self._read(final=True)
        return self._release(final=True)

    def _read(self, final: bool) -> None:
        before = self._decode(self.tokens[self.prefix_offset : self.read_offset])
        after = self._decode(self.tokens[self.prefix_offset :])
        if len(after) > len(before) and (final or not after.endswith(REPLACEMENT)):
            start = len(self.text)
            self.text += after[len(before) :]
            self.prefix_offset, self.read_offset = self.read_offset, len(self.tokens)
            self._cut_at_stop(start)

    def _decode(self, ids: list[int]) -> str:
        if not ids:
            return ""
        return str(self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False))

    def _cut_at_stop(self, new_from: int) -> None:
        if not self.stop:
            return
        window = max(0, new_from - self.hold)
        hits = [i for i in (self.text.find(s, window) for s in self.stop) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            self.stopped = True

    def _release(self, final: bool) -> str:
        end = len(self.text) if final else max(self.emitted, len(self.text) - self.hold)
        out = self.text[self.emitted : end]
        self.emitted = end
        return out
