"""Request limits, decided in one place: does a prompt fit, and how many new tokens may it ask for.

The engine's limits come from its context length and KV pool; a server narrows them with its own settings
(`RequestLimits.narrowed`) and checks with the same `check_request`, so every API words a limit the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

# Per-request caps on what the engine does for a request at every step, so one request's parameters cannot slow
# every other request's steps: stop strings are searched in each new piece of text, stop token ids and logit
# bias entries are looked up or applied per token.
MAX_STOP_STRINGS = 16
MAX_STOP_STRING_CHARS = 256
MAX_STOP_TOKEN_IDS = 256
MAX_LOGIT_BIAS_ENTRIES = 1024


class RequestLimitError(ValueError):
    """A request beyond a limit; `param` names the request field at fault ("prompt", "max_tokens", "stop",
    "stop_token_ids", "logit_bias", "n")."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class RequestLimits:
    max_total_tokens: int  # prompt + new tokens
    max_input_tokens: int  # the prompt alone
    default_max_tokens: int | None = None  # new tokens when a request sets none; None: all the room left

    @classmethod
    def of_engine(cls, max_model_len: int, capacity_tokens: int) -> "RequestLimits":
        # a sequence must fit both the model's context and the KV pool (it cannot be preempted below itself)
        total = min(max_model_len, capacity_tokens)
        return cls(total, total - 1)

    def narrowed(self, max_total_tokens: int | None = None, max_input_tokens: int | None = None,
                 default_max_tokens: int | None = None) -> "RequestLimits":
        """These limits lowered by the given ones (None: keep); never raised."""
        total = min(self.max_total_tokens, max_total_tokens or self.max_total_tokens)
        prompt = min(self.max_input_tokens, total - 1, max_input_tokens or total - 1)
        return RequestLimits(total, prompt, default_max_tokens or self.default_max_tokens)


def check_request(prompt_len: int, max_tokens: int | None, limits: RequestLimits) -> int:
    """The request's effective max_tokens; RequestLimitError naming the numbers when it does not fit."""
    if prompt_len == 0:
        raise RequestLimitError("the prompt is empty (it encodes to zero tokens)", "prompt")
    if prompt_len > limits.max_input_tokens:
        raise RequestLimitError(f"the prompt has {prompt_len} tokens, more than the limit of "
                                f"{limits.max_input_tokens} input tokens", "prompt")
    room = limits.max_total_tokens - prompt_len
    if max_tokens is None:
        return room if limits.default_max_tokens is None else min(limits.default_max_tokens, room)
    if max_tokens < 1:
        raise RequestLimitError(f"max_tokens must be at least 1, got {max_tokens}", "max_tokens")
    if max_tokens > room:
        raise RequestLimitError(
            f"prompt tokens + max_tokens must be <= {limits.max_total_tokens}: the input has {prompt_len} tokens "
            f"and {max_tokens} new tokens were asked for ({prompt_len + max_tokens} in total, which exceeds the "
            f"limit of {limits.max_total_tokens} tokens)", "max_tokens")
    return max_tokens


def check_per_step_costs(stop: list[str], stop_token_ids: list[int], logit_bias: dict | None) -> None:
    """RequestLimitError when a request's stop list or logit bias is beyond the per-request caps above."""
    if len(stop) > MAX_STOP_STRINGS:
        raise RequestLimitError(f"at most {MAX_STOP_STRINGS} stop strings are allowed, got {len(stop)}", "stop")
    longest = max((len(s) for s in stop), default=0)
    if longest > MAX_STOP_STRING_CHARS:
        raise RequestLimitError(f"a stop string may have at most {MAX_STOP_STRING_CHARS} characters, got one "
                                f"of {longest}", "stop")
    if len(stop_token_ids) > MAX_STOP_TOKEN_IDS:
        raise RequestLimitError(f"at most {MAX_STOP_TOKEN_IDS} stop token ids are allowed, got "
                                f"{len(stop_token_ids)}", "stop_token_ids")
    if len(logit_bias or {}) > MAX_LOGIT_BIAS_ENTRIES:
        raise RequestLimitError(f"logit_bias may have at most {MAX_LOGIT_BIAS_ENTRIES} entries, got "
                                f"{len(logit_bias)}", "logit_bias")
