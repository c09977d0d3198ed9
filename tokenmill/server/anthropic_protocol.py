"""Anthropic Messages API bodies: the request (system, content blocks, tools, tool_choice) as a chat turn, and the
message it answers with (text, thinking and tool_use blocks, stop reasons)."""

from __future__ import annotations

import json
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from ..engine.sampling_params import SamplingParams, check_structured_output
from .chat_plan import AssistantOutput, tool_spec
from .errors import APIError
from .tool_calls import ToolCall


class AnthropicMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: str
    content: Union[str, list[dict[str, Any]]]


class MessagesRequest(BaseModel):
    # an argument this server does not implement is refused by name, never ignored
    model_config = ConfigDict(extra="forbid")

    model: str
    max_tokens: int = Field(..., ge=1)
    messages: list[AnthropicMessage] = Field(..., min_length=1)
    system: Union[str, list[dict[str, Any]], None] = None
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(None, ge=0, le=1)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    stream: bool = False
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None  # the caller's own bookkeeping (user_id): it changes no output
    service_tier: Literal["auto", "standard_only"] | None = None  # one tier here: both mean it
    thinking: dict[str, Any] | None = None
    output_config: dict[str, Any] | None = None
    container: Any = None  # server-side features this server does not have: refused, not ignored
    mcp_servers: list[Any] | None = None

    def structured_output(self) -> tuple[str, object] | None:
        """`output_config.format` (a JSON schema) as structured output; refuses the server-side features."""
        for name in ("container", "mcp_servers"):
            if getattr(self, name):
                raise APIError(422, f"{name} is not supported by this server", param=name)
        unknown = sorted(set(self.output_config or {}) - {"format", "effort"})
        if unknown:
            raise APIError(422, f"output_config.{unknown[0]} is not supported by this server",
                           param=f"output_config.{unknown[0]}")
        fmt = (self.output_config or {}).get("format")
        if fmt is None:
            return None
        if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
            raise APIError(422, "output_config.format must be {\"type\": \"json_schema\", \"schema\": {...}}",
                           param="output_config.format")
        spec = ("json_schema", fmt.get("schema"))
        try:
            check_structured_output(spec)
        except ValueError as error:
            raise APIError(422, str(error), param="output_config.format") from None
        return spec

    def template_kwargs(self) -> dict | None:
        """`thinking` → `enable_thinking`, the switch Qwen3-style templates read, and `output_config.effort` →
        `reasoning_effort`, the one effort templates read (a template without either switch ignores them)."""
        kwargs = {}
        if self.thinking is not None:
            kind = self.thinking.get("type")
            if kind not in ("enabled", "disabled", "adaptive"):
                raise APIError(422, f"thinking.type must be enabled, disabled or adaptive, got {kind!r}",
                               param="thinking")
            kwargs["enable_thinking"] = kind != "disabled"
        effort = (self.output_config or {}).get("effort")
        if effort is not None:
            if effort not in ("low", "medium", "high", "max"):
                raise APIError(422, f"output_config.effort must be low, medium, high or max, got {effort!r}",
                               param="output_config.effort")
            kwargs["reasoning_effort"] = effort
        return kwargs or None

    def chat_messages(self) -> list[dict]:
        messages = [{"role": "system", "content": _text_of(self.system, "system")}] if self.system else []
        for index, message in enumerate(self.messages):
            if message.role not in ("user", "assistant"):
                raise APIError(422, f"messages[{index}].role must be 'user' or 'assistant', got {message.role!r}",
                               param=f"messages.{index}.role")
            messages += _chat_messages(message, f"messages.{index}")
        return messages

    def tool_specs(self) -> list[dict]:
        specs = []
        for index, tool in enumerate(self.tools or []):
            if not isinstance(tool, dict) or tool.get("type", "custom") != "custom" or "input_schema" not in tool:
                raise APIError(422, f"tools[{index}] must be a client tool with a name and an input_schema; server "
                                    "tools are not supported", param=f"tools.{index}")
            specs.append(tool_spec({"name": tool.get("name"), "description": tool.get("description"),
                                    "parameters": tool["input_schema"]}, f"tools.{index}"))
        return specs

    def openai_tool_choice(self) -> tuple[object, bool]:
        """(tool_choice as the chat plan takes it, whether parallel calls are allowed)."""
        choice = self.tool_choice or {"type": "auto"}
        parallel = not choice.get("disable_parallel_tool_use", False)
        kinds = {"auto": "auto", "any": "required", "none": "none"}
        if choice.get("type") in kinds:
            return kinds[choice["type"]], parallel
        if choice.get("type") == "tool":
            return {"type": "function", "function": {"name": choice.get("name")}}, parallel
        raise APIError(422, f"tool_choice.type must be auto, any, tool or none, got {choice.get('type')!r}",
                       param="tool_choice")

    def sampling_params(self) -> SamplingParams:
        try:
            return SamplingParams(max_tokens=self.max_tokens, temperature=1.0 if self.temperature is None
                                  else self.temperature, top_p=self.top_p or 1.0, top_k=self.top_k or 0,
                                  stop=list(self.stop_sequences or []))
        except ValueError as error:
            raise APIError(422, str(error)) from None


def _text_of(content, where: str) -> str:
    if isinstance(content, str):
        return content
    texts = []
    for block in content:
        if block.get("type") != "text":
            raise APIError(422, f"{where}: only text blocks are supported here, got {block.get('type')!r}",
                           param=where)
        texts.append(str(block.get("text", "")))
    return "".join(texts)


def _chat_messages(message: AnthropicMessage, where: str) -> list[dict]:
    """One Anthropic message → chat messages: tool_result blocks become `role: "tool"` messages, tool_use blocks
    the assistant's tool_calls, thinking blocks its reasoning_content."""
    if isinstance(message.content, str):
        return [{"role": message.role, "content": message.content}]
    results, texts, calls, thinking = [], [], [], []
    for block in message.content:
        kind = block.get("type")
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "tool_result" and message.role == "user":
            content = block.get("content", "")
            results.append({"role": "tool", "tool_call_id": block.get("tool_use_id"),
                            "content": _text_of(content, where) if isinstance(content, list) else str(content)})
        elif kind == "tool_use" and message.role == "assistant":
            calls.append({"id": block.get("id"), "type": "function",
                          "function": {"name": block.get("name"), "arguments": json.dumps(block.get("input", {}))}})
        elif kind in ("thinking", "redacted_thinking") and message.role == "assistant":
            thinking.append(str(block.get("thinking", "")))
        else:
            raise APIError(422, f"{where}: unsupported content block type {kind!r} in a {message.role} message",
                           param=where)
    chat = {"role": message.role, "content": "".join(texts)}
    if calls:
        chat["tool_calls"] = calls
    if thinking:
        chat["reasoning_content"] = "".join(thinking)
    return results + ([chat] if texts or calls or not results else [])


def tool_use_block(call: ToolCall) -> dict:
    return {"type": "tool_use", "id": "toolu_" + call.id.removeprefix("call_"), "name": call.name,
            "input": json.loads(call.arguments)}


def content_blocks(output: AssistantOutput) -> list[dict]:
    blocks = []
    if output.reasoning:
        blocks.append({"type": "thinking", "thinking": output.reasoning, "signature": ""})
    answer = output.answer_text()
    if answer:
        blocks.append({"type": "text", "text": answer})
    return blocks + [tool_use_block(call) for call in output.calls]


def stop_reason(finish_reason: str | None, matched, output: AssistantOutput, stops: list[str]) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence) from the engine's finish."""
    if finish_reason == "length":
        return "max_tokens", None
    if isinstance(matched, str) and matched in stops:
        return "stop_sequence", matched
    return ("tool_use" if output.calls else "end_turn"), None
