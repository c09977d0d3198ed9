"""Request bodies parsed as the JSON standard (RFC 8259) defines it, so nothing past the parser needs to guard:
UTF-8 only, no NaN/Infinity literals or numbers beyond float range, every string valid Unicode (no lone
surrogate from a `\\ud800` escape: it breaks the tokenizer and the reply's encoding), nesting within a bound.

A violation raises `json.JSONDecodeError`, which FastAPI answers as an invalid body in each API's shape.
"""

from __future__ import annotations

import json
import math
import re

from fastapi import Request
from fastapi.routing import APIRoute

MAX_NESTING = 64  # arrays and objects; the deepest legitimate body (a JSON schema) is far shallower
# the only way a surrogate reaches a str: a \uD800-\uDFFF escape (strict UTF-8 decoding refuses encoded ones)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def parse_json(body: bytes):
    """The body's value; json.JSONDecodeError naming the problem."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise json.JSONDecodeError(f"it must be UTF-8 encoded JSON (byte 0x{body[error.start]:02x} at position "
                                   f"{error.start} is not UTF-8)", repr(body[:64]), error.start) from None
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise json.JSONDecodeError(f"nested more than {MAX_NESTING} levels deep", text, 0) from None
    except json.JSONDecodeError:
        raise
    except ValueError as error:  # an integer of more digits than Python converts
        raise json.JSONDecodeError(str(error), text, 0) from None
    check_values(value, text, strings=bool(_SURROGATE_ESCAPE.search(text)))
    return value


def check_values(value, text: str, strings: bool = True) -> None:
    """Nesting within MAX_NESTING and (with `strings`) every key and string encodable as UTF-8."""
    pending = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, str):
            if strings:
                _check_text(item, text)
            continue
        if not isinstance(item, (dict, list)):
            continue
        if depth >= MAX_NESTING:
            raise json.JSONDecodeError(f"nested more than {MAX_NESTING} levels deep", text, 0)
        if isinstance(item, dict):
            for key, child in item.items():
                if strings:
                    _check_text(key, text)
                pending.append((child, depth + 1))
        else:
            pending.extend((child, depth + 1) for child in item)


def _check_text(item: str, text: str) -> None:
    try:
        item.encode("utf-8")
    except UnicodeEncodeError as error:
        code = ord(item[error.start])
        match = re.search(rf"\\u{code:04x}", text, re.IGNORECASE)
        raise json.JSONDecodeError(
            f"a string holds a lone surrogate (\\u{code:04x}), which is not Unicode text; send the character "
            f"itself as UTF-8 or escape it as a surrogate pair", text, match.start() if match else 0) from None


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON value; numbers must be finite")


def _finite_float(literal: str) -> float:
    number = float(literal)
    if not math.isfinite(number):
        raise ValueError(f"the number {literal[:40]} is beyond the float range")
    return number


class StrictJSONRequest(Request):
    async def json(self):
        if not hasattr(self, "_json"):
            self._json = parse_json(await self.body())
        return self._json


class StrictJSONRoute(APIRoute):
    """A route whose JSON body goes through `parse_json`."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def strict_handler(request: Request):
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return strict_handler
