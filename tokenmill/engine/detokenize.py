"""Per-sequence text: byte-safe incremental detokenization (the shared IncrementalDetokenizer) plus stop strings.

Text that could still turn into a stop string is held back, so a stream never shows a stop string it then
retracts.
"""

from __future__ import annotations

from ..tokenizer.detokenizer import IncrementalDetokenizer


class SequenceText:
    def __init__(self, tokenizer, stop: list[str], skip_special_tokens: bool, include_stop: bool):
        self.detokenizer = IncrementalDetokenizer(tokenizer, skip_special_tokens=skip_special_tokens)
        self.stop = stop
        self.include_stop = include_stop
        self.text = ""  # finalized text so far (complete characters only)
        self.emitted = 0  # characters of `text` already handed out
        self.fed = 0  # output tokens given to the detokenizer
        self.stopped_by: str | None = None

    def _feed(self, output_token_ids: list[int], final: bool) -> None:
        new_ids = output_token_ids[self.fed:]
        self.fed = len(output_token_ids)
        self.text += self.detokenizer.add(new_ids) if new_ids else ""
        if final:
            self.text += self.detokenizer.flush()

    def add(self, output_token_ids: list[int]) -> None:
        """Decode the new tokens; sets `stopped_by` when a stop string appears."""
        if self.stopped_by is not None:
            return
        search_from = max(0, len(self.text) - max((len(s) for s in self.stop), default=0))
        self._feed(output_token_ids, final=False)
        for stop in self.stop:
            found = self.text.find(stop, search_from)
            if found != -1:
                self.stopped_by = stop
                self.text = self.text[: found + (len(stop) if self.include_stop else 0)]
                break

    def finish(self, output_token_ids: list[int]) -> None:
        """At the end, flush everything, including a final incomplete character as U+FFFD."""
        if self.stopped_by is None:
            self._feed(output_token_ids, final=True)

    def take_delta(self, final: bool) -> str:
        """New text safe to show: while running, withhold a tail that may begin a stop string."""
        end = len(self.text)
        if not final and self.stopped_by is None and self.stop:
            end = max(self.emitted, end - self._stop_prefix_overlap())
        delta = self.text[self.emitted:end]
        self.emitted = end
        return delta

    def _stop_prefix_overlap(self) -> int:
        """The longest end of the text that begins some stop string."""
        return max((_overlap(self.text, stop) for stop in self.stop), default=0)


def _overlap(text: str, stop: str) -> int:
    """Length of the longest end of `text` that is a proper prefix of `stop`. Only positions holding stop's first
    character are tried (found by str.find), so typical text costs a few C-level scans, not one per length."""
    tail = text[len(text) - min(len(stop) - 1, len(text)):]
    start = tail.find(stop[0])
    while start != -1:
        if stop.startswith(tail[start:]):
            return len(tail) - start
        start = tail.find(stop[0], start + 1)
    return 0
