"""Chat templates: Jinja rendered in a locked-down sandbox, with transformers' globals and filters.

Chat templates ship with checkpoints and are untrusted code. They run in an
`ImmutableSandboxedEnvironment`; on top of that this module

* raises `ChatTemplateError` as soon as a template touches an unsafe attribute (``__class__``,
  ``__globals__``, ``list.append`` ...), where plain Jinja would hand back a silent undefined value;
* bounds the work one render may do: `MAX_RENDER_STEPS` steps (each attribute access, item access, call,
  ``range`` item and output chunk is one; a deterministic limit), `MAX_RENDER_SECONDS` of wall time as a
  backstop for single slow steps (checked at every step), `MAX_RENDERED_CHARS` of output,
  ``*`` / ``**`` results of at most `MAX_OPERATOR_RESULT` items or digits, and no field width of a
  million or more in ``%`` / ``|format`` / ``str.format`` / ``|center`` (each would allocate it);
* bounds the memory one step may take: ``+``, ``~``, padding and replacing str methods, growing filters
  (``indent``, ``join``, ``replace``, ``batch`` ...), ``lipsum`` and printing a container are checked against
  `template_limits.MAX_VALUE_CHARS` before they run (see template_limits);
* turns every failure inside the template (syntax, ``raise_exception``, sandbox, runaway
  recursion, type errors) into a `ChatTemplateError` that says what went wrong.
"""

from __future__ import annotations

import contextvars
import json
import operator
import re
import time
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.exceptions import SecurityError, TemplateError, TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment, safe_range

from ..errors import ChatTemplateError
from . import template_limits

MAX_RENDER_STEPS = 20_000_000  # a few seconds of Jinja; real templates take thousands
MAX_RENDER_SECONDS = 10.0
MAX_RENDERED_CHARS = 8_000_000  # ~2M tokens: beyond any context window, far below a memory problem
MAX_OPERATOR_RESULT = 1_000_000  # longest str/list a template may build with `*`, most digits with `**`
_RANGE_CHECK_EVERY = 1024
# A width or precision of a million or more, in a printf-style spec and in a str.format spec.
_HUGE_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(?:\d{7,}|\d*\.\d{7,})")
_HUGE_BRACE_SPEC = re.compile(r"\{[^{}]*:[^{}]*\d{7,}[^{}]*\}")
_NESTED_BRACE_SPEC = re.compile(r"\{[^{}]*:[^{}]*\{")  # a width taken from the arguments: '{:{}}'.format(s, w)


@dataclass
class RenderBudget:
    """What one render may still spend; lives in a context variable while the render runs."""

    deadline: float
    max_chars: int
    steps_left: int

    def spend(self, steps: int = 1) -> None:
        """Account for `steps` units of template work; raise once the step or time budget is gone."""
        self.steps_left -= steps
        if self.steps_left < 0:
            raise ChatTemplateError(
                f"chat template rendering took more than {MAX_RENDER_STEPS} steps (runaway loop?)"
            )
        if time.monotonic() > self.deadline:
            raise ChatTemplateError(
                f"chat template rendering took longer than {MAX_RENDER_SECONDS:g} s (runaway loop?)"
            )


_active_budget: contextvars.ContextVar[RenderBudget | None] = contextvars.ContextVar(
    "tokenmill_chat_template_budget", default=None
)


def _spend_budget(steps: int = 1) -> None:
    budget = _active_budget.get()
    if budget is not None:
        budget.spend(steps)


class _BudgetedRange:
    """`range` for templates: the sandbox's size limit, each item spending one step of the render budget."""

    def __init__(self, *args: int):
        self._range = safe_range(*args)

    def __iter__(self):
        for position, value in enumerate(self._range):
            if position % _RANGE_CHECK_EVERY == 0:  # spent in batches: a check per item would double the cost
                _spend_budget(min(_RANGE_CHECK_EVERY, len(self._range) - position))
            yield value

    def __len__(self) -> int:
        return len(self._range)

    def __getitem__(self, index):
        return self._range[index]

    def __reversed__(self):
        return reversed(self._range)

    def __contains__(self, value) -> bool:
        return value in self._range


def _refuse_huge_format(format_text: Any, pattern: re.Pattern, arguments: Any = ()) -> None:
    """Refuse a format string whose field widths (literal, or `*` taken from the arguments) reach a million."""
    if not isinstance(format_text, str):
        return
    star_values = arguments if isinstance(arguments, (tuple, list)) else (arguments,)
    huge_star = "*" in format_text and any(
        isinstance(value, int) and abs(value) > MAX_OPERATOR_RESULT for value in star_values)
    if huge_star or pattern.search(format_text):
        raise SecurityError(f"format string {format_text[:80]!r} asks for a field of a million characters or more")


def _checked_format_filter(value, *args, **kwargs) -> str:
    _refuse_huge_format(value, _HUGE_PERCENT_SPEC, args)
    template_limits.refuse_oversized("format", len(str(value)) + template_limits.text_size((args, kwargs)))
    return jinja2.filters.do_format(value, *args, **kwargs)


def _checked_center_filter(value, width: int = 80) -> str:
    if isinstance(width, int) and width > MAX_OPERATOR_RESULT:
        raise SecurityError(f"center width {width} is over the limit of {MAX_OPERATOR_RESULT}")
    return jinja2.filters.do_center(value, width)


def _operator_result_size(operator_name: str, left: Any, right: Any) -> int:
    """How big `left <op> right` would be (items for sequences, decimal digits for powers); 0 if cheap."""
    if operator_name == "*":
        for sequence, count in ((left, right), (right, left)):
            if isinstance(sequence, (str, list, tuple)) and isinstance(count, int):
                return len(sequence) * max(count, 0)
        return 0
    if operator_name == "**" and isinstance(left, int) and isinstance(right, int) and right > 0:
        return int(right * max(abs(left), 2).bit_length() * 0.302) + 1
    return 0


class ChatTemplateEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox, made strict about unsafe attributes and aware of the per-render budget."""

    intercepted_binops = frozenset(["*", "**", "%", "+"])
    code_generator_class = template_limits.SizedCodeGenerator  # `~` runs through checked_concat

    def unsafe_undefined(self, obj: Any, attribute: str):
        raise SecurityError(
            f"access to attribute {attribute!r} of {type(obj).__name__!r} object is not allowed in a chat template"
        )

    def call_binop(self, context, operator_name: str, left: Any, right: Any) -> Any:
        size = _operator_result_size(operator_name, left, right)
        if size > MAX_OPERATOR_RESULT:
            raise SecurityError(
                f"'{operator_name}' would build a value of size {size} (limit {MAX_OPERATOR_RESULT})"
            )
        template_limits.check_binop(operator_name, left, right)
        if operator_name == "+":
            return operator.add(left, right)
        if operator_name == "%":
            _refuse_huge_format(left, _HUGE_PERCENT_SPEC, right)
            if isinstance(left, str):
                template_limits.refuse_oversized("'%'", len(left) + template_limits.text_size(right))
            return operator.mod(left, right)
        return operator.mul(left, right) if operator_name == "*" else operator.pow(left, right)

    def wrap_str_format(self, value: Any):
        """`'...'.format(...)` runs through jinja's sandboxed formatter, after a check of its widths."""
        sandboxed_format = super().wrap_str_format(value)
        if sandboxed_format is None:
            return None

        def checked_format(*args, **kwargs):
            _refuse_huge_format(value.__self__, _HUGE_BRACE_SPEC)
            if _NESTED_BRACE_SPEC.search(str(value.__self__)) and any(
                    isinstance(argument, int) and abs(argument) > MAX_OPERATOR_RESULT
                    for argument in (*args, *kwargs.values())):
                raise SecurityError(f"format string {value.__self__[:80]!r} takes a width of a million or more "
                                    f"from its arguments")
            template_limits.refuse_oversized("str.format", len(value.__self__) + template_limits.text_size(
                (args, kwargs)))
            return sandboxed_format(*args, **kwargs)

        return checked_format

    def getattr(self, obj: Any, attribute: str) -> Any:
        _spend_budget()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _spend_budget()
        return super().getitem(obj, argument)

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - jinja's own signature
        _spend_budget()
        template_limits.check_method_call(__obj, args, kwargs)
        return super().call(__context, __obj, *args, **kwargs)

    def checked_concat(self, parts: tuple) -> str:
        """What `a ~ b` compiles to (template_limits.SizedCodeGenerator)."""
        return template_limits.checked_concat(parts)


class GenerationBlock(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}`: marks assistant text; records its character span when tracking."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render_generation"), [], [], body).set_lineno(lineno)

    def _render_generation(self, caller) -> str:
        text = caller()
        tracker = _active_generation_tracker.get()
        if tracker is not None:
            start = sum(len(block) for block in tracker.rendered_blocks)
            tracker.spans.append((start, start + len(text)))
        return text


@dataclass
class _GenerationTracker:
    rendered_blocks: list[str]
    spans: list[tuple[int, int]]


_active_generation_tracker: contextvars.ContextVar[_GenerationTracker | None] = contextvars.ContextVar(
    "tokenmill_generation_tracker", default=None
)


def raise_exception(message: str):
    """Global for templates: `{{ raise_exception('...') }}` aborts the render with that message."""
    raise ChatTemplateError(f"chat template raised an error: {message}")


def tojson(value: Any, ensure_ascii: bool = False, indent=None, separators=None, sort_keys: bool = False) -> str:
    """transformers' `tojson`: plain `json.dumps` (no HTML escaping), unicode kept, options exposed."""
    template_limits.check_json(value, indent)
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def strftime_now(date_format: str) -> str:
    """Global for templates: the local time now, formatted (templates put today's date in system prompts)."""
    return datetime.now().strftime(date_format)


class TemplateDict:
    """`dict` for templates: builds plain dicts without exposing the `dict` type itself."""

    def __call__(self, *args, **kwargs) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, keys, value=None) -> dict:
        return dict.fromkeys(keys, value)


class TemplateNamespace(jinja2.utils.Namespace):
    """`namespace()` for templates, refusing underscore-prefixed names (which could shadow internals)."""

    def __init__(*args, **kwargs):  # noqa: N805 - same signature trick as jinja's Namespace
        self, args = args[0], args[1:]
        attributes = dict(*args, **kwargs)
        for name in attributes:
            TemplateNamespace._refuse_private(name)
        jinja2.utils.Namespace.__init__(self, attributes)

    def __setitem__(self, name, value):
        TemplateNamespace._refuse_private(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _refuse_private(name) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise SecurityError(f"a chat template namespace cannot hold the underscore-prefixed name {name!r}")


@lru_cache(maxsize=1)
def chat_environment() -> ChatTemplateEnvironment:
    """The one shared environment every chat template is compiled in."""
    environment = ChatTemplateEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationBlock, jinja2.ext.loopcontrols],
        finalize=template_limits.finalize_output,
    )
    environment.filters.update(tojson=tojson, format=_checked_format_filter, center=_checked_center_filter)
    environment.filters = template_limits.sized_filters(environment.filters)
    environment.globals.update(
        raise_exception=raise_exception,
        strftime_now=strftime_now,
        range=_BudgetedRange,
        dict=TemplateDict(),
        namespace=TemplateNamespace,
        lipsum=template_limits.lipsum,
    )
    return environment


@lru_cache(maxsize=64)
def compile_chat_template(source: str) -> jinja2.Template:
    """Compile once per distinct template text; a syntax error becomes a `ChatTemplateError` naming the line."""
    if not isinstance(source, str):
        raise ChatTemplateError(f"a chat template must be a string, got {type(source).__name__}")
    try:
        return chat_environment().from_string(source)
    except TemplateSyntaxError as error:
        raise ChatTemplateError(f"chat template has a syntax error on line {error.lineno}: {error.message}") from error
    except TemplateError as error:
        raise ChatTemplateError(f"chat template could not be compiled: {error}") from error


def render_template(source: str, track_generation: bool = False, **variables) -> tuple[str, list[tuple[int, int]]]:
    """Render `source` with `variables` inside the budget; returns the text and the `{% generation %}` spans."""
    template = compile_chat_template(source)
    budget = RenderBudget(deadline=time.monotonic() + MAX_RENDER_SECONDS, max_chars=MAX_RENDERED_CHARS,
                          steps_left=MAX_RENDER_STEPS)
    tracker = _GenerationTracker(rendered_blocks=[], spans=[]) if track_generation else None
    budget_token = _active_budget.set(budget)
    tracker_token = _active_generation_tracker.set(tracker)
    try:
        return _render_chunks(template, budget, tracker, variables), (tracker.spans if tracker else [])
    except ChatTemplateError:
        raise
    except SecurityError as error:
        raise ChatTemplateError(f"chat template tried to leave its sandbox: {error}") from error
    except TemplateError as error:
        raise ChatTemplateError(f"chat template failed to render: {error}") from error
    except RecursionError as error:
        raise ChatTemplateError("chat template recursed too deeply") from error
    except Exception as error:
        raise ChatTemplateError(f"chat template failed to render: {type(error).__name__}: {error}") from error
    finally:
        _active_generation_tracker.reset(tracker_token)
        _active_budget.reset(budget_token)


def _render_chunks(template: jinja2.Template, budget: RenderBudget, tracker, variables: dict) -> str:
    chunks = tracker.rendered_blocks if tracker is not None else []
    total = 0
    for chunk in template.generate(**variables):
        total += len(chunk)
        if total > budget.max_chars:
            raise ChatTemplateError(f"chat template output exceeds {budget.max_chars} characters")
        budget.spend()
        chunks.append(chunk)
    return "".join(chunks)
