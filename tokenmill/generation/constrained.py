"""Structured output: a LogitsProcessor that only lets through tokens keeping the text inside a JSON schema,
regular expression, choice list or grammar (Lark, or GBNF as llama.cpp writes it).

The grammar engine is llguidance (Earley parser over token tries, in Rust): it compiles a new schema in about a
millisecond and computes a 49k-token mask in ~0.1 ms typical, which suits a server where each request brings
its own schema. Each generated row keeps a matcher; rows are re-synchronised from input_ids on every call, so
the processor follows beam reordering and speculative decoding's rollbacks.
"""

from __future__ import annotations

import json
import threading

import torch

from .logits_process import LogitsProcessor

_BIT_SHIFTS = torch.arange(32, dtype=torch.int32)
_TOKENIZER_CACHE: dict[tuple[int, int], tuple[object, object]] = {}  # (id(tokenizer), vocab) → (tokenizer, LLTokenizer)
_CACHE_LOCK = threading.Lock()


def _llguidance():
    try:
        import llguidance
        import llguidance.torch  # noqa: F401  (bitmask helpers)
    except ImportError as error:  # an optional dependency: only structured output needs it
        raise ImportError("structured output needs the grammar engine llguidance: pip install llguidance") from error
    return llguidance


def _tokenizer_json(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    if not hasattr(backend, "to_str"):
        raise TypeError(f"structured output needs a fast (tokenizers-backed) tokenizer, got {type(tokenizer).__name__}")
    return backend.to_str()


def grammar_tokenizer(tokenizer, vocab_size: int, eos_token_ids: list[int]):
    """llguidance's view of a tokenizer (built once per tokenizer: ~1 s for a 49k vocabulary)."""
    ll = _llguidance()
    key = (id(tokenizer), vocab_size)
    with _CACHE_LOCK:
        cached = _TOKENIZER_CACHE.get(key)
        if cached is None:
            cached = (tokenizer, ll.LLTokenizer(_tokenizer_json(tokenizer), n_vocab=vocab_size,
                                                eos_token=list(eos_token_ids)))
            _TOKENIZER_CACHE[key] = cached
    return cached[1]


def json_schema_grammar(schema, compact: bool = True) -> str:
    """`compact` forbids free whitespace between JSON tokens (small models otherwise wander in it)."""
    ll = _llguidance()
    if not isinstance(schema, (str, dict)):
        raise TypeError(f"a JSON schema must be a dict or a JSON string, got {type(schema).__name__}")
    overrides = {"whitespace_flexible": False} if compact else None
    return ll.LLMatcher.grammar_from_json_schema(schema, overrides=overrides)


def regex_grammar(pattern: str) -> str:
    return _llguidance().LLMatcher.grammar_from_regex(pattern)


def choice_grammar(choices) -> str:
    options = list(choices)
    if not options or not all(isinstance(option, str) and option for option in options):
        raise ValueError("a choice list needs at least one non-empty string, got " + repr(options))
    return _llguidance().LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(o) for o in options))


def text_grammar(grammar: str) -> str:
    """A Lark grammar (llguidance's dialect), or GBNF when it uses `::=`."""
    ll = _llguidance()
    if "::=" in grammar:
        from llguidance.gbnf_to_lark import gbnf_to_lark

        grammar = gbnf_to_lark(grammar)
    return ll.LLMatcher.grammar_from_lark(grammar)


GRAMMAR_KINDS = {"json_schema": json_schema_grammar, "regex": regex_grammar, "choice": choice_grammar,
                 "grammar": text_grammar}


def unpack_bitmask(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """llguidance's packed int32 words [rows, ceil(V/32)] → bool allowed [rows, V]."""
    return ((bitmask[:, :, None] >> _BIT_SHIFTS) & 1).bool().flatten(1)[:, :vocab_size]


class _RowMatcher:
    """One row's matcher, re-synchronised from the row's generated ids on every call.

    `consumed` is every token seen; the matcher holds only its first `accepted` (the ones the grammar allows):
    a row that went off the grammar (a -inf beam, a rejected draft) or finished is offered only eos.
    """

    def __init__(self, new_matcher):
        self.new_matcher = new_matcher
        self.matcher = new_matcher()
        self.consumed: list[int] = []
        self.accepted = 0

    @property
    def off_track(self) -> bool:
        return self.accepted < len(self.consumed)

    def _rewind(self, common: int) -> None:
        if common < self.accepted:
            if not self.matcher.rollback(self.accepted - common):
                self.matcher = self.new_matcher()  # rollback refused: replay the kept prefix on a fresh matcher
                self.accepted = self.matcher.try_consume_tokens(self.consumed[:common])
            else:
                self.accepted = common
        self.consumed = self.consumed[:common]

    def sync(self, generated: list[int]) -> None:
        common = 0
        for seen, new in zip(self.consumed, generated):
            if seen != new:
                break
            common += 1
        if common < len(self.consumed):
            self._rewind(common)
        for token in generated[len(self.consumed):]:
            # try_consume_tokens refuses a token without putting the matcher in its permanent error state
            if not self.off_track and not self.matcher.is_stopped():
                self.accepted += self.matcher.try_consume_tokens([token])
            self.consumed.append(token)


class StructuredOutputProcessor(LogitsProcessor):
    """Mask every token that would leave the grammar. Build with `for_json_schema`, `for_regex`, `for_choice`,
    `for_grammar` (or `from_spec(kind, value, ...)`)."""

    def __init__(self, grammar: str, tokenizer, vocab_size: int, eos_token_ids, prompt_length: int | None = None):
        ll = _llguidance()
        eos = [eos_token_ids] if isinstance(eos_token_ids, int) else list(eos_token_ids or [])
        if not eos:
            raise ValueError("structured output needs the model's eos token id(s) to end the constrained text")
        self.ll_tokenizer = grammar_tokenizer(tokenizer, vocab_size, eos)
        problem = ll.LLMatcher.validate_grammar(grammar, self.ll_tokenizer)
        if problem and not problem.startswith("WARNING"):
            raise ValueError(f"invalid structured-output grammar: {problem}")
        self.grammar, self.vocab_size, self.eos = grammar, vocab_size, eos
        self.prompt_length = prompt_length  # None: the first call's input length
        self.rows: list[_RowMatcher] = []

    @classmethod
    def from_spec(cls, kind: str, value, tokenizer, vocab_size: int, eos_token_ids, **kwargs):
        if kind not in GRAMMAR_KINDS:
            raise ValueError(f"unknown structured-output kind {kind!r}; use one of {sorted(GRAMMAR_KINDS)}")
        return cls(GRAMMAR_KINDS[kind](value), tokenizer, vocab_size, eos_token_ids, **kwargs)

    @classmethod
    def for_json_schema(cls, schema, tokenizer, vocab_size, eos_token_ids, **kwargs):
        return cls.from_spec("json_schema", schema, tokenizer, vocab_size, eos_token_ids, **kwargs)

    @classmethod
    def for_regex(cls, pattern, tokenizer, vocab_size, eos_token_ids, **kwargs):
        return cls.from_spec("regex", pattern, tokenizer, vocab_size, eos_token_ids, **kwargs)

    @classmethod
    def for_choice(cls, choices, tokenizer, vocab_size, eos_token_ids, **kwargs):
        return cls.from_spec("choice", choices, tokenizer, vocab_size, eos_token_ids, **kwargs)

    @classmethod
    def for_grammar(cls, grammar, tokenizer, vocab_size, eos_token_ids, **kwargs):
        return cls.from_spec("grammar", grammar, tokenizer, vocab_size, eos_token_ids, **kwargs)

    def _row(self, index: int) -> _RowMatcher:
        ll = _llguidance()
        while len(self.rows) <= index:
            self.rows.append(_RowMatcher(lambda: ll.LLMatcher(self.ll_tokenizer, self.grammar, log_level=0)))
        return self.rows[index]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        ll = _llguidance()
        if self.prompt_length is None:
            self.prompt_length = input_ids.shape[1]
        if scores.shape[-1] < self.vocab_size:
            raise ValueError(f"scores cover {scores.shape[-1]} tokens but the grammar was built for {self.vocab_size}")
        bitmask = ll.torch.allocate_token_bitmask(input_ids.shape[0], self.vocab_size)
        only_eos = torch.zeros(input_ids.shape[0], dtype=torch.bool)
        for index, row_ids in enumerate(input_ids[:, self.prompt_length:].tolist()):
            row = self._row(index)
            row.sync(row_ids)
            if row.off_track:
                only_eos[index] = True
            else:
                ll.torch.fill_next_token_bitmask(row.matcher, bitmask, index)
        allowed = unpack_bitmask(bitmask, self.vocab_size)
        if bool(only_eos.any()):
            allowed[only_eos] = False
            allowed[only_eos, self.eos[0]] = True
        if scores.shape[-1] > self.vocab_size:  # embedding rows past the tokenizer's vocabulary: never allowed
            allowed = torch.nn.functional.pad(allowed, (0, scores.shape[-1] - self.vocab_size), value=False)
        return scores.masked_fill(~allowed.to(scores.device), float("-inf"))
