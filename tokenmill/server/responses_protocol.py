"""OpenAI Responses API bodies: the request (input as text or items, instructions, function tools, text.format)
as a chat turn, the output items (reasoning, message, function_call) and the response object, and the bounded
store that `previous_response_id` reads."""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from ..engine.sampling_params import SamplingParams, check_structured_output
from .chat_plan import AssistantOutput, tool_spec
from .errors import APIError
from .tool_calls import ToolCall


def item_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class Reasoning(BaseModel):
    model_config = ConfigDict(extra="forbid")

    effort: Literal["minimal", "low", "medium", "high"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None  # refused when set: no summariser here


class ResponsesRequest(BaseModel):
    # an argument this server does not implement is refused by name, never ignored
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    input: Union[str, list[dict[str, Any]]]
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stream: bool = False
    tools: list[dict[str, Any]] | None = None
    tool_choice: Union[str, dict[str, Any], None] = None
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    store: bool = True
    text: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    reasoning: Reasoning | None = None
    user: str | None = None  # identifiers for the caller's own bookkeeping: they change no output
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None  # a hint only: the prefix cache here is automatic
    service_tier: Literal["auto", "default"] | None = None  # one tier here
    truncation: Literal["disabled"] | None = None  # "auto" (drop old items) is not built: refused by the schema
    include: list[str] | None = None  # nothing optional to include: a non-empty list is refused
    background: bool = False  # features this server does not have: refused, not ignored
    conversation: Any = None
    prompt: Any = None

    def refuse_unsupported(self) -> None:
        for name in ("background", "conversation", "prompt", "include"):
            if getattr(self, name):
                raise APIError(422, f"{name} is not supported by this server", param=name)
        if self.reasoning is not None and self.reasoning.summary is not None:
            raise APIError(422, "reasoning.summary is not supported by this server (the reasoning is returned "
                                "whole)", param="reasoning.summary")

    def template_kwargs(self) -> dict | None:
        """`reasoning.effort` → `reasoning_effort`, what templates with an effort switch read."""
        effort = self.reasoning.effort if self.reasoning is not None else None
        return {"reasoning_effort": effort} if effort is not None else None

    def input_messages(self) -> list[dict]:
        if isinstance(self.input, str):
            return [{"role": "user", "content": self.input}]
        messages: list[dict] = []
        for index, item in enumerate(self.input):
            _add_item(messages, item, f"input.{index}")
        return messages

    def tool_specs(self) -> list[dict]:
        specs = []
        for index, tool in enumerate(self.tools or []):
            if not isinstance(tool, dict) or tool.get("type") != "function":
                raise APIError(422, f"tools[{index}]: only function tools are supported, got "
                                    f"{tool.get('type') if isinstance(tool, dict) else tool!r}", param=f"tools.{index}")
            specs.append(tool_spec(tool, f"tools.{index}"))
        return specs

    def chat_tool_choice(self):
        choice = self.tool_choice
        if isinstance(choice, dict):
            if choice.get("type") != "function":
                raise APIError(422, "tool_choice must be 'none', 'auto', 'required' or {\"type\": \"function\", "
                                    "\"name\": ...}", param="tool_choice")
            return {"type": "function", "function": {"name": choice.get("name")}}
        return choice

    def structured_output(self) -> tuple[str, object] | None:
        fmt = (self.text or {}).get("format") or {"type": "text"}
        kind = fmt.get("type")
        if kind == "text":
            return None
        if kind not in ("json_object", "json_schema"):
            raise APIError(422, f"text.format.type must be text, json_object or json_schema, got {kind!r}",
                           param="text.format")
        spec = ("json_schema", {"type": "object"} if kind == "json_object" else fmt.get("schema"))
        try:
            check_structured_output(spec)
        except ValueError as error:
            raise APIError(422, str(error), param="text.format") from None
        return spec

    def sampling_params(self) -> SamplingParams:
        try:
            return SamplingParams(max_tokens=self.max_output_tokens, temperature=1.0 if self.temperature is None
                                  else self.temperature, top_p=1.0 if self.top_p is None else self.top_p)
        except ValueError as error:
            raise APIError(422, str(error)) from None


def _text_parts(content, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise APIError(422, f"{where}.content must be text or a list of text parts", param=where)
    texts = []
    for part in content:
        if not isinstance(part, dict) or part.get("type") not in ("input_text", "output_text", "text"):
            raise APIError(422, f"{where}: unsupported content part "
                                f"{part.get('type') if isinstance(part, dict) else part!r}; only text", param=where)
        if not isinstance(part.get("text"), str):
            raise APIError(422, f"{where}: a {part['type']} part needs its \"text\" as a string", param=where)
        texts.append(part["text"])
    return "".join(texts)


def _add_item(messages: list[dict], item: dict, where: str) -> None:
    """One input item onto the chat messages; a function_call joins the assistant message before it."""
    kind = item.get("type", "message") if isinstance(item, dict) else None
    if kind == "message":
        role = item.get("role")
        if role not in ("user", "assistant", "system", "developer"):
            raise APIError(422, f"{where}.role must be user, assistant, system or developer, got {role!r}",
                           param=where)
        messages.append({"role": "system" if role == "developer" else role,
                         "content": _text_parts(item.get("content"), where)})  # required: absent is refused
    elif kind == "function_call":
        call = {"id": item.get("call_id"), "type": "function",
                "function": {"name": item.get("name"), "arguments": item.get("arguments") or "{}"}}
        if messages and messages[-1]["role"] == "assistant":
            messages[-1].setdefault("tool_calls", []).append(call)
        else:
            messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
    elif kind == "function_call_output":
        messages.append({"role": "tool", "tool_call_id": item.get("call_id"),
                         "content": _text_parts(item.get("output"), where)})
    elif kind != "reasoning":  # earlier reasoning is not shown to the model again
        raise APIError(422, f"{where}: unsupported input item type {kind!r}", param=where)


def reasoning_item(text: str, status: str = "completed", item: str | None = None) -> dict:
    return {"id": item or item_id("rs"), "type": "reasoning", "summary": [], "status": status,
            "content": [{"type": "reasoning_text", "text": text}] if text or status == "completed" else []}


def message_item(text: str, status: str = "completed", item: str | None = None) -> dict:
    return {"id": item or item_id("msg"), "type": "message", "role": "assistant", "status": status,
            "content": [output_text_part(text)] if status == "completed" else []}


def output_text_part(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def function_call_item(call: ToolCall, status: str = "completed", item: str | None = None) -> dict:
    return {"id": item or item_id("fc"), "type": "function_call", "call_id": call.id, "name": call.name,
            "arguments": call.arguments if status == "completed" else "", "status": status}


def output_items(output: AssistantOutput) -> list[dict]:
    items = [reasoning_item(output.reasoning)] if output.reasoning else []
    answer = output.answer_text()
    if answer:
        items.append(message_item(answer))
    return items + [function_call_item(call) for call in output.calls]


def response_object(response_id: str, created: int, model: str, body: ResponsesRequest, status: str,
                    output: list[dict], usage: dict | None) -> dict:
    return {"id": response_id, "object": "response", "created_at": created, "status": status, "model": model,
            "output": output, "instructions": body.instructions, "max_output_tokens": body.max_output_tokens,
            "temperature": body.temperature, "top_p": body.top_p, "tools": body.tools or [],
            "tool_choice": body.tool_choice or "auto", "parallel_tool_calls": body.parallel_tool_calls,
            "previous_response_id": body.previous_response_id, "store": body.store, "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "metadata": body.metadata or {}, "text": body.text or {"format": {"type": "text"}},
            "truncation": "disabled", "usage": usage}


def usage_of(prompt_tokens: int, output_tokens: int) -> dict:
    return {"input_tokens": prompt_tokens, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt_tokens + output_tokens}


def conversation_after(messages: list[dict], output: AssistantOutput) -> list[dict]:
    """The conversation a later `previous_response_id` continues: its messages and this answer."""
    answer = {"role": "assistant", "content": output.answer_text() or ""}
    if output.calls:
        answer["tool_calls"] = [{"id": call.id, "type": "function",
                                 "function": {"name": call.name, "arguments": call.arguments}}
                                for call in output.calls]
    return [*messages, answer]


class ResponseStore:
    """The last `capacity` stored responses: id → (response object, conversation); the oldest go first."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.entries: OrderedDict[str, tuple[dict, list[dict]]] = OrderedDict()

    def put(self, response: dict, conversation: list[dict]) -> None:
        if self.capacity <= 0:
            return
        self.entries[response["id"]] = (response, conversation)
        self.entries.move_to_end(response["id"])
        while len(self.entries) > self.capacity:
            self.entries.popitem(last=False)

    def get(self, response_id: str, param: str = "previous_response_id") -> tuple[dict, list[dict]]:
        if response_id not in self.entries:
            raise APIError(404, f"no stored response with id {response_id!r} (this server keeps the last "
                                f"{self.capacity}, in memory, and only those created with store=true)", param=param)
        return self.entries[response_id]


def created_now() -> int:
    return int(time.time())
