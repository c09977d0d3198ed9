"""Tool calls in a model's text, in the common formats: Hermes/Qwen `<tool_call>{json}</tool_call>`, Llama 3.x
JSON `{"name": .., "parameters": ..}`, Mistral `[TOOL_CALLS][{..}]`. Parsed whole or while streaming (content
before the calls flows on, each call is reported once complete), and the Lark grammar that forces a call's shape.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field

_DECODER = json.JSONDecoder()
# reasoning before a forced call: any text up to `</think>` (llguidance's stop attribute)
THOUGHT_RULE = 'thought[stop="</think>"]: /(.|\\n)*/\n'


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass
class ToolCall:
    name: str
    arguments: str  # JSON text, as the OpenAI API carries it
    id: str = field(default_factory=new_call_id)


def _call_from_object(value, argument_keys: tuple[str, ...]) -> ToolCall | None:
    """{"name": str, <argument key>: object or JSON text} → a call; None when it is not one."""
    if not isinstance(value, dict) or not isinstance(value.get("name"), str) or not value["name"]:
        return None
    arguments = next((value[key] for key in argument_keys if key in value), {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not isinstance(arguments, dict):
        return None
    return ToolCall(value["name"], json.dumps(arguments, ensure_ascii=False))


def _json_values(text: str, separators: str = "") -> tuple[list, str]:
    """The complete JSON values at the start of `text` (whitespace and `separators` between them), and the rest."""
    values, position = [], 0
    while True:
        while position < len(text) and (text[position].isspace() or text[position] in separators):
            position += 1
        if position == len(text):
            return values, ""
        try:
            value, position = _DECODER.raw_decode(text, position)
        except ValueError:
            return values, text[position:]
        values.append(value)


def _calls_from_values(values: list, argument_keys: tuple[str, ...]) -> list[ToolCall] | None:
    calls = [_call_from_object(value, argument_keys) for value in values]
    return None if any(call is None for call in calls) else calls


class ToolCallFormat:
    """One format: the markers that open the tool-call region, how the region parses, how a call is forced."""

    name = ""
    markers: tuple[str, ...] = ()
    at_start_only = False  # the region may only open the message (after whitespace)
    marker_is_special = False  # the marker is a special token: it must not be skipped when detokenizing
    argument_key = "arguments"

    def calls(self, region: str, final: bool) -> list[ToolCall] | None:
        """The calls complete in `region` (which starts at a marker). final: the whole region must parse, else
        None (the text is then content); not final: the calls complete so far, never None."""
        raise NotImplementedError

    def call_rule(self, tool_schemas: list[dict]) -> str:
        """A Lark rule `call` matching one call object of any of the tools."""
        bodies = [{"type": "object",
                   "properties": {"name": {"const": tool["name"]}, self.argument_key: tool["parameters"]},
                   "required": ["name", self.argument_key], "additionalProperties": False}
                  for tool in tool_schemas]
        schema = dict(bodies[0]) if len(bodies) == 1 else {"anyOf": bodies}
        schema["x-guidance"] = {"whitespace_flexible": False}  # small models otherwise wander in whitespace
        return "call: %json " + json.dumps(schema, ensure_ascii=False)

    def grammar(self, tool_schemas: list[dict], several: bool, thinking: str | None = None) -> str:
        """Lark text forcing one call (several: one or more) of `tool_schemas` ([{"name", "parameters"}]).
        thinking: "optional" (the model may open `<think>` first), "open" (it is inside one already), None."""
        rules = self.call_rules(tool_schemas, several)
        if thinking is None:
            return rules
        opening, start = ('"<think>" ', "start: think? calls") if thinking == "optional" else ("", "start: think calls")
        think = f"think: {opening}thought /\\n*/\n"  # the newlines templates put after `</think>`
        return f"{start}\n{think}{THOUGHT_RULE}{rules.replace('start:', 'calls:', 1)}"

    def call_rules(self, tool_schemas: list[dict], several: bool) -> str:
        raise NotImplementedError


class HermesFormat(ToolCallFormat):
    """Hermes, Qwen 2.5/3: `<tool_call>\\n{"name": .., "arguments": {..}}\\n</tool_call>`, one block per call."""

    name = "hermes"
    markers = ("<tool_call>",)
    _BLOCK = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)

    def calls(self, region: str, final: bool) -> list[ToolCall] | None:
        calls, end = [], 0
        for block in self._BLOCK.finditer(region):
            if region[end:block.start()].strip():
                return None if final else calls
            call = self._block_call(block.group(1))
            if call is None:
                return None if final else calls
            calls.append(call)
            end = block.end()
        rest = region[end:].strip()
        if final and rest:  # a last block the model left unclosed (it stopped at end of turn) still counts
            call = self._block_call(rest[len("<tool_call>"):]) if rest.startswith("<tool_call>") else None
            if call is None:
                return None
            calls.append(call)
        return calls

    def _block_call(self, body: str) -> ToolCall | None:
        values, rest = _json_values(body)
        if len(values) != 1 or rest.strip():
            return None
        return _call_from_object(values[0], ("arguments", "parameters"))

    def call_rules(self, tool_schemas: list[dict], several: bool) -> str:
        start = 'start: block ("\\n" block)*' if several else "start: block"
        return f'{start}\nblock: "<tool_call>\\n" call "\\n</tool_call>"\n{self.call_rule(tool_schemas)}\n'


class Llama3JsonFormat(ToolCallFormat):
    """Llama 3.1-3.3: the whole message is `{"name": .., "parameters": {..}}` (several joined by `;`), optionally
    after `<|python_tag|>`."""

    name = "llama3_json"
    markers = ("<|python_tag|>", "{")
    at_start_only = True
    argument_key = "parameters"

    def calls(self, region: str, final: bool) -> list[ToolCall] | None:
        if region.startswith("<|python_tag|>"):
            region = region[len("<|python_tag|>"):]
        values, rest = _json_values(region, separators=";")
        calls = _calls_from_values(values, ("parameters", "arguments"))
        if final:
            return calls if calls and not rest.strip() else None
        return calls or []

    def call_rules(self, tool_schemas: list[dict], several: bool) -> str:
        start = 'start: call ("; " call)*' if several else "start: call"
        return f"{start}\n{self.call_rule(tool_schemas)}\n"


class MistralFormat(ToolCallFormat):
    """Mistral: `[TOOL_CALLS][{"name": .., "arguments": {..}}, ..]`, or (v11 tokenizers)
    `[TOOL_CALLS]name[ARGS]{..}` repeated."""

    name = "mistral"
    markers = ("[TOOL_CALLS]",)
    marker_is_special = True

    def calls(self, region: str, final: bool) -> list[ToolCall] | None:
        body = region[len("[TOOL_CALLS]"):].lstrip()
        if body.startswith("["):
            values, rest = _json_values(body)
            if not values:
                return None if final else []
            calls = _calls_from_values(values[0] if isinstance(values[0], list) else [None], ("arguments",))
            if final and (calls is None or not calls or rest.strip()):
                return None
            return calls or []
        return self._named_calls(region, final)

    def _named_calls(self, region: str, final: bool) -> list[ToolCall] | None:
        calls = []
        for segment in region.split("[TOOL_CALLS]")[1:]:
            name, found, arguments = segment.partition("[ARGS]")
            values, rest = _json_values(arguments)
            call = _call_from_object({"name": name.strip(), "arguments": values[0]}, ("arguments",)) \
                if found and len(values) == 1 and not rest.strip() else None
            if call is None:
                return None if final else calls
            calls.append(call)
        return calls if calls or not final else None

    def call_rules(self, tool_schemas: list[dict], several: bool) -> str:
        calls = 'call ("," call)*' if several else "call"
        return f'start: "[TOOL_CALLS][" {calls} "]"\n{self.call_rule(tool_schemas)}\n'


TOOL_CALL_FORMATS = {cls.name: cls for cls in (HermesFormat, Llama3JsonFormat, MistralFormat)}


def tool_call_format(name: str) -> ToolCallFormat:
    if name not in TOOL_CALL_FORMATS:
        raise ValueError(f"unknown tool-call parser {name!r}; use one of {sorted(TOOL_CALL_FORMATS)}")
    return TOOL_CALL_FORMATS[name]()


def detect_tool_call_format(template: str | None) -> str | None:
    """The format a chat template's source speaks, from its markers; None when it names none."""
    source = template or ""
    if "<tool_call>" in source:
        return "hermes"
    if "[TOOL_CALLS]" in source:
        return "mistral"
    if "<|python_tag|>" in source or ("<|start_header_id|>" in source and "parameters" in source):
        return "llama3_json"
    return None


def _held_back(text: str, markers: tuple[str, ...]) -> int:
    """How many trailing characters of `text` could begin a marker (kept back until the next delta decides)."""
    longest = 0
    for marker in markers:
        for size in range(min(len(marker) - 1, len(text)), longest, -1):
            if marker.startswith(text[-size:]):
                longest = size
                break
    return longest


class ToolCallStream:
    """Splits a growing text into content (sent as it comes, bar a possible marker's start) and tool calls (each
    sent once complete). A region that does not parse when the text ends is sent as content."""

    def __init__(self, fmt: ToolCallFormat):
        self.format = fmt
        self.text = ""
        self.sent = 0  # characters of content sent
        self.region: int | None = None  # where the tool-call region starts; None: not (yet) found
        self.plain = False  # no region can start any more (at_start_only formats)
        self.calls: list[ToolCall] = []

    def feed(self, delta: str) -> tuple[str, list[ToolCall]]:
        self.text += delta
        if self.region is None and not self.plain:
            self._find_region()
        if self.region is None:
            if self.format.at_start_only and not self.plain:  # undecided until the text can no longer be a call
                return "", []
            end = len(self.text) if self.plain else len(self.text) - _held_back(self.text, self.format.markers)
            return self._content_until(end), []
        content = self._content_until(self.region)
        return content, self._new_calls(self.format.calls(self.text[self.region:], final=False) or [])

    def finish(self) -> tuple[str, list[ToolCall]]:
        if self.region is None:
            return self._content_until(len(self.text)), []
        calls = self.format.calls(self.text[self.region:], final=True)
        if calls is None:
            if self.calls:  # calls already sent: what follows them is dropped
                return "", []
            return self._content_until(len(self.text)), []
        return "", self._new_calls(calls)

    def _find_region(self) -> None:
        markers = self.format.markers
        if self.format.at_start_only:
            stripped = self.text.lstrip()
            if any(stripped.startswith(marker) for marker in markers):
                self.region = len(self.text) - len(stripped)
            elif not any(marker.startswith(stripped) for marker in markers):
                self.plain = True
            return
        found = [index for index in (self.text.find(marker, self.sent) for marker in markers) if index >= 0]
        if found:
            self.region = min(found)

    def _content_until(self, end: int) -> str:
        content = self.text[self.sent:end] if end > self.sent else ""
        self.sent = max(self.sent, end)
        return content

    def _new_calls(self, calls: list[ToolCall]) -> list[ToolCall]:
        fresh = calls[len(self.calls):]
        self.calls.extend(fresh)
        return fresh


def parse_tool_calls(fmt: ToolCallFormat, text: str) -> tuple[str, list[ToolCall]]:
    """A finished text → (content, calls); the same split the stream makes."""
    stream = ToolCallStream(fmt)
    content, calls = stream.feed(text)
    rest, more = stream.finish()
    return content + rest, calls + more
