"""Per-sequence text: byte-safe incremental detokenization and stop-string handling.

Text is decoded from the whole output so multi-token characters come out whole; a trailing U+FFFD means
an incomplete UTF-8 sequence and is held back until the next token completes it. Text that could still
turn into a stop string is also held back, so a stream never shows a stop string it then retracts.
"""

from __future__ import annotations

REPLACEMENT = "\ufffd"


class SequenceText:
    def __init__(self, tokenizer, stop: list[str], skip_special_tokens: bool, include_stop: bool):
        self.tokenizer = tokenizer
        self.stop = stop
        self.skip_special_tokens = skip_special_tokens
        self.include_stop = include_stop
        self.text = ""  # decoded so far (safe characters only)
        self.emitted = 0  # characters of `text` already handed out
        self.stopped_by: str | None = None

    def add(self, output_token_ids: list[int]) -> None:
        """Re-decode after new tokens; sets `stopped_by` when a stop string appears."""
        if self.stopped_by is not None:
            return
        decoded = self.tokenizer.decode(output_token_ids, skip_special_tokens=self.skip_special_tokens)
        while decoded.endswith(REPLACEMENT):
            decoded = decoded[:-1]
        if len(decoded) < len(self.text) or not decoded.startswith(self.text):
            # a later token changed earlier characters (rare merges); keep what was already emitted
            decoded = self.text[: self.emitted] + decoded[self.emitted:] if len(decoded) >= self.emitted else self.text
        search_from = max(0, len(self.text) - max((len(s) for s in self.stop), default=0))
        self.text = decoded
        for stop in self.stop:
            found = self.text.find(stop, search_from)
            if found != -1:
                self.stopped_by = stop
                self.text = self.text[: found + (len(stop) if self.include_stop else 0)]
                break

    def finish(self, output_token_ids: list[int]) -> None:
        """At the end, flush everything, including a final incomplete character as U+FFFD."""
        if self.stopped_by is None:
            self.text = self.tokenizer.decode(output_token_ids, skip_special_tokens=self.skip_special_tokens)

    def take_delta(self, final: bool) -> str:
        """New text safe to show: while running, withhold a tail that may begin a stop string."""
        end = len(self.text)
        if not final and self.stopped_by is None and self.stop:
            end = max(self.emitted, end - self._stop_prefix_overlap())
        delta = self.text[self.emitted:end]
        self.emitted = end
        return delta

    def _stop_prefix_overlap(self) -> int:
        longest = 0
        for stop in self.stop:
            for size in range(min(len(stop) - 1, len(self.text)), 0, -1):
                if self.text.endswith(stop[:size]):
                    longest = max(longest, size)
                    break
        return longest
