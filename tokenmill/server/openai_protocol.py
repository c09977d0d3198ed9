"""OpenAI request bodies (pydantic) and their translation into SamplingParams (structured output included)."""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from ..engine.sampling_params import SamplingParams, check_structured_output
from ..engine.spec_params import speculative_config
from .errors import APIError
from .tgi_protocol import spec_from_tgi

RESPONSE_FORMAT_TYPES = ("text", "json_object", "json_schema", "json", "regex")


def spec_from_openai(response_format: dict | None = None, **guided) -> tuple[str, object] | None:
    """OpenAI `response_format` ({"type": "json_schema" | "json_object" | "text"}), TGI's grammar shape of it
    ({"type": "json" | "json_object" | "json_schema" | "regex", "value": ...}, as huggingface_hub's InferenceClient
    sends it) or vLLM's extra `guided_json` / `guided_regex` / `guided_choice` / `guided_grammar` → (kind, value),
    None when unconstrained."""
    chosen = {key: value for key, value in guided.items() if value is not None}
    unknown = set(chosen) - {"guided_json", "guided_regex", "guided_choice", "guided_grammar"}
    if unknown:
        raise ValueError(f"unknown structured-output parameter(s): {sorted(unknown)}")
    kind = (response_format or {}).get("type", "text")
    if kind not in RESPONSE_FORMAT_TYPES:
        raise ValueError(f"response_format type must be 'text', 'json_object' or 'json_schema' (or TGI's 'json' "
                         f"or 'regex' with a value), got {kind!r}")
    if kind == "text":
        if (response_format or {}).get("value") is not None:
            raise ValueError("response_format type 'text' takes no value")
    else:
        chosen["response_format"] = response_format
    if len(chosen) > 1:
        raise ValueError(f"ask for one kind of structured output at a time, got {sorted(chosen)}")
    if not chosen:
        return None
    name, value = next(iter(chosen.items()))
    if name == "response_format":
        return _spec_from_response_format(value)
    kinds = {"guided_json": "json_schema", "guided_regex": "regex", "guided_choice": "choice",
             "guided_grammar": "grammar"}
    return kinds[name], value


def _spec_from_response_format(response_format: dict) -> tuple[str, object]:
    kind, value = response_format["type"], response_format.get("value")
    if value is not None:  # TGI's shape; huggingface_hub rewrites OpenAI's json_schema to json_object + value
        if response_format.get("json_schema") is not None:
            raise ValueError("response_format takes json_schema (OpenAI) or value (TGI), not both")
        return spec_from_tgi({"type": "json" if kind == "json_object" else kind, "value": value})
    if kind in ("json", "regex"):
        raise ValueError(f"response_format type {kind!r} needs a value (TGI's grammar shape)")
    if kind == "json_object":
        return "json_schema", {"type": "object"}
    schema = (response_format.get("json_schema") or {}).get("schema")
    if schema is None:
        raise ValueError("response_format json_schema needs json_schema.schema")
    if not isinstance(schema, dict):
        raise ValueError(f"response_format json_schema.schema must be a JSON schema object, got "
                         f"{type(schema).__name__}")
    return "json_schema", schema


class StreamOptions(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False, strict=True)

    include_usage: bool = False


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False, strict=True)

    type: Literal["text", "json_object", "json_schema", "json", "regex"]
    json_schema: dict[str, Any] | None = None  # {"name": ..., "schema": {...}, "strict": ...}
    value: Any = None  # TGI's shape: the schema (json, json_object), {"name", "schema"} (json_schema) or the regex


class _Sampling(BaseModel):
    # an argument tokenmill does not implement is refused by name, as OpenAI refuses one it does not know
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)

    model: str | None = None
    user: str | None = None  # the end user's id: OpenAI keeps it for abuse monitoring; it changes no output
    n: int = Field(1, ge=1, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Union[str, list[str], None] = None
    seed: int | None = Field(None, ge=-2**63, lt=2**64)  # what the sampler's generators take
    max_tokens: int | None = Field(None, json_schema_extra={"minimum": 1})  # checked with the limits
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0, le=1)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    repetition_penalty: float | None = Field(None, gt=0)
    logit_bias: dict[str, float] | None = None
    ignore_eos: bool = False
    min_tokens: int = Field(0, ge=0)
    response_format: ResponseFormat | None = None
    guided_json: Union[dict[str, Any], str, None] = None  # vLLM's extra-body structured output
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    # vLLM-style extra body: {"method": "ngram", "num_speculative_tokens": k, ...}; null: the server's default
    speculative: dict[str, Any] | None = None

    def speculative_config(self):
        """The request's SpeculativeConfig, a bad value a 400 naming the field."""
        try:
            return speculative_config(self.speculative)
        except ValueError as error:
            raise APIError(422, str(error), param="speculative") from None

    def structured_output(self) -> tuple[str, object] | None:
        """(kind, value) for SamplingParams, checked here so a bad schema is a 400 naming the field."""
        response_format = self.response_format.model_dump() if self.response_format is not None else None
        guided = {name: getattr(self, name) for name in ("guided_json", "guided_regex", "guided_choice",
                                                           "guided_grammar")}
        try:
            spec = spec_from_openai(response_format, **guided)
            if spec is not None:
                check_structured_output(spec)
            return spec
        except ValueError as error:
            chosen = [name for name, value in guided.items() if value is not None]
            param = chosen[0] if len(chosen) == 1 and response_format is None else "response_format"
            raise APIError(422, str(error), param=param) from None

    def sampling_params(self, max_tokens: int | None, logprobs: int | None, vocab_size: int) -> SamplingParams:
        """max_tokens: as requested (None: the server's default, set by validation)."""
        try:
            return self._sampling_params(max_tokens, logprobs, vocab_size)
        except ValueError as error:  # a value the pydantic bounds let through but SamplingParams refuses
            raise APIError(422, str(error)) from None

    def _sampling_params(self, max_tokens: int | None, logprobs: int | None, vocab_size: int) -> SamplingParams:
        return SamplingParams(
            n=self.n, max_tokens=max_tokens, min_tokens=self.min_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p, top_k=self.top_k or 0, min_p=self.min_p or 0.0,
            presence_penalty=self.presence_penalty, frequency_penalty=self.frequency_penalty,
            repetition_penalty=self.repetition_penalty or 1.0, logit_bias=_logit_bias(self.logit_bias, vocab_size),
            seed=self.seed, stop=[self.stop] if isinstance(self.stop, str) else list(self.stop or []),
            ignore_eos=self.ignore_eos, logprobs=logprobs, structured_output=self.structured_output(),
            speculative=self.speculative_config(),
        )


def _logit_bias(bias: dict[str, float] | None, vocab_size: int) -> dict[int, float] | None:
    if not bias:
        return None
    parsed = {}
    for key, value in bias.items():
        try:
            token = int(key)
        except ValueError:
            raise APIError(422, f"logit_bias keys must be token ids, got {key!r}", param="logit_bias") from None
        if not 0 <= token < vocab_size:
            raise APIError(422, f"logit_bias token {token} is outside the vocabulary [0, {vocab_size})",
                           param="logit_bias")
        if not -100 <= value <= 100:
            raise APIError(422, f"logit_bias values must be in [-100, 100], got {value}", param="logit_bias")
        parsed[token] = float(value)
    return parsed


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False, strict=True)

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False, strict=True)

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Union[str, list[ContentPart], None] = None


def _may_omit_content(message: ChatMessage) -> bool:
    """OpenAI's rule: content may be null or absent only in an assistant message that calls tools (tool_calls,
    or the deprecated function_call) and in the deprecated function role's result."""
    extra = message.model_extra or {}
    calls = extra.get("tool_calls") or extra.get("function_call")
    return (message.role == "assistant" and bool(calls)) or message.role == "function"


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False, strict=True)

    name: str = Field(..., pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ChatTool(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False, strict=True)

    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False, strict=True)

    name: str


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False, strict=True)

    type: Literal["function"] = "function"  # TGI (and huggingface_hub) send {"function": {"name": ...}} alone
    function: FunctionName


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[ChatTool] | None = None
    tool_choice: Union[Literal["none", "auto", "required"], NamedToolChoice, None] = None
    parallel_tool_calls: bool = True
    chat_template_kwargs: dict[str, Any] | None = None
    reasoning_effort: Literal["minimal", "low", "medium", "high"] | None = None  # to the template, as vLLM does

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def logprobs_count(self) -> int | None:
        if self.top_logprobs and not self.logprobs:
            raise APIError(422, "top_logprobs requires logprobs=true", param="top_logprobs")
        return (self.top_logprobs or 0) if self.logprobs else None

    def template_kwargs(self) -> dict[str, Any] | None:
        """`chat_template_kwargs` with `reasoning_effort` added (an explicit template kwarg wins)."""
        if self.reasoning_effort is None:
            return self.chat_template_kwargs
        return {"reasoning_effort": self.reasoning_effort, **(self.chat_template_kwargs or {})}

    def tool_dicts(self) -> tuple[list[dict[str, Any]], str | dict[str, Any] | None]:
        """`tools` and `tool_choice` as plain JSON (checked by the models above: a malformed one is a 400)."""
        tools = [tool.model_dump(exclude_none=True) for tool in self.tools or []]
        choice = self.tool_choice
        return tools, choice.model_dump() if isinstance(choice, BaseModel) else choice

    def plain_messages(self) -> list[dict[str, Any]]:
        messages = []
        for index, message in enumerate(self.messages):
            content = message.content
            if content is None and not _may_omit_content(message):
                raise APIError(422, f"messages[{index}].content: a {message.role!r} message needs content (a "
                                    "string or content parts); only an assistant message with tool_calls may omit it",
                               param=f"messages[{index}].content")
            if content == [] and not _may_omit_content(message):  # OpenAI's schema: at least one part
                raise APIError(422, f"messages[{index}].content: an empty list of content parts",
                               param=f"messages[{index}].content")
            if isinstance(content, list):  # content parts: only text is served
                texts = []
                for part in content:
                    if part.type != "text" or part.text is None:
                        raise APIError(422, f"unsupported content part of type {part.type!r}; only text parts, "
                                            "each with its \"text\"", param="messages")
                    texts.append(part.text)
                content = "".join(texts)
            messages.append({**(message.model_extra or {}), "role": message.role, "content": content or ""})
        return messages


class CompletionRequest(_Sampling):
    prompt: Union[str, list[str], list[int], list[list[int]]]
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1)  # only best_of == n: ranking more candidates than returned is not built

    def prompts(self) -> list[Union[str, list[int]]]:
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if not prompt:
            raise APIError(422, "the prompt is empty", param="prompt")
        if all(isinstance(p, int) for p in prompt):
            return [list(prompt)]
        return list(prompt)
