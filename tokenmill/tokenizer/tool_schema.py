"""A Python function as a tool JSON schema, from its type hints and Google-style docstring (transformers' format).

    def get_weather(city: str, unit: str = "celsius"):
        '''Weather now in a city.

        Args:
            city: The city name
            unit: Temperature unit (choices: ["celsius", "fahrenheit"])
        '''

becomes {"type": "function", "function": {"name": "get_weather", "description": "Weather now in a city.",
"parameters": {"type": "object", "properties": {...}, "required": ["city"]}}}.
"""

from __future__ import annotations

import inspect
import json
import re
import types
from enum import Enum
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from ..errors import ChatTemplateError

JSON_SCALAR_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean", type(None): "null"}
_BARE_TYPE_SCHEMAS = {
    int: {"type": "integer"}, float: {"type": "number"}, str: {"type": "string"}, bool: {"type": "boolean"},
    type(None): {"type": "null"}, list: {"type": "array"}, tuple: {"type": "array"}, dict: {"type": "object"},
    Any: {},
}
_SECTIONS = {"Args:": "args", "Returns:": "returns", "Raises:": "raises"}
_ARGUMENT_LINE = re.compile(r"([ \t]*)(\w+):\s*(.*)")
_CHOICES = re.compile(r"\(choices:\s*(.*?)\)\s*$", re.IGNORECASE)


def _enum_schema(values: list) -> dict:
    """{"type": the JSON type(s) of the values in order of first appearance, "enum": values}."""
    json_types = list(dict.fromkeys(JSON_SCALAR_TYPES[type(value)] for value in values))
    return {"type": json_types[0] if len(json_types) == 1 else json_types, "enum": values}


def type_hint_schema(hint) -> dict:
    """The JSON schema of one type hint; custom classes are refused rather than guessed."""
    origin, args = get_origin(hint), get_args(hint)
    if origin is None:
        if isinstance(hint, type) and issubclass(hint, Enum):
            return _enum_from_class(hint)
        try:
            schema = _BARE_TYPE_SCHEMAS.get(hint)
        except TypeError:  # unhashable hint
            schema = None
        if schema is None:
            raise ChatTemplateError(f"cannot turn the type hint {hint!r} into a JSON schema; write the tool's schema "
                                    "by hand (supported: basic types, Enum, Literal, list/tuple/dict/Union of those)")
        return dict(schema)
    if origin is Union or origin is types.UnionType:
        return _union_schema(args)
    if origin is Literal and args:
        if any(type(value) not in JSON_SCALAR_TYPES for value in args):
            raise ChatTemplateError(f"Literal values must be JSON scalars, got {args!r}")
        return _enum_schema(list(args))
    if origin is list:
        return {"type": "array", "items": type_hint_schema(args[0])} if args else {"type": "array"}
    if origin is tuple:
        return _tuple_schema(hint, args)
    if origin is dict:
        return {"type": "object", "additionalProperties": type_hint_schema(args[1])} if len(args) == 2 \
            else {"type": "object"}
    raise ChatTemplateError(f"cannot turn the type hint {hint!r} into a JSON schema")


def _enum_from_class(enum_class: type[Enum]) -> dict:
    values = [member.value for member in enum_class]
    if not values:
        raise ChatTemplateError(f"the Enum {enum_class.__name__} has no members")
    if any(type(value) not in JSON_SCALAR_TYPES for value in values):
        raise ChatTemplateError(f"the Enum {enum_class.__name__} has values that are not JSON scalars: {values}")
    return _enum_schema(values)


def _union_schema(args: tuple) -> dict:
    members = [type_hint_schema(arg) for arg in args if arg is not type(None)]
    if len(members) == 1:
        schema = members[0]
    elif all(member.keys() == {"type"} and isinstance(member["type"], str) for member in members):
        names = sorted({member["type"] for member in members})
        schema = {"type": names[0] if len(names) == 1 else names}
    else:
        schema = {"anyOf": members}
    if type(None) in args:
        schema["nullable"] = True
    return schema


def _tuple_schema(hint, args: tuple) -> dict:
    if not args:
        return {"type": "array"}
    if len(args) == 1:
        raise ChatTemplateError(f"{hint!r} is a one-element tuple; use list[...] or the element type itself")
    if ... in args:
        raise ChatTemplateError(f"{hint!r}: variable-length tuples are not supported, use list[...]")
    return {"type": "array", "prefixItems": [type_hint_schema(arg) for arg in args]}


def split_google_docstring(docstring: str) -> tuple[str, dict[str, str], str | None]:
    """(description, {argument: description}, returns text or None) of a Google-style docstring."""
    sections: dict[str, list[str]] = {"description": []}
    current = "description"
    for line in docstring.split("\n"):
        heading = _SECTIONS.get(line.strip())
        if heading is not None:
            current = heading
            sections[current] = []
        else:
            sections[current].append(line)
    description = "\n".join(sections["description"]).strip()
    returns = "\n".join(sections["returns"]).strip() if "returns" in sections else None
    return description, _argument_descriptions(sections.get("args", [])), returns


def _argument_descriptions(lines: list[str]) -> dict[str, str]:
    """`name: text` entries; a line indented deeper than its entry continues it."""
    entries: dict[str, list[str]] = {}
    current_name, current_indent = None, -1
    for line in (line for line in lines if line.strip()):
        match = _ARGUMENT_LINE.match(line)
        if match and (current_name is None or len(match.group(1)) <= current_indent):
            current_name, current_indent = match.group(2), len(match.group(1))
            entries[current_name] = [match.group(3)]
        elif current_name is not None:
            entries[current_name].append(line)
    return {name: " ".join(part.strip() for part in parts if part.strip()) for name, parts in entries.items()}


def _parameters_schema(function) -> dict:
    hints = get_type_hints(function)
    parameters = list(inspect.signature(function).parameters.values())
    receiver = parameters[0].name if parameters and parameters[0].name in ("self", "cls") \
        and parameters[0].annotation is inspect.Parameter.empty else None
    name = getattr(function, "__name__", "operation")
    required = []
    for parameter in parameters:
        if parameter.name == receiver:
            continue
        if parameter.annotation is inspect.Parameter.empty:
            raise ChatTemplateError(f"argument {parameter.name!r} of tool {name} has no type hint")
        if parameter.default is inspect.Parameter.empty:
            required.append(parameter.name)
    properties = {}
    for argument, hint in hints.items():
        if argument == receiver:
            continue
        if argument != "return":
            properties[argument] = type_hint_schema(hint)
            continue
        try:  # the model never writes the return value; an odd return hint is simply left out
            properties[argument] = type_hint_schema(hint)
        except ChatTemplateError:
            pass
    schema = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema


def function_tool_schema(function) -> dict:
    """The tool schema of a documented, type-hinted function (see the module docstring for the format)."""
    name = getattr(function, "__name__", "operation")
    docstring = inspect.getdoc(function)
    if not docstring:
        raise ChatTemplateError(f"tool {name} has no docstring to describe it")
    description, argument_texts, returns_text = split_google_docstring(docstring.strip())
    parameters = _parameters_schema(function)
    returns = parameters["properties"].pop("return", None)
    if returns is not None and returns_text is not None:
        returns["description"] = returns_text
    for argument, schema in parameters["properties"].items():
        if argument not in argument_texts:
            raise ChatTemplateError(f"the docstring of tool {name} does not describe argument {argument!r}")
        text = argument_texts[argument]
        choices = _CHOICES.search(text)
        if choices:
            schema["enum"] = [value.strip() if isinstance(value, str) else value
                              for value in json.loads(choices.group(1))]
            text = text[:choices.start()].strip()
        schema["description"] = text
    function_schema = {"name": name, "description": description, "parameters": parameters}
    if returns is not None:
        function_schema["return"] = returns
    return {"type": "function", "function": function_schema}
