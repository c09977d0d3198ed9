"""Reasoning split from the answer: `<think>…</think>` (Qwen3, DeepSeek-R1 and their templates), whole or while
streaming. `qwen3`: reasoning only inside the tags (or when the prompt already opened `<think>`); `deepseek_r1`:
the output starts inside the reasoning (its template opens the tag in the prompt), up to `</think>`."""

from __future__ import annotations

OPEN, CLOSE = "<think>", "</think>"
REASONING_PARSERS = ("qwen3", "deepseek_r1")


def check_reasoning_parser(name: str) -> str:
    if name not in (*REASONING_PARSERS, "none", "auto"):
        raise ValueError(f"unknown reasoning parser {name!r}; use one of {[*REASONING_PARSERS, 'none', 'auto']}")
    return name


def detect_reasoning_parser(template: str | None) -> str | None:
    """`qwen3` when the chat template speaks `<think>` (either style then parses right), else None."""
    return "qwen3" if CLOSE in (template or "") else None


def thinking_state(parser: str | None, prompt_text: str) -> str | None:
    """Where generation starts: "open" (inside a reasoning: deepseek_r1, or the prompt opened `<think>`),
    "optional" (it may open one), None (no reasoning parsed, or the prompt already closed it)."""
    prompt_end = prompt_text.rstrip()
    if parser is None:
        return None
    if parser == "deepseek_r1" or prompt_end.endswith(OPEN):
        return "open"
    return None if prompt_end.endswith(CLOSE) else "optional"


def _partial_suffix(text: str, marker: str) -> int:
    """The length of the longest end of `text` that begins `marker` (held back until the next delta)."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0


class ReasoningStream:
    """Feeds text, returns (reasoning delta, answer delta); `finish` flushes what was held back."""

    def __init__(self, parser: str, prompt_text: str = ""):
        self.parser = parser
        self.pending = ""
        # the template opened the tag at the end of the prompt: generation starts inside it
        self.inside = thinking_state(parser, prompt_text) == "open"
        self.undecided = True  # the output may still open with `<think>` (dropped, even when already inside)
        self.done = False  # `</think>` seen: the rest is the answer
        self.trim = False  # the newlines templates put after `</think>` are dropped from the answer's start

    def feed(self, delta: str) -> tuple[str, str]:
        self.pending += delta
        if self.done:
            return self._take_all("answer")
        if self.undecided:
            stripped = self.pending.lstrip()
            if stripped.startswith(OPEN):
                self.pending, self.inside, self.undecided = stripped[len(OPEN):], True, False
            elif OPEN.startswith(stripped):
                return "", ""
            else:
                self.undecided = False
                if not self.inside:
                    self.done = True
                    return self._take_all("answer")
        index = self.pending.find(CLOSE)
        if index >= 0:
            reasoning, self.pending = self.pending[:index], self.pending[index + len(CLOSE):]
            self.done = self.trim = True
            return reasoning, self._take_all("answer")[1]
        keep = _partial_suffix(self.pending, CLOSE)
        reasoning, self.pending = self.pending[:len(self.pending) - keep], self.pending[len(self.pending) - keep:]
        return reasoning, ""

    def finish(self) -> tuple[str, str]:
        """A reasoning left open (the budget ran out) stays reasoning."""
        if self.inside and not self.done:
            return self._take_all("reasoning")
        return self._take_all("answer")

    def _take_all(self, kind: str) -> tuple[str, str]:
        if kind == "answer" and self.trim:
            self.pending = self.pending.lstrip("\n")
            self.trim = not self.pending
        text, self.pending = self.pending, ""
        return (text, "") if kind == "reasoning" else ("", text)


def split_reasoning(parser: str, text: str, prompt_text: str = "") -> tuple[str, str]:
    """A finished text → (reasoning, answer); the same split the stream makes."""
    stream = ReasoningStream(parser, prompt_text)
    reasoning, answer = stream.feed(text)
    more_reasoning, more_answer = stream.finish()
    return reasoning + more_reasoning, answer + more_answer
