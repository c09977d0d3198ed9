"""Byte-safe incremental detokenization: token ids in, finished text out, one piece at a time.

Decoding token by token breaks two ways: a character split across tokens (byte-level BPE, byte-fallback) decodes
as U+FFFD until its last byte arrives, and decoders that look at neighbours (SentencePiece drops the leading space
of the first token it sees) decode a lone token differently from the same token in context. So each step decodes
a short window twice — the already-emitted *context* tokens, and context + pending tokens — and emits the
difference; the window then slides forward. Text whose decode ends in U+FFFD is held back until the character
completes (or until `flush()`). Every call costs O(window), independent of how long the sequence is.
"""

from __future__ import annotations

from collections.abc import Iterable

REPLACEMENT_CHAR = "\ufffd"
# context tokens kept before the first new token when a prompt is given (enough for any decoder's look-behind)
PROMPT_CONTEXT_TOKENS = 5


def _as_id_list(token_ids) -> list[int]:
    if hasattr(token_ids, "tolist"):
        token_ids = token_ids.tolist()
    if isinstance(token_ids, int):
        return [token_ids]
    token_ids = list(token_ids)
    if token_ids and isinstance(token_ids[0], (list, tuple)):  # [[...]]: a batch of one
        if len(token_ids) != 1:
            raise ValueError(f"IncrementalDetokenizer decodes one sequence; got a batch of {len(token_ids)}")
        token_ids = list(token_ids[0])
    return [int(t) for t in token_ids]


class IncrementalDetokenizer:
    """Turn a stream of token ids into text pieces whose concatenation equals `tokenizer.decode(all_ids)`.

    `add(ids)` returns the text that became final with these ids ("" while a character is incomplete);
    `flush()` returns whatever is still held back. With `prompt_ids`, the prompt serves as decoding context but is
    never emitted. `decode_kwargs` (e.g. clean_up_tokenization_spaces) go to every `tokenizer.decode` call.
    """

    def __init__(self, tokenizer, skip_special_tokens: bool = False, prompt_ids: Iterable[int] | None = None,
                 **decode_kwargs):
        self.tokenizer = tokenizer
        self.decode_kwargs = dict(decode_kwargs, skip_special_tokens=skip_special_tokens)
        self.token_ids: list[int] = []
        self.prefix_offset = 0  # start of the decoding window (context tokens, already emitted)
        self.read_offset = 0  # first token whose text has not been emitted yet
        if prompt_ids is not None:
            self.token_ids = _as_id_list(prompt_ids)
            self.read_offset = len(self.token_ids)
            self.prefix_offset = max(0, self.read_offset - PROMPT_CONTEXT_TOKENS)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, **self.decode_kwargs) if ids else ""

    def _step(self, final: bool) -> str:
        ids = self.token_ids
        if self.read_offset >= len(ids):
            return ""
        context = self._decode(ids[self.prefix_offset:self.read_offset])
        text = self._decode(ids[self.prefix_offset:])
        if not final and (len(text) <= len(context) or text.endswith(REPLACEMENT_CHAR)):
            return ""  # nothing new yet, or a character is still incomplete: wait for more tokens
        # the window's text normally extends its context; if a decoder rewrote the boundary, fall back to the
        # longest common prefix so that no emitted character is ever duplicated
        if text.startswith(context):
            start = len(context)
        else:
            start = 0
            while start < min(len(context), len(text)) and context[start] == text[start]:
                start += 1
        piece = text[start:]
        self.prefix_offset = self.read_offset
        self.read_offset = len(ids)
        return piece

    def add(self, token_ids) -> str:
        """Append token id(s) (an int, a list, or a 1D / [1, n] tensor); return the newly finalized text."""
        self.token_ids.extend(_as_id_list(token_ids))
        return self._step(final=False)

    def flush(self) -> str:
        """Return all text not yet emitted, even an incomplete trailing character (as decode would show it)."""
        return self._step(final=True)

    def reset(self) -> None:
        self.token_ids = []
        self.prefix_offset = self.read_offset = 0
