"""Turning conversations into prompt text with a chat template, the way transformers does.

Everything a template sees is rebuilt from plain JSON types first (rich objects such as tensors or
images carry methods the sandbox does not know are dangerous), reasoning fields are aliased under
the names templates read, and `continue_final_message` is done by tagging the last message, rendering,
and cutting the text at the tag so the model continues that message.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from typing import Any

from ..errors import ChatTemplateError
from .chat_template import render_template
from .tool_schema import function_tool_schema

REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "


def plain_template_data(value: Any) -> Any:
    """A copy of `value` made of str/int/float/bool/None/dict/list/tuple only; anything else becomes '<TypeName>'."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {plain_template_data(key): plain_template_data(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain_template_data(item) for item in value]
    if isinstance(value, tuple):
        return tuple(plain_template_data(item) for item in value)
    if type(value).__module__ == "numpy" and hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return plain_template_data(value.item())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: plain_template_data(getattr(value, field.name)) for field in dataclasses.fields(value)}
    if callable(getattr(value, "model_dump", None)):
        return plain_template_data(value.model_dump())
    return f"<{type(value).__name__}>"


def alias_reasoning_fields(messages: list) -> list:
    """Expose a message's reasoning as both `reasoning_content` and `thinking`, whichever name it came under."""
    aliased = []
    for message in messages:
        if isinstance(message, dict):
            reasoning = next((message[key] for key in REASONING_FIELDS if message.get(key) is not None), None)
            if reasoning is not None:
                message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        aliased.append(message)
    return aliased


def tool_schemas(tools) -> list | None:
    """Tools as JSON schemas: dicts are taken as they are, functions are described from hints and docstring."""
    if tools is None:
        return None
    schemas = []
    for tool in tools:
        if isinstance(tool, Mapping):
            schemas.append(tool)
        elif inspect.isfunction(tool) or inspect.ismethod(tool):
            schemas.append(function_tool_schema(tool))
        else:
            raise ChatTemplateError(
                f"a tool must be a JSON-schema dict or a documented, type-hinted function; got {type(tool).__name__}"
            )
    return schemas


def _tag_final_message(messages: list[dict], field: str, template: str) -> str:
    """Append the continue tag to the final message's `field`; returns the original text being continued."""
    final_text = messages[-1].get(field)
    if final_text is None:
        raise ChatTemplateError(f'continue_final_message is set but the final message has no "{field}" to continue')
    fields = [field]
    if field in REASONING_FIELDS:
        fields = [name for name in REASONING_FIELDS if messages[-1].get(name) == final_text]
    if not any(name in template for name in fields):
        raise ChatTemplateError(
            f'continue_final_message is set to "{field}" but the chat template never reads that field'
        )
    if isinstance(final_text, (list, tuple)):
        for block in reversed(final_text):
            if isinstance(block, dict) and "text" in block:
                original = block["text"]
                block["text"] = original + _CONTINUE_TAG
                return original
        raise ChatTemplateError("continue_final_message is set but the final message has no text block to continue")
    for name in fields:
        messages[-1][name] = messages[-1][name] + _CONTINUE_TAG
    return final_text


def _cut_at_continue_tag(rendered: str, final_text: str) -> str:
    tag = _CONTINUE_TAG.strip()
    if final_text.strip() not in rendered or tag not in rendered:
        raise ChatTemplateError(
            "continue_final_message is set but the final message does not appear in the rendered chat "
            "(the chat template drops or rewrites part of it)"
        )
    tag_position = rendered.rindex(tag)
    if rendered[tag_position:tag_position + len(_CONTINUE_TAG)] == _CONTINUE_TAG:
        return rendered[:tag_position]
    return rendered[:tag_position].rstrip()


def render_conversation(
    template: str,
    messages,
    *,
    tools=None,
    documents=None,
    add_generation_prompt: bool = False,
    continue_final_message: bool | str = False,
    track_generation: bool = False,
    variables: dict | None = None,
) -> tuple[str, list[tuple[int, int]]]:
    """Render one conversation; returns the prompt text and the character spans of `{% generation %}` blocks."""
    if documents is not None and not all(isinstance(document, Mapping) for document in documents):
        raise ChatTemplateError("documents must be a list of dicts (with 'title' and 'text' keys)")
    messages = plain_template_data(getattr(messages, "messages", messages))
    if not isinstance(messages, list) or not all(isinstance(message, dict) for message in messages):
        raise ChatTemplateError(f"chat messages must be dicts, got {messages!r}")
    messages = alias_reasoning_fields(messages)
    final_text = None
    if continue_final_message:
        if not messages:
            raise ChatTemplateError("continue_final_message is set but the conversation is empty")
        field = continue_final_message if isinstance(continue_final_message, str) else "content"
        final_text = _tag_final_message(messages, field, template)
    rendered, spans = render_template(
        template,
        track_generation=track_generation,
        messages=messages,
        tools=plain_template_data(tool_schemas(tools)),
        documents=plain_template_data(documents),
        add_generation_prompt=add_generation_prompt,
        **plain_template_data(variables or {}),
    )
    if final_text is not None:
        rendered = _cut_at_continue_tag(rendered, final_text)
    return rendered, spans
