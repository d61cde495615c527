"""Incremental detokenization and stop strings for streamed answers."""

from __future__ import annotations

from tokenizers import Tokenizer

REPLACEMENT = "\ufffd"


class TextStream:
    """Turn token ids into text pieces as they arrive, never splitting a UTF-8 character.

    A byte-level BPE token can end in the middle of a multi-byte character (emoji, CJK, accented
    letters); the decoded text then ends in U+FFFD. Such a cut character is held back until the
    token that completes it arrives, and every complete character before it is returned at once,
    so text appears token by token. Only the ids since the last character boundary are
    re-decoded per token.
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.window_start = 0  # ids before this index ended on a character boundary and are shown
        self.shown = 0  # characters of the current window already returned

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        window = self.tokenizer.decode(self.ids[self.window_start:])
        complete = window.rstrip(REPLACEMENT)
        piece = complete[self.shown:]
        if len(complete) == len(window):  # the window ends on a character boundary
            self.window_start, self.shown = len(self.ids), 0
        else:
            self.shown = max(self.shown, len(complete))
        return piece

    def flush(self) -> str:
        """Text still held back at the end of the stream.

        A character whose bytes were cut off (by max_tokens, a stop or an interrupt) is dropped
        rather than returned as U+FFFD.
        """
        window = self.tokenizer.decode(self.ids[self.window_start:])
        piece = window.rstrip(REPLACEMENT)[self.shown:]
        self.window_start, self.shown = len(self.ids), 0
        return piece


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
