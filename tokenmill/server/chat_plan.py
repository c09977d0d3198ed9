"""One chat turn as the chat, Responses and Messages routes all serve it: messages and tools through the chat
template (as transformers passes them), `tool_choice` ("none", "auto", "required", a named function; the last two
forced with a grammar), and the assistant output split into reasoning, answer and tool calls, whole or streamed."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..engine.sampling_params import check_structured_output
from .errors import APIError
from .reasoning import ReasoningStream, detect_reasoning_parser, thinking_state
from .tool_calls import ToolCall, ToolCallFormat, ToolCallStream, detect_tool_call_format, tool_call_format

# for templates that do not render `tools` themselves (SmolLM2's): the tools described in a system message
_TOOL_PROMPT = ("You may call one or more functions to assist with the user query. The functions, as JSON "
                "schemas:\n{tools}\nTo call a function, reply with one JSON object per call, {example}.")
_EXAMPLES = {"hermes": 'each inside <tool_call></tool_call> tags: <tool_call>\n{"name": <function name>, '
                       '"arguments": <arguments object>}\n</tool_call>',
             "llama3_json": 'as the whole reply: {"name": <function name>, "parameters": <arguments object>}',
             "mistral": 'all in one list after [TOOL_CALLS]: [TOOL_CALLS][{"name": <function name>, '
                        '"arguments": <arguments object>}]'}


def function_tools(tools: list[dict] | None, param: str = "tools") -> list[dict]:
    """OpenAI chat tools ({"type": "function", "function": {...}}) → [{"name", "description", "parameters"}]."""
    specs = []
    for index, tool in enumerate(tools or []):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type", "function") != "function" or not isinstance(function, dict):
            raise APIError(422, f"tools[{index}] must be {{\"type\": \"function\", \"function\": {{...}}}}",
                           param=param)
        specs.append(tool_spec(function, f"{param}[{index}]"))
    return specs


def tool_spec(function: dict, where: str) -> dict:
    """A function's name, description and parameters schema, checked."""
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise APIError(422, f"{where} needs a function name", param=where)
    parameters = function.get("parameters")
    if parameters is None:
        parameters = {"type": "object", "properties": {}}
    if not isinstance(parameters, dict):
        raise APIError(422, f"{where}: parameters must be a JSON schema object", param=where)
    return {"name": name, "description": function.get("description") or "", "parameters": parameters}


def resolve_tool_choice(choice, tools: list[dict], param: str = "tool_choice") -> tuple[str, list[dict]]:
    """(mode, the tools a forced call may use): mode in none/auto/required/named."""
    if choice is None:
        return ("auto" if tools else "none"), tools
    if isinstance(choice, str):
        if choice not in ("none", "auto", "required"):
            raise APIError(422, f"tool_choice must be 'none', 'auto', 'required' or a named function, "
                                f"got {choice!r}", param=param)
        if choice == "required" and not tools:
            raise APIError(422, "tool_choice 'required' needs tools", param=param)
        return choice, tools
    name = (choice.get("function") or {}).get("name") if isinstance(choice, dict) else None
    named = [tool for tool in tools if tool["name"] == name]
    if not named:
        raise APIError(422, f"tool_choice names the function {name!r}, which is not among the tools "
                            f"{[tool['name'] for tool in tools]}", param=param)
    return "named", named


def _template_source(tokenizer) -> str:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # named templates: the default one, and the tool_use one when present
        return "\n".join(str(value) for value in template.values())
    return template or ""


def _call_text(fmt_name: str, call: dict) -> str:
    """An earlier assistant call written in the format the model is asked to use (for templates without tools)."""
    key = "parameters" if fmt_name == "llama3_json" else "arguments"
    body = json.dumps({"name": call["name"], key: call["arguments"]}, ensure_ascii=False)
    if fmt_name == "hermes":
        return f"<tool_call>\n{body}\n</tool_call>"
    return f"[TOOL_CALLS][{body}]" if fmt_name == "mistral" else body


def _template_messages(messages: list[dict], fmt_name: str, renders_tools: bool) -> list[dict]:
    """Assistant tool_calls with their arguments as objects (what templates index), or written into the content
    when the template has no tool support; tool results kept as `role: "tool"` messages."""
    prepared = []
    for message in messages:
        calls = message.get("tool_calls")
        if message.get("role") == "assistant" and calls:
            plain = [_plain_call(call) for call in calls]
            if renders_tools:
                message = {**message, "tool_calls": [{"id": call.get("id"), "type": "function", "function": plain_call,
                                                      **plain_call} for call, plain_call in zip(calls, plain)]}
            else:
                written = "\n".join(_call_text(fmt_name, call) for call in plain)
                message = {key: value for key, value in message.items() if key != "tool_calls"}
                message["content"] = "\n".join(part for part in (message.get("content") or "", written) if part)
        prepared.append(message)
    return prepared


def _plain_call(call: dict) -> dict:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise APIError(422, "an assistant tool call needs function.name and function.arguments", param="messages")
    arguments = function.get("arguments") or {}
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            raise APIError(422, f"the arguments of the earlier call to {function['name']!r} are not JSON",
                           param="messages") from None
    return {"name": function["name"], "arguments": arguments}


@dataclass
class Piece:
    """What one step of output adds: reasoning, answer text, finished tool calls."""

    reasoning: str = ""
    content: str = ""
    calls: list[ToolCall] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.reasoning or self.content or self.calls)


class AssistantOutput:
    """One choice's generated text, split as it streams; the totals are kept for the final message."""

    def __init__(self, reasoning_parser: str | None, prompt_text: str, fmt: ToolCallFormat | None):
        self.reasoning_stream = ReasoningStream(reasoning_parser, prompt_text) if reasoning_parser else None
        self.tool_stream = ToolCallStream(fmt) if fmt is not None else None
        self.reasoning, self.content, self.calls = "", "", []

    def feed(self, delta: str) -> Piece:
        reasoning, answer = self.reasoning_stream.feed(delta) if self.reasoning_stream else ("", delta)
        return self._record(reasoning, *(self.tool_stream.feed(answer) if self.tool_stream else (answer, [])))

    def finish(self) -> Piece:
        reasoning, answer = self.reasoning_stream.finish() if self.reasoning_stream else ("", "")
        content, calls = self.tool_stream.feed(answer) if self.tool_stream else (answer, [])
        more_content, more_calls = self.tool_stream.finish() if self.tool_stream else ("", [])
        return self._record(reasoning, content + more_content, calls + more_calls)

    def step(self, delta: str, finished: bool) -> Piece:
        """One engine report's delta; everything held back as well when it is the last."""
        piece = self.feed(delta)
        if finished:
            last = self.finish()
            piece = Piece(piece.reasoning + last.reasoning, piece.content + last.content, piece.calls + last.calls)
        return piece

    def _record(self, reasoning: str, content: str, calls: list[ToolCall]) -> Piece:
        self.reasoning += reasoning
        self.content += content
        self.calls += calls
        return Piece(reasoning, content, calls)

    def answer_text(self) -> str | None:
        """The answer; None when it is only whitespace around tool calls."""
        if self.calls and not self.content.strip():
            return None
        return self.content


@dataclass
class ChatPlan:
    prompt_text: str
    prompt_ids: list[int]
    tool_format: ToolCallFormat | None  # None: tool calls are not parsed
    reasoning_parser: str | None
    structured_output: tuple[str, object] | None  # the forced tool call's grammar

    @property
    def skip_special_tokens(self) -> bool:
        return not (self.tool_format is not None and self.tool_format.marker_is_special)

    def output(self) -> AssistantOutput:
        return AssistantOutput(self.reasoning_parser, self.prompt_text, self.tool_format)


def plan_chat(state, messages: list[dict], tools: list[dict], tool_choice=None, parallel_tool_calls: bool = True,
              template_kwargs: dict | None = None, structured_output=None) -> ChatPlan:
    """messages: OpenAI chat messages (plain dicts); tools: `function_tools` specs; structured_output: the
    request's own (kind, value), refused beside a forced tool call."""
    tokenizer, settings = state.tokenizer, state.settings
    if not getattr(tokenizer, "chat_template", None):
        raise APIError(422, "this model has no chat template; use /v1/completions", param="messages")
    source = _template_source(tokenizer)
    mode, candidates = resolve_tool_choice(tool_choice, tools)
    fmt_name = settings.tool_call_parser or detect_tool_call_format(source) or "hermes"
    fmt = tool_call_format(fmt_name) if mode != "none" else None
    renders_tools = "tools" in source
    prepared = _template_messages(messages, fmt_name, renders_tools)
    offered = tools if mode != "none" else []
    if offered and not renders_tools:
        prepared = _with_tools_described(prepared, offered, fmt_name)
    text = _render(tokenizer, prepared, offered, template_kwargs)
    reasoning = settings.reasoning_parser
    if reasoning in (None, "auto"):
        reasoning = detect_reasoning_parser(source)
    reasoning = None if reasoning == "none" else reasoning
    forced = None
    if mode in ("required", "named"):
        if structured_output is not None:
            raise APIError(422, "a forced tool call (tool_choice 'required' or a named function) cannot be "
                                "combined with a response format", param="tool_choice")
        forced = _forced_call(fmt, mode == "required" and parallel_tool_calls, candidates,
                              thinking_state(reasoning, text))
    return ChatPlan(text, list(tokenizer.encode(text, add_special_tokens=False)), fmt, reasoning,
                    forced or structured_output)


def _with_tools_described(messages: list[dict], tools: list[dict], fmt_name: str) -> list[dict]:
    """The tools and the call format in the system message, for a template that does not render tools."""
    described = "\n".join(json.dumps({"type": "function", "function": tool}, ensure_ascii=False) for tool in tools)
    prompt = _TOOL_PROMPT.format(tools=described, example=_EXAMPLES[fmt_name])
    if messages and messages[0].get("role") == "system":
        return [{**messages[0], "content": f"{messages[0].get('content') or ''}\n\n{prompt}".lstrip()}, *messages[1:]]
    return [{"role": "system", "content": prompt}, *messages]


def _forced_call(fmt: ToolCallFormat, several: bool, candidates: list[dict], thinking: str | None) -> tuple[str, str]:
    """The grammar of one call (or several) of `candidates`, after the reasoning when the model reasons; checked."""
    forced = ("grammar", fmt.grammar(candidates, several, thinking))
    try:
        check_structured_output(forced)
    except (ValueError, ImportError) as error:  # ImportError: llguidance, an optional dependency, is missing
        raise APIError(422, f"the tools' parameter schemas cannot be enforced: {error}", param="tools") from None
    return forced


def _render(tokenizer, messages: list[dict], tools: list[dict], template_kwargs: dict | None) -> str:
    kwargs = dict(template_kwargs or {})
    for reserved in ("tools", "add_generation_prompt", "tokenize", "conversation", "messages"):
        if reserved in kwargs:
            raise APIError(422, f"chat_template_kwargs may not set {reserved!r}", param="chat_template_kwargs")
    template_tools = [{"type": "function", "function": tool} for tool in tools] or None
    try:
        return tokenizer.apply_chat_template(messages, tools=template_tools, add_generation_prompt=True,
                                             tokenize=False, **kwargs)
    except APIError:
        raise
    except Exception as error:  # noqa: BLE001 - a template error is the request's fault
        raise APIError(422, f"the chat template failed on these messages: {error}", param="messages") from None


def finish_reason(engine_reason: str | None, output: AssistantOutput) -> str | None:
    """OpenAI's chat finish reason: "tool_calls" when the turn ended on calls."""
    if engine_reason in ("abort", "error"):
        return "stop"
    if engine_reason == "stop" and output.calls:
        return "tool_calls"
    return engine_reason


def chat_message(output: AssistantOutput) -> dict:
    message = {"role": "assistant", "content": output.answer_text()}
    if output.reasoning:
        message["reasoning_content"] = output.reasoning
    if output.calls:
        message["tool_calls"] = [{"id": call.id, "type": "function",
                                  "function": {"name": call.name, "arguments": call.arguments}}
                                 for call in output.calls]
    return message


def chat_delta(piece: Piece, output: AssistantOutput) -> dict:
    """A streamed chunk's delta; the calls numbered after those already sent."""
    delta = {}
    if piece.reasoning:
        delta["reasoning_content"] = piece.reasoning
    if piece.content:
        delta["content"] = piece.content
    if piece.calls:
        first = len(output.calls) - len(piece.calls)
        delta["tool_calls"] = [{"index": first + k, "id": call.id, "type": "function",
                                "function": {"name": call.name, "arguments": call.arguments}}
                               for k, call in enumerate(piece.calls)]
    return delta
