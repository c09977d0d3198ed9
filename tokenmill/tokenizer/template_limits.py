"""Size limits inside the chat-template sandbox: no value a template builds may grow past `MAX_VALUE_CHARS`.

A loop budget does not bound memory: ten doublings of a string with `~` or `+`, `'x'.ljust(10**9)`,
`indent(10**9)`, `lipsum(10**6)` or a list of a million references to one long string turned into text each
allocate gigabytes in one step. Every operation that can grow text or lists this way is checked here,
*before* it runs, from sizes that are cheap to know (lengths, counts, widths), and refused with a
`ChatTemplateError` naming the operation and the limit.
"""

from __future__ import annotations

import functools
from typing import Any

import jinja2.filters
import jinja2.utils
from jinja2.compiler import CodeGenerator, Frame
from jinja2.nodes import Concat
from jinja2.utils import generate_lorem_ipsum

from ..errors import ChatTemplateError

MAX_VALUE_CHARS = 8_000_000  # the rendered-output limit: no intermediate value needs to be larger
MAX_WALKED_ITEMS = 1_000_000  # the `*` result limit: a container with more items is refused unseen
MAX_LIPSUM_PARAGRAPHS = 100
MAX_LIPSUM_WORDS = 1000
MAX_JSON_INDENT = 64
_SHORT_SCALARS = frozenset((int, float, bool, type(None)))  # an int past 20 digits needs `**`, which is bounded
# str methods whose first argument is the width of the result
_WIDTH_METHODS = frozenset(("ljust", "rjust", "center", "zfill"))


def refuse_oversized(what: str, size: int) -> None:
    if size > MAX_VALUE_CHARS:
        raise ChatTemplateError(f"chat template: {what} would build a value of {size} characters or items or more "
                                f"(limit {MAX_VALUE_CHARS})")


def text_size(value: Any, limit: int | None = None) -> int:
    """About how many characters `str(value)` has (containers walked); past `limit` characters or
    `MAX_WALKED_ITEMS` items it stops and answers more than `limit`, so it never costs more than that walk."""
    limit = MAX_VALUE_CHARS if limit is None else limit
    total, walked, pending = 0, 0, [value]
    while pending:
        if total > limit or walked > MAX_WALKED_ITEMS:
            return max(total, limit + 1)
        item = pending.pop()
        walked += 1
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, (list, tuple, set, frozenset, dict)):
            if len(item) > MAX_WALKED_ITEMS:
                return max(total + len(item), limit + 1)
            total += 2 + 2 * len(item)
            if isinstance(item, dict):
                pending.extend(item.items())
                continue
            kinds = set(map(type, item))  # flat lists are measured at C speed, not item by item
            if kinds <= {str}:
                total += sum(map(len, item))
            elif kinds <= _SHORT_SCALARS:
                total += 8 * len(item)
            else:
                pending.extend(item)
        elif isinstance(item, int) and not isinstance(item, bool):
            total += max(item.bit_length(), 1) * 3 // 10 + 1
        else:
            total += 8  # floats, None, booleans, objects with a short repr
    return total


def check_binop(operator_name: str, left: Any, right: Any) -> None:
    """`+` of two strings or lists is as big as both; `*` of a list repeats its items' text (the item count
    alone is bounded by the caller): `[long_text] * 10**6` is refused here, not when it is printed."""
    if operator_name == "+" and isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
        refuse_oversized("'+'", text_size(left) + text_size(right))
    if operator_name == "*":
        for sequence, count in ((left, right), (right, left)):
            if isinstance(sequence, (list, tuple)) and isinstance(count, int) and not isinstance(count, bool):
                refuse_oversized("'*'", text_size(sequence) * max(count, 0))


def checked_concat(parts: tuple) -> str:
    """`a ~ b ~ c`: every part becomes text, so the result is the sum of their text sizes."""
    total = 0
    for part in parts:
        total += text_size(part, MAX_VALUE_CHARS - total)
        refuse_oversized("'~'", total)
    return "".join(str(part) for part in parts)


def finalize_output(value: Any) -> Any:
    """`{{ value }}`: a container is turned into text; refuse one whose text would be huge before `str()`."""
    if not isinstance(value, str):
        refuse_oversized("printing a value", text_size(value))
    return value


def check_method_call(method: Any, args: tuple, kwargs: dict) -> None:
    """str methods that grow their result from an argument: widths, tab sizes, replacements, joins."""
    owner = getattr(method, "__self__", None)
    if not isinstance(owner, str):
        return
    name = getattr(method, "__name__", "")
    if name in _WIDTH_METHODS and args and isinstance(args[0], int):
        refuse_oversized(f"str.{name}({args[0]})", args[0])
    elif name == "expandtabs":
        tab = args[0] if args and isinstance(args[0], int) else kwargs.get("tabsize", 8)
        refuse_oversized("str.expandtabs", len(owner) + owner.count("\t") * max(tab, 0) if isinstance(tab, int) else 0)
    elif name == "replace" and len(args) >= 2:
        refuse_oversized("str.replace", _replaced_size(owner, args[0], args[1], args[2] if len(args) > 2 else -1))
    elif name == "join" and args:
        refuse_oversized("str.join", _joined_size(owner, args[0]))


def _replaced_size(text: Any, old: Any, new: Any, count: Any) -> int:
    if not (isinstance(text, str) and isinstance(old, str) and isinstance(new, str)):
        return 0
    occurrences = len(text) + 1 if old == "" else text.count(old)
    if isinstance(count, int) and count >= 0:
        occurrences = min(occurrences, count)
    return len(text) + occurrences * max(len(new) - len(old), 0)


def _joined_size(separator: str, items: Any) -> int:
    if not isinstance(items, (list, tuple, set, frozenset, dict)):
        return 0  # a generator or another iterable: its items were each built under these same checks
    return text_size(list(items)) + len(separator) * len(items)


# ---- filters and globals --------------------------------------------------------------------------


def lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:  # noqa: A002 - jinja's names
    """Jinja's `lipsum`, with at most `MAX_LIPSUM_PARAGRAPHS` paragraphs of `MAX_LIPSUM_WORDS` words."""
    if not all(isinstance(value, int) for value in (n, min, max)):
        raise ChatTemplateError("chat template: lipsum takes whole numbers")
    if n > MAX_LIPSUM_PARAGRAPHS or max > MAX_LIPSUM_WORDS or min > MAX_LIPSUM_WORDS:
        raise ChatTemplateError(f"chat template: lipsum(n={n}, min={min}, max={max}) is over the limit of "
                                f"{MAX_LIPSUM_PARAGRAPHS} paragraphs of {MAX_LIPSUM_WORDS} words")
    return generate_lorem_ipsum(n=n, html=html, min=min, max=max)


def indent_filter(text: Any, width: int | str = 4, first: bool = False, blank: bool = False) -> str:
    prefix_size = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
    refuse_oversized(f"indent of width {prefix_size}", len(str(text)) + (str(text).count("\n") + 1) * prefix_size)
    return jinja2.filters.do_indent(text, width, first, blank)


def replace_filter(eval_ctx, text: Any, old: str, new: str, count: int | None = None) -> str:
    refuse_oversized("replace", _replaced_size(str(text), old, new, -1 if count is None else count))
    return jinja2.filters.do_replace(eval_ctx, text, old, new, count)


def join_filter(eval_ctx, value: Any, d: str = "", attribute=None) -> str:
    if attribute is None:
        refuse_oversized("join", _joined_size(str(d), value))
    return jinja2.filters.sync_do_join(eval_ctx, value, d, attribute)


def wordwrap_filter(environment, text: Any, width: int = 79, break_long_words: bool = True,
                    wrapstring: str | None = None, break_on_hyphens: bool = True) -> str:
    size, wraps = len(str(text)), str(text).count("\n") + 1
    breaks = size // width + wraps if isinstance(width, int) and width > 0 else size + wraps
    refuse_oversized("wordwrap", size + breaks * len(str(wrapstring or environment.newline_sequence)))
    return jinja2.filters.do_wordwrap(environment, text, width, break_long_words, wrapstring, break_on_hyphens)


def batch_filter(value: Any, linecount: int, fill_with: Any = None):
    if fill_with is not None and isinstance(linecount, int):
        refuse_oversized(f"batch({linecount}) with a fill value", linecount)
    return jinja2.filters.do_batch(value, linecount, fill_with)


def slice_filter(value: Any, slices: int, fill_with: Any = None):
    if isinstance(slices, int):
        refuse_oversized(f"slice({slices})", slices * 8)  # a loop per slice: held far below the size limit
    return jinja2.filters.sync_do_slice(value, slices, fill_with)


def sum_filter(environment, iterable: Any, attribute=None, start: Any = 0):
    if not isinstance(start, (int, float)) and attribute is None:  # summing lists concatenates them
        refuse_oversized("sum of sequences", text_size(start) + text_size(list(iterable)))
    return jinja2.filters.sync_do_sum(environment, iterable, attribute, start)


def check_json(value: Any, indent: Any) -> None:
    """`tojson`: a sane indent (each nesting level repeats it on every line) and a value of sane size."""
    indent_size = len(indent) if isinstance(indent, str) else indent if isinstance(indent, int) else 0
    if indent_size > MAX_JSON_INDENT:
        raise ChatTemplateError(f"chat template: tojson indent {indent_size} is over the limit of {MAX_JSON_INDENT}")
    refuse_oversized("tojson", text_size(value) * (2 if indent_size else 1))


def size_guarded(name: str, function):
    """A filter that first refuses a container input whose text would be huge (most filters call `str()`)."""
    skip = 1 if jinja2.utils._PassArg.from_obj(function) else 0

    @functools.wraps(function)  # keeps jinja's pass_eval_context / pass_environment marker
    def guarded(*args, **kwargs):
        if len(args) > skip and not isinstance(args[skip], str):
            refuse_oversized(f"the {name} filter's input", text_size(args[skip]))
        return function(*args, **kwargs)

    return guarded


def sized_filters(filters: dict) -> dict:
    """Every filter size-guarded, and those that grow their result from a parameter checked for it too."""
    growing = {
        "indent": indent_filter,
        "replace": jinja2.filters.pass_eval_context(replace_filter),
        "join": jinja2.filters.pass_eval_context(join_filter),
        "wordwrap": jinja2.filters.pass_environment(wordwrap_filter),
        "batch": batch_filter,
        "slice": slice_filter,
        "sum": jinja2.filters.pass_environment(sum_filter),
    }
    return {name: size_guarded(name, growing.get(name, function)) for name, function in filters.items()}


class SizedCodeGenerator(CodeGenerator):
    """Jinja's code generator with `~` compiled to `environment.checked_concat(...)` instead of a plain join."""

    def visit_Concat(self, node: Concat, frame: Frame) -> None:  # noqa: N802 - jinja's visitor name
        self.write("environment.checked_concat((")
        for argument in node.nodes:
            self.visit(argument, frame)
            self.write(", ")
        self.write("))")
