"""Streamers for generate(): transformers' put()/end() protocol, text produced by the byte-safe
IncrementalDetokenizer (so a multi-byte character is never split and the streamed pieces join up to exactly
`tokenizer.decode(ids)`).

Protocol: the first put() after construction (or after end()) receives the prompt ids ([1, n] or [n]); each
later put() receives the new token(s) of one step; end() is called once generation finishes.
"""

from __future__ import annotations

from queue import Queue

from ..tokenizer.detokenizer import IncrementalDetokenizer

__all__ = ["BaseStreamer", "TextIteratorStreamer", "TextStreamer"]


class BaseStreamer:
    """Base class of streamers: generate() calls put(token_ids) per step and end() at the end."""

    def put(self, value):
        raise NotImplementedError()

    def end(self):
        raise NotImplementedError()


def _row(value) -> list[int]:
    """The ids of a put(): a [1, n] / [n] tensor (or list / int). A batch of more than one row is an error."""
    if hasattr(value, "shape") and hasattr(value, "tolist"):
        if len(value.shape) > 1:
            if value.shape[0] > 1:
                raise ValueError("TextStreamer only supports batch size 1")
            value = value[0]
        value = value.tolist()
    if isinstance(value, int):
        return [value]
    value = list(value)
    if value and isinstance(value[0], (list, tuple)):
        if len(value) > 1:
            raise ValueError("TextStreamer only supports batch size 1")
        value = list(value[0])
    return [int(v) for v in value]


class TextStreamer(BaseStreamer):
    """Print the generated text to stdout as it becomes final (flushing each piece).

    `skip_prompt=True` drops the first put() (the prompt); `decode_kwargs` (e.g. skip_special_tokens=True) go to
    the tokenizer's decode. Subclasses may override `on_finalized_text(text, stream_end)`.
    """

    def __init__(self, tokenizer, skip_prompt: bool = False, **decode_kwargs):
        self.tokenizer = tokenizer
        self.skip_prompt = skip_prompt
        self.decode_kwargs = decode_kwargs
        self.next_tokens_are_prompt = True
        self._detokenizer = self._new_detokenizer()

    def _new_detokenizer(self) -> IncrementalDetokenizer:
        kwargs = dict(self.decode_kwargs)
        skip_special = kwargs.pop("skip_special_tokens", False)
        return IncrementalDetokenizer(self.tokenizer, skip_special_tokens=skip_special, **kwargs)

    def put(self, value) -> None:
        ids = _row(value)
        if self.skip_prompt and self.next_tokens_are_prompt:
            self.next_tokens_are_prompt = False
            return
        self.next_tokens_are_prompt = False
        text = self._detokenizer.add(ids)
        if text:
            self.on_finalized_text(text)

    def end(self) -> None:
        """Emit what is left, signal the end of the stream, and get ready for another generation."""
        text = self._detokenizer.flush()
        self._detokenizer = self._new_detokenizer()
        self.next_tokens_are_prompt = True
        self.on_finalized_text(text, stream_end=True)

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        print(text, flush=True, end="" if not stream_end else None)


class TextIteratorStreamer(TextStreamer):
    """Queue the text pieces for another thread to iterate over (`for piece in streamer`).

    `timeout` (seconds) bounds each wait on the queue; when it expires the iterator raises queue.Empty, as
    transformers' does (useful when generate() runs in a thread that may fail).
    """

    def __init__(self, tokenizer, skip_prompt: bool = False, timeout: float | None = None, **decode_kwargs):
        super().__init__(tokenizer, skip_prompt, **decode_kwargs)
        self.text_queue: Queue = Queue()
        self.stop_signal = None
        self.timeout = timeout

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.text_queue.put(text, timeout=self.timeout)
        if stream_end:
            self.text_queue.put(self.stop_signal, timeout=self.timeout)

    def __iter__(self):
        return self

    def __next__(self) -> str:
        value = self.text_queue.get(timeout=self.timeout)
        if value == self.stop_signal:
            raise StopIteration()
        return value
