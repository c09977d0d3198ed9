"""What the engine reports per request after each step (cumulative state plus this step's delta)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .sequence import TokenLogprob


@dataclass
class CompletionOutput:
    index: int
    text: str  # everything generated so far (final text once finished)
    token_ids: list[int]
    delta_text: str  # new since the previous report
    delta_token_ids: list[int]
    delta_logprobs: list[TokenLogprob] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None  # "stop" | "length" | "abort" | "error"
    stop_reason: str | int | None = None  # the stop string or token that ended it
    seed: int | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    num_cached_tokens: int = 0
    prompt_logprobs: list[TokenLogprob | None] | None = None
    error: str | None = None
    prompt: str | None = None  # the prompt text when one was given (LLM.generate / LLM.chat), as in vLLM

    @property
    def num_generated_tokens(self) -> int:
        return sum(len(o.token_ids) for o in self.outputs)
