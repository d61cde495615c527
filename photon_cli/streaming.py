"""Incremental detokenization and stop strings for streamed answers."""

from __future__ import annotations

from tokenizers import Tokenizer

REPLACEMENT = "\ufffd"


class TextStream:
    """Turn token ids into text pieces as they arrive, never splitting a UTF-8 character.

    A byte-level BPE token can end in the middle of a multi-byte character (emoji, CJK, accented
    letters). The decoded text then ends in U+FFFD; such text is held back until the next token
    completes the character. Only a short window of recent ids is re-decoded per token.
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix_offset = 0  # start of the window that is re-decoded
        self.read_offset = 0  # ids up to here have been emitted as text

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        emitted = self.tokenizer.decode(self.ids[self.prefix_offset:self.read_offset])
        window = self.tokenizer.decode(self.ids[self.prefix_offset:])
        if len(window) > len(emitted) and not window.endswith(REPLACEMENT):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return window[len(emitted):]
        return ""

    def flush(self) -> str:
        """Text still held back at the end of the stream (a truncated character decodes as U+FFFD)."""
        emitted = self.tokenizer.decode(self.ids[self.prefix_offset:self.read_offset])
        window = self.tokenizer.decode(self.ids[self.prefix_offset:])
        self.prefix_offset = self.read_offset = len(self.ids)
        return window[len(emitted):]


class StopMatcher:
    """Hold back text that could be the start of a stop string; report when one completes."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops = tuple(s for s in stops if s)
        self.pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """Return the part of `text` safe to show; after a stop string, return nothing more."""
        if self.stopped:
            return ""
        self.pending += text
        hits = [self.pending.find(s) for s in self.stops if s in self.pending]
        if hits:
            self.stopped = True
            out, self.pending = self.pending[:min(hits)], ""
            return out
        hold = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(self.pending)), 0, -1):
                if self.pending.endswith(stop[:n]):
                    hold = max(hold, n)
                    break
        out = self.pending[:len(self.pending) - hold]
        self.pending = self.pending[len(out):]
        return out

    def flush(self) -> str:
        out, self.pending = ("" if self.stopped else self.pending), ""
        return out
