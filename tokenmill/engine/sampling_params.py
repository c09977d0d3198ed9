"""Per-request decoding parameters, validated up front so a bad value is an error before any compute."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .spec_params import SpeculativeConfig, speculative_config

# A positive temperature below this is greedy: softmax(logits / T) is then one-hot in float32 for any logit gap
# above 1e-3 (exp(-100) is below float32's smallest value), and at T -> 0 logits / T overflows to inf / NaN.
MIN_SAMPLING_TEMPERATURE = 1e-5
SEED_RANGE = (-2**63, 2**64)  # what torch.Generator.manual_seed accepts (negatives wrap modulo 2**64)
# sampling runs in float32: a parameter beyond its range becomes inf, a positive divisor below its smallest
# normal value becomes 0 or loses its precision, and the division then yields inf / NaN
FLOAT32_MAX = 3.4028234663852886e38
FLOAT32_TINY = 1.1754943508222875e-38


@dataclass
class SamplingParams:
    n: int = 1
    max_tokens: int | None = 16
    min_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: off
    min_p: float = 0.0
    typical_p: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None  # None: none; k >= 0: the chosen token's logprob and k alternatives
    prompt_logprobs: int | None = None
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    do_sample: bool | None = None  # None: sample iff temperature > 0
    # (kind, value): kind in json_schema | regex | choice | grammar (generation/constrained.py); None: free text
    structured_output: tuple[str, object] | None = None
    # vLLM's spellings of structured_output; at most one of them (or structured_output) may be set
    guided_json: dict | str | type | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    adapter: str | None = None  # the name of a LoRA adapter loaded on the model; None: the base model
    # prompt-lookup speculative decoding: {"method": "ngram", "num_speculative_tokens": k, ...} (spec_params.py);
    # None: the engine's default
    speculative: SpeculativeConfig | dict | int | None = None

    def __post_init__(self):
        self.structured_output = _structured_output_of(self)
        self.speculative = speculative_config(self.speculative)
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = [s for s in (self.stop or []) if s]
        self.stop_token_ids = list(self.stop_token_ids or [])
        if self.top_k in (None, -1):
            self.top_k = 0
        self.validate()

    def validate(self) -> None:
        for name in ("temperature", "top_p", "min_p", "typical_p", "presence_penalty", "frequency_penalty",
                     "repetition_penalty"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
            if abs(value) > FLOAT32_MAX:
                raise ValueError(f"{name} must be at most {FLOAT32_MAX:.4g} in magnitude (float32), got {value!r}")
        if any(not isinstance(v, (int, float)) or not math.isfinite(v) for v in (self.logit_bias or {}).values()):
            raise ValueError("logit_bias values must be finite numbers")
        checks = [
            (isinstance(self.n, int) and self.n >= 1, f"n must be an integer >= 1, got {self.n!r}"),
            (self.max_tokens is None or (isinstance(self.max_tokens, int) and self.max_tokens >= 1),
             f"max_tokens must be an integer, at least 1, got {self.max_tokens!r}"),
            (isinstance(self.min_tokens, int) and self.min_tokens >= 0,
             f"min_tokens must be >= 0, got {self.min_tokens!r}"),
            (self.temperature >= 0, f"temperature must be >= 0, got {self.temperature}"),
            (0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}"),
            (isinstance(self.top_k, int) and self.top_k >= 0, f"top_k must be -1, 0 or positive, got {self.top_k!r}"),
            (0 <= self.min_p <= 1, f"min_p must be in [0, 1], got {self.min_p}"),
            (0 < self.typical_p <= 1, f"typical_p must be in (0, 1], got {self.typical_p}"),
            (-2 <= self.presence_penalty <= 2, f"presence_penalty must be in [-2, 2], got {self.presence_penalty}"),
            (-2 <= self.frequency_penalty <= 2,
             f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty}"),
            (self.repetition_penalty >= FLOAT32_TINY, f"repetition_penalty must be >= {FLOAT32_TINY:.4g} (> 0 and "
             f"a normal float32: logits are divided by it), got {self.repetition_penalty}"),
            (self.logprobs is None or 0 <= self.logprobs <= 20, f"logprobs must be in [0, 20], got {self.logprobs}"),
            (self.seed is None or (isinstance(self.seed, int) and not isinstance(self.seed, bool)
                                   and SEED_RANGE[0] <= self.seed < SEED_RANGE[1]),
             f"seed must be an integer in [-2**63, 2**64), got {self.seed!r}"),
            (self.prompt_logprobs is None or 0 <= self.prompt_logprobs <= 20,
             f"prompt_logprobs must be in [0, 20], got {self.prompt_logprobs}"),
            (self.adapter is None or (isinstance(self.adapter, str) and self.adapter != ""),
             f"adapter must be an adapter's name or None, got {self.adapter!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        if self.structured_output is not None:
            check_structured_output(self.structured_output)

    @property
    def sampled(self) -> bool:
        """Whether tokens are drawn; a temperature below MIN_SAMPLING_TEMPERATURE is greedy (its limit)."""
        hot = self.temperature >= MIN_SAMPLING_TEMPERATURE
        return hot if self.do_sample is None else self.do_sample and hot

    @property
    def needs_history(self) -> bool:
        """Whether the logits depend on tokens already produced (penalties)."""
        return (self.presence_penalty != 0 or self.frequency_penalty != 0 or self.repetition_penalty != 1
                or self.min_tokens > 0)


GUIDED_KINDS = {"guided_json": "json_schema", "guided_regex": "regex", "guided_choice": "choice",
                "guided_grammar": "grammar"}


def _structured_output_of(params: SamplingParams):
    """The one (kind, value) spec from structured_output or vLLM's guided_* fields; two different ones are refused
    (the same one twice is what dataclasses.replace hands back)."""
    guided = [(name, getattr(params, name)) for name in GUIDED_KINDS if getattr(params, name) is not None]
    if len(guided) > 1:
        raise ValueError(f"set one structured-output constraint, not {len(guided)}: "
                         f"{', '.join(name for name, _ in guided)}")
    if not guided:
        return params.structured_output
    name, value = guided[0]
    if name == "guided_json" and hasattr(value, "model_json_schema"):  # a pydantic model class, as vLLM takes
        value = value.model_json_schema()
    spec = (GUIDED_KINDS[name], value)
    if params.structured_output is not None and tuple(params.structured_output) != spec:
        raise ValueError(f"set one structured-output constraint, not both {name} and structured_output")
    return spec


def check_structured_output(spec) -> None:
    """Compile and check a (kind, value) spec without a tokenizer, so a bad schema fails before any compute."""
    from ..generation.constrained import GRAMMAR_KINDS

    if not (isinstance(spec, (tuple, list)) and len(spec) == 2):
        raise ValueError(f"structured_output must be a (kind, value) pair, got {spec!r}")
    kind, value = spec
    if kind not in GRAMMAR_KINDS:
        raise ValueError(f"unknown structured-output kind {kind!r}; use one of {sorted(GRAMMAR_KINDS)}")
    if kind in ("regex", "grammar") and not (isinstance(value, str) and value):
        raise ValueError(f"a structured-output {kind} must be a non-empty string, got {value!r}")
    try:
        grammar = GRAMMAR_KINDS[kind](value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"invalid {kind} for structured output: {error}") from None
    import llguidance  # importable: compiling the grammar above needed it

    problem = llguidance.LLMatcher.validate_grammar(grammar)
    if problem and not problem.startswith("WARNING"):
        raise ValueError(f"invalid {kind} for structured output: {problem.strip()}")
