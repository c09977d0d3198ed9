"""TGI request bodies and their translation into SamplingParams, with TGI's validation rules."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ..engine.sampling_params import SamplingParams, check_structured_output
from ..engine.spec_params import speculative_config
from .errors import APIError

MAX_STOP_SEQUENCES = 4
MAX_BEST_OF = 4
MAX_TOP_N_TOKENS = 5


def _bounded(**bounds):
    """A field whose bounds the schema documents while validate_parameters checks them, in TGI's words."""
    return Field(None, json_schema_extra=bounds)


class TGIParameters(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)

    best_of: int | None = Field(None, ge=1, json_schema_extra={"maximum": MAX_BEST_OF})
    decoder_input_details: bool = False
    details: bool = False
    do_sample: bool = False
    frequency_penalty: float | None = _bounded(minimum=-2, maximum=2)
    max_new_tokens: int | None = _bounded(minimum=1)
    repetition_penalty: float | None = _bounded(exclusiveMinimum=0)
    return_full_text: bool | None = False
    seed: int | None = Field(None, ge=0, lt=2**64)  # TGI's u64
    stop: list[str] = Field(default_factory=list, json_schema_extra={"maxItems": MAX_STOP_SEQUENCES})
    temperature: float | None = _bounded(exclusiveMinimum=0)
    top_k: int | None = _bounded(minimum=1)
    top_n_tokens: int | None = _bounded(minimum=0, maximum=MAX_TOP_N_TOKENS)
    top_p: float | None = _bounded(exclusiveMinimum=0, exclusiveMaximum=1)
    truncate: int | None = _bounded(minimum=1)
    typical_p: float | None = _bounded(exclusiveMinimum=0, exclusiveMaximum=1)
    watermark: bool = False
    adapter_id: str | None = None
    grammar: dict | None = None
    speculative: dict | None = None  # tokenmill's: {"method": "ngram", "num_speculative_tokens": k, ...}


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)

    inputs: str
    parameters: TGIParameters = Field(default_factory=TGIParameters)
    stream: bool = False


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)

    tokens: list[int] = Field(..., min_length=1)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise APIError(422, message)


def validate_parameters(p: TGIParameters) -> None:
    """TGI's own rules (same wording where it has one)."""
    _check(not p.watermark, "`watermark` is not supported by this server; omit it (or send false)")
    _check(p.temperature is None or p.temperature > 0, "`temperature` must be strictly positive")
    _check(p.repetition_penalty is None or p.repetition_penalty > 0, "`repetition_penalty` must be strictly positive")
    _check(p.frequency_penalty is None or -2 <= p.frequency_penalty <= 2, "`frequency_penalty` must be >= -2.0 and <= 2.0")
    _check(p.top_p is None or 0 < p.top_p < 1, "`top_p` must be > 0.0 and < 1.0")
    _check(p.typical_p is None or 0 < p.typical_p < 1, "`typical_p` must be > 0.0 and < 1.0")
    _check(p.top_k is None or p.top_k > 0, "`top_k` must be strictly positive")
    _check(p.max_new_tokens is None or p.max_new_tokens > 0, "`max_new_tokens` must be strictly positive")
    _check(p.truncate is None or p.truncate > 0, "`truncate` must be strictly positive")
    _check(len(p.stop) <= MAX_STOP_SEQUENCES,
           f"`stop` supports up to {MAX_STOP_SEQUENCES} stop sequences. Given: {len(p.stop)}")
    _check(p.top_n_tokens is None or 0 <= p.top_n_tokens <= MAX_TOP_N_TOKENS,
           f"`top_n_tokens` must be >= 0 and <= {MAX_TOP_N_TOKENS}")
    if p.best_of is not None and p.best_of > 1:
        _check(p.best_of <= MAX_BEST_OF, f"`best_of` must be > 0 and <= {MAX_BEST_OF}. Given: {p.best_of}")
        _check(uses_sampling(p), "you must use sampling when `best_of` is > 1")
        _check(p.seed is None, "`seed` must not be set when `best_of` > 1")


def uses_sampling(p: TGIParameters) -> bool:
    """As TGI: any warper turns sampling on, even without do_sample."""
    warpers = ((p.temperature is not None and p.temperature != 1.0) or p.top_k is not None
               or p.top_p is not None or p.typical_p is not None)
    return p.do_sample or warpers


def spec_from_tgi(grammar: dict | None) -> tuple[str, object] | None:
    """TGI's `grammar` parameter: {"type": "json" | "json_schema" | "regex", "value": ...}."""
    if grammar is None:
        return None
    kind, value = grammar.get("type"), grammar.get("value")
    if kind == "json":
        return "json_schema", value
    if kind == "json_schema":  # {"name": ..., "schema": {...}} or the schema itself
        return "json_schema", value.get("schema", value) if isinstance(value, dict) else value
    if kind == "regex":
        return "regex", value
    raise ValueError(f"grammar type must be 'json', 'json_schema' or 'regex', got {kind!r}")


def sampling_params(p: TGIParameters, max_new_tokens: int | None) -> SamplingParams:
    """max_new_tokens: as requested (None: the server's default, set by validation)."""
    try:
        structured_output = spec_from_tgi(p.grammar)
        if structured_output is not None:
            check_structured_output(structured_output)
    except ValueError as error:  # a bad grammar: TGI answers 422 validation
        raise APIError(422, f"`grammar`: {error}") from None
    try:
        speculative = speculative_config(p.speculative)
    except ValueError as error:
        raise APIError(422, f"`speculative`: {error}") from None
    try:
        return _sampling_params(p, max_new_tokens, structured_output, speculative)
    except ValueError as error:  # a value the checks above let through but SamplingParams refuses
        raise APIError(422, str(error)) from None


def _sampling_params(p: TGIParameters, max_new_tokens: int | None, structured_output, speculative=None
                     ) -> SamplingParams:
    sampled = uses_sampling(p)
    best_of = p.best_of or 1
    top_n = p.top_n_tokens or 0
    return SamplingParams(
        n=best_of, max_tokens=max_new_tokens, do_sample=sampled,
        temperature=(p.temperature or 1.0) if sampled else 0.0, top_k=p.top_k or 0, top_p=p.top_p or 1.0,
        typical_p=p.typical_p or 1.0, repetition_penalty=p.repetition_penalty or 1.0,
        frequency_penalty=p.frequency_penalty or 0.0, seed=p.seed, stop=list(p.stop),
        logprobs=top_n, prompt_logprobs=0 if p.decoder_input_details else None,
        skip_special_tokens=True, include_stop_str_in_output=True,  # TGI keeps the stop sequence
        structured_output=structured_output, speculative=speculative,
    )
