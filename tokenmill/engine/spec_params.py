"""A request's speculative-decoding settings (vLLM's `speculative` spelling), checked up front."""

from __future__ import annotations

from dataclasses import dataclass

# a step runs 1 + k positions per speculating sequence: beyond 16, the rejected tail costs more than a hit saves
MAX_SPECULATIVE_TOKENS = 16
MAX_LOOKUP_NGRAM = 32
FIELDS = ("method", "num_speculative_tokens", "prompt_lookup_max", "prompt_lookup_min")
METHODS = ("ngram", "draft_model")  # prompt lookup; or the engine's draft model (engine/draft_model.py)


@dataclass(frozen=True)
class SpeculativeConfig:
    """Up to `num_speculative_tokens` drafts per step. method "ngram" (prompt lookup): tokens copied from after
    the latest earlier match of the sequence's last n tokens (n from prompt_lookup_max down to prompt_lookup_min);
    "draft_model": the engine's draft model's greedy continuation (the prompt_lookup fields are not read).
    num_speculative_tokens 0 turns speculation off for the request (overriding a server default)."""

    num_speculative_tokens: int
    prompt_lookup_max: int = 4
    prompt_lookup_min: int = 1
    method: str = "ngram"

    def __post_init__(self):
        def integer(value) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        checks = [
            (self.method in METHODS, f"speculative.method must be 'ngram' (prompt lookup) or 'draft_model' (the "
                                     f"server's draft model), got {self.method!r}"),
            (integer(self.num_speculative_tokens) and 0 <= self.num_speculative_tokens <= MAX_SPECULATIVE_TOKENS,
             f"speculative.num_speculative_tokens must be an integer in [0, {MAX_SPECULATIVE_TOKENS}], "
             f"got {self.num_speculative_tokens!r}"),
            (integer(self.prompt_lookup_max) and 1 <= self.prompt_lookup_max <= MAX_LOOKUP_NGRAM,
             f"speculative.prompt_lookup_max must be an integer in [1, {MAX_LOOKUP_NGRAM}], "
             f"got {self.prompt_lookup_max!r}"),
            (integer(self.prompt_lookup_min) and 1 <= self.prompt_lookup_min,
             f"speculative.prompt_lookup_min must be an integer >= 1, got {self.prompt_lookup_min!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        if self.prompt_lookup_min > self.prompt_lookup_max:
            raise ValueError(f"speculative.prompt_lookup_min ({self.prompt_lookup_min}) must not exceed "
                             f"speculative.prompt_lookup_max ({self.prompt_lookup_max})")

    @property
    def enabled(self) -> bool:
        return self.num_speculative_tokens > 0


def speculative_config(value) -> SpeculativeConfig | None:
    """A SpeculativeConfig from a dict of FIELDS, an int (the draft length), a config, or None."""
    if value is None or isinstance(value, SpeculativeConfig):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return SpeculativeConfig(num_speculative_tokens=value)
    if not isinstance(value, dict):
        raise ValueError(f"speculative must be an object with {', '.join(FIELDS)}, got {value!r}")
    unknown = sorted(set(value) - set(FIELDS))
    if unknown:
        raise ValueError(f"speculative: unknown field(s) {', '.join(map(str, unknown))}; known: {', '.join(FIELDS)}")
    if "num_speculative_tokens" not in value:
        raise ValueError("speculative.num_speculative_tokens is required")
    return SpeculativeConfig(**value)
