"""apply_chat_template vs transformers (real SmolLM2 template + templates of our own) and the sandbox's guards."""

from __future__ import annotations

import time
from enum import Enum
from typing import Any, Literal

import pytest
import torch

from tokenmill.errors import ChatTemplateError
from tokenmill.tokenizer import Tokenizer
from tokenmill.tokenizer import chat_template as chat_template_module
from tokenmill.tokenizer.chat_template import compile_chat_template

SINGLE = [{"role": "user", "content": "What is 2+2?"}]
MULTI = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi! 👋"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Tell me about café culture\nin two lines."},
]
PREFILL = [*SINGLE, {"role": "assistant", "content": "The answer is"}]

TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city — «quoted» ünïcode",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}]
TOOLS_TEMPLATE = (
    "{% if tools %}<tools>{{ tools | tojson }}</tools>\n"
    "<pretty>{{ tools[0] | tojson(indent=2, sort_keys=True) }}</pretty>\n"
    "<compact>{{ tools[0].function | tojson(separators=(',', ':'), ensure_ascii=True) }}</compact>\n"
    "{% endif %}"
    "{% if documents %}{% for doc in documents %}[{{ doc.title }}] {{ doc.text }}\n{% endfor %}{% endif %}"
    "{% for message in messages %}{{ bos_token }}{{ message['role'] }}: {{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}{% if add_generation_prompt %}{{ bos_token }}assistant: {% endif %}"
)
FEATURES_TEMPLATE = (
    "{% set ns = namespace(count=0) %}{% for message in messages %}"
    "{% if message.role == 'system' %}{% continue %}{% endif %}"
    "{% set ns.count = ns.count + 1 %}{{ loop.index }}:{{ message.content | trim }}"
    "{% if ns.count >= 2 %}{% break %}{% endif %}\n{% endfor %}"
    "{{ dict(a=1, b=[1, 2]) | tojson }} {{ dict.fromkeys(['x', 'y'], 0) | tojson }} "
    "{{ (messages | length) * 2 }} {{ range(3) | list }} {{ extra_variable | default('none') }} "
    "{{ message_count if message_count is defined else '' }}{{ reasoning_note | default('') }}"
    "{% if messages[-1].reasoning_content is defined %}R={{ messages[-1].reasoning_content }}{% endif %}"
)
GENERATION_TEMPLATE = (
    "{% for message in messages %}<{{ message.role }}>"
    "{% if message.role == 'assistant' %}{% generation %}{{ message.content }}<|im_end|>{% endgeneration %}"
    "{% else %}{{ message.content }}<|im_end|>{% endif %}\n{% endfor %}"
)


@pytest.fixture(scope="module")
def tokenizer(hf_smollm2_tokenizer, tmp_path_factory) -> Tokenizer:
    folder = tmp_path_factory.mktemp("oracle_chat_tokenizer")
    hf_smollm2_tokenizer.save_pretrained(folder)
    return Tokenizer.from_folder(folder)


def as_lists(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if hasattr(value, "items"):
        return {key: as_lists(item) for key, item in value.items()}
    return value


def both(ours, theirs, *args, **kwargs):
    """Call apply_chat_template on both with the same arguments; return plain results."""
    return as_lists(ours.apply_chat_template(*args, **kwargs)), as_lists(theirs.apply_chat_template(*args, **kwargs))


@pytest.mark.parametrize("conversation", [SINGLE, MULTI, PREFILL], ids=["single", "multi", "prefill"])
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_smollm2_template_matches(tokenizer, hf_smollm2_tokenizer, conversation, add_generation_prompt):
    for kwargs in (dict(tokenize=False), dict(), dict(return_dict=False), dict(return_tensors="pt"),
                   dict(return_tensors="pt", return_dict=False)):
        ours, theirs = both(tokenizer, hf_smollm2_tokenizer, conversation,
                            add_generation_prompt=add_generation_prompt, **kwargs)
        assert ours == theirs, kwargs


def test_return_types(tokenizer):
    assert isinstance(tokenizer.apply_chat_template(SINGLE, tokenize=False), str)
    assert isinstance(tokenizer.apply_chat_template(SINGLE, return_dict=False), list)
    encoded = tokenizer.apply_chat_template(SINGLE, return_tensors="pt")
    assert encoded["input_ids"].shape == encoded["attention_mask"].shape and encoded["input_ids"].shape[0] == 1


def test_continue_final_message_matches(tokenizer, hf_smollm2_tokenizer):
    for kwargs in (dict(tokenize=False), dict(return_dict=False)):
        ours, theirs = both(tokenizer, hf_smollm2_tokenizer, PREFILL, continue_final_message=True, **kwargs)
        assert ours == theirs
    text = tokenizer.apply_chat_template(PREFILL, continue_final_message=True, tokenize=False)
    assert text.endswith("The answer is") and not text.endswith("<|im_end|>\n")
    blocks = [*SINGLE, {"role": "assistant", "content": [{"type": "text", "text": "Partial "}]}]
    template = "{% for m in messages %}{{ m.role }}: {% for b in m.content %}{{ b.text if b is mapping else b }}" \
               "{% endfor %}<end>\n{% endfor %}"
    ours, theirs = both(tokenizer, hf_smollm2_tokenizer, blocks, chat_template=template, continue_final_message=True,
                        tokenize=False)
    assert ours == theirs and ours.endswith("Partial ")


def test_continue_final_message_errors(tokenizer, hf_smollm2_tokenizer):
    with pytest.raises(ChatTemplateError, match="cannot be combined"):
        tokenizer.apply_chat_template(PREFILL, continue_final_message=True, add_generation_prompt=True)
    with pytest.raises(ValueError):
        hf_smollm2_tokenizer.apply_chat_template(PREFILL, continue_final_message=True, add_generation_prompt=True)
    dropping = "{% for m in messages %}{{ m.role }}{% endfor %}"
    with pytest.raises(ChatTemplateError, match="never reads"):
        tokenizer.apply_chat_template(PREFILL, chat_template=dropping, continue_final_message=True)
    with pytest.raises(ChatTemplateError, match="empty conversation"):
        tokenizer.apply_chat_template([])


@pytest.mark.parametrize("side", ["left", "right"])
def test_batched_conversations(tokenizer, hf_smollm2_tokenizer, side):
    batch = [SINGLE, MULTI, PREFILL]
    tokenizer.padding_side = hf_smollm2_tokenizer.padding_side = side
    try:
        for kwargs in (dict(tokenize=False), dict(return_dict=False), dict(padding=True, return_tensors="pt"),
                       dict(padding=True, truncation=True, max_length=20), dict(padding="max_length", max_length=80)):
            ours, theirs = both(tokenizer, hf_smollm2_tokenizer, batch, add_generation_prompt=True, **kwargs)
            assert ours == theirs, kwargs
    finally:
        tokenizer.padding_side = hf_smollm2_tokenizer.padding_side = "right"


def test_tools_documents_and_tojson(tokenizer, hf_smollm2_tokenizer):
    documents = [{"title": "Doc A", "text": "alpha"}, {"title": "Doc B", "text": "beta"}]
    for kwargs in (dict(tokenize=False), dict(return_dict=False), dict(return_tensors="pt")):
        ours, theirs = both(tokenizer, hf_smollm2_tokenizer, MULTI, tools=TOOLS, documents=documents,
                            chat_template=TOOLS_TEMPLATE, add_generation_prompt=True, **kwargs)
        assert ours == theirs
    text = tokenizer.apply_chat_template(SINGLE, tools=TOOLS, chat_template=TOOLS_TEMPLATE, tokenize=False)
    assert "«quoted» ünïcode" in text and '\\u00ab' in text  # ensure_ascii=False by default, True when asked
    ours, theirs = both(tokenizer, hf_smollm2_tokenizer, MULTI, tools=TOOLS, add_generation_prompt=True,
                        tokenize=False)
    assert ours == theirs  # the real template ignores tools


def test_template_features_and_kwargs(tokenizer, hf_smollm2_tokenizer):
    conversation = [*MULTI, {"role": "assistant", "content": "ok", "reasoning": "thought", "tool_calls": None}]
    for kwargs in (dict(), dict(extra_variable="given", message_count=7)):
        ours, theirs = both(tokenizer, hf_smollm2_tokenizer, conversation, chat_template=FEATURES_TEMPLATE,
                            tokenize=False, **kwargs)
        assert ours == theirs
    assert "R=thought" in ours and "given" in ours


def test_named_templates(tokenizer, hf_smollm2_tokenizer):
    templates = {"default": "D:{{ messages[0].content }}", "tool_use": "T:{{ tools | length }}"}
    saved_ours, saved_theirs = tokenizer.chat_template, hf_smollm2_tokenizer.chat_template
    tokenizer.chat_template = hf_smollm2_tokenizer.chat_template = templates
    try:
        for kwargs in (dict(), dict(tools=TOOLS), dict(chat_template="tool_use", tools=[])):
            ours, theirs = both(tokenizer, hf_smollm2_tokenizer, SINGLE, tokenize=False, **kwargs)
            assert ours == theirs, kwargs
    finally:
        tokenizer.chat_template, hf_smollm2_tokenizer.chat_template = saved_ours, saved_theirs


def test_strftime_now_matches(tokenizer, hf_smollm2_tokenizer):
    template = "{{ strftime_now('%Y-%m-%d') }}|{{ strftime_now('%B %d, %Y') }}"
    ours, theirs = both(tokenizer, hf_smollm2_tokenizer, SINGLE, chat_template=template, tokenize=False)
    assert ours == theirs and ours.split("|")[0] == time.strftime("%Y-%m-%d")


def test_generation_blocks_give_assistant_masks(tokenizer, hf_smollm2_tokenizer):
    for conversation in (MULTI + [{"role": "assistant", "content": "Fine."}], [MULTI, PREFILL]):
        kwargs = dict(chat_template=GENERATION_TEMPLATE, return_assistant_tokens_mask=True, return_dict=True)
        if isinstance(conversation[0], list):
            kwargs.update(padding=True, return_tensors="pt")
        ours, theirs = both(tokenizer, hf_smollm2_tokenizer, conversation, **kwargs)
        assert ours == theirs and any(as_lists(ours["assistant_masks"]))


def test_raise_exception(tokenizer):
    template = "{% if messages[0].role != 'system' %}{{ raise_exception('Conversations must start with system') }}" \
               "{% endif %}ok"
    with pytest.raises(ChatTemplateError, match="Conversations must start with system"):
        tokenizer.apply_chat_template(SINGLE, chat_template=template)
    assert tokenizer.apply_chat_template(MULTI, chat_template=template, tokenize=False) == "ok"


@pytest.mark.parametrize("template", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ''.__class__ }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ lipsum.__globals__['os'] }}",
    "{{ joiner.__init__.__globals__.os.system('echo pwned') }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ raise_exception.__globals__ }}",
    "{{ messages | attr('__class__') }}",
    "{{ self.__init__.__globals__ }}",
    "{{ messages.append({'role': 'x'}) }}",
    "{{ '{0.__class__}'.format(messages) }}",
    "{% set ns = namespace(_secret=1) %}",
    "{{ messages[0]['__class__'] }}",
    "{{ strftime_now.__globals__ }}",
])
def test_sandbox_escapes_raise(tokenizer, template):
    with pytest.raises(ChatTemplateError, match="sandbox|not allowed|unsafe|underscore"):
        tokenizer.apply_chat_template(SINGLE, chat_template=template, tokenize=False)


@pytest.mark.parametrize("template, problem", [
    ("{% for m in messages %}{{ m.content }}", "endfor"),
    ("{{ messages[0].content ", "line 1"),
    ("{% if x %}a{% elif %}b{% endif %}", "syntax error"),
    ("{% generation %}unclosed", "endgeneration"),
    ("{{ 1 + }}\n", "line 1"),
])
def test_syntax_errors_name_the_problem(tokenizer, template, problem):
    with pytest.raises(ChatTemplateError, match=problem):
        tokenizer.apply_chat_template(SINGLE, chat_template=template, tokenize=False)


def test_runaway_templates_are_stopped(tokenizer, monkeypatch):
    with pytest.raises(ChatTemplateError, match="size"):
        tokenizer.apply_chat_template(SINGLE, chat_template="{{ 'x' * 10**9 }}", tokenize=False)
    with pytest.raises(ChatTemplateError, match="size"):
        tokenizer.apply_chat_template(SINGLE, chat_template="{{ 7 ** 1000000000 }}", tokenize=False)
    for huge in ("{{ '%1000000000s' % 'x' }}", "{{ '%.2000000000f' | format(1.5) }}", "{{ '%*d' % (10**9, 1) }}",
                 "{{ '%(a)-1000000000s' % {'a': 1} }}",
                 "{{ '{:>1000000000}'.format('x') }}", "{{ 'x' | center(1000000000) }}"):
        with pytest.raises(ChatTemplateError, match="million|limit"):
            tokenizer.apply_chat_template(SINGLE, chat_template=huge, tokenize=False)
    assert tokenizer.apply_chat_template(SINGLE, chat_template="{{ '%5s|%.2f' % ('ab', 1.5) }}{{ '{:>4}'.format(7) }}"
                                         "{{ '%03d' | format(7) }}{{ 'x' | center(5) }}{{ 'id 12345678 %s' % 1 }}"
                                         "{{ 'n={} 99999999'.format(1) }}{{ 10 % 100000000 }}", tokenize=False) == \
        "   ab|1.50   7007  x  id 12345678 1n=1 9999999910"
    with pytest.raises(ChatTemplateError, match="Range too big"):
        tokenizer.apply_chat_template(SINGLE, chat_template="{% for i in range(10**9) %}{% endfor %}")
    with pytest.raises(ChatTemplateError, match="more than 20000000 steps"):  # the default step budget
        tokenizer.apply_chat_template(
            SINGLE, chat_template="{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}")
    monkeypatch.setattr(chat_template_module, "MAX_RENDERED_CHARS", 10_000)
    with pytest.raises(ChatTemplateError, match="exceeds 10000 characters"):
        tokenizer.apply_chat_template(SINGLE, chat_template="{% for i in range(99999) %}abcdef{% endfor %}")
    with pytest.raises(ChatTemplateError, match="recursed too deeply|failed to render"):
        tokenizer.apply_chat_template(SINGLE, chat_template="{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}")


def test_step_budget_counts_every_range_item(tokenizer, monkeypatch):
    monkeypatch.setattr(chat_template_module, "MAX_RENDER_STEPS", 3000)
    # one step for the call to range, one per item, one for the output chunk: 2998 items fit 3000 steps, 2999 do not
    assert tokenizer.apply_chat_template(SINGLE, chat_template="{% for i in range(2998) %}{% endfor %}ok",
                                         tokenize=False) == "ok"
    with pytest.raises(ChatTemplateError, match="more than 3000 steps"):
        tokenizer.apply_chat_template(SINGLE, chat_template="{% for i in range(2999) %}{% endfor %}ok", tokenize=False)
    with pytest.raises(ChatTemplateError, match="more than 3000 steps"):  # attribute access and calls count too
        tokenizer.apply_chat_template(
            SINGLE, chat_template="{% for m in messages * 3000 %}{{ m.role.upper() }}{% endfor %}", tokenize=False)


def test_wall_time_backstop_on_a_fake_clock(tokenizer, monkeypatch):
    ticks = iter(range(0, 10**6, 5))  # every reading of the clock is 5 s later than the one before

    monkeypatch.setattr(chat_template_module, "time", type("FakeTime", (), {"monotonic": lambda: next(ticks)}))
    with pytest.raises(ChatTemplateError, match="longer than 10 s"):
        tokenizer.apply_chat_template(SINGLE, chat_template="{% for m in messages %}{{ m.role }}{% endfor %}" * 5,
                                      tokenize=False)


def test_template_errors_are_wrapped(tokenizer):
    with pytest.raises(ChatTemplateError, match="failed to render"):
        tokenizer.apply_chat_template(SINGLE, chat_template="{{ messages[0].content + 1 }}")
    with pytest.raises(ChatTemplateError, match="failed to render"):
        tokenizer.apply_chat_template(SINGLE, chat_template="{{ missing.attribute }}")
    with pytest.raises(ChatTemplateError, match="no chat template"):
        Tokenizer(tokenizer.backend_tokenizer).apply_chat_template(SINGLE)
    with pytest.raises(ChatTemplateError, match="JSON-schema dict"):
        tokenizer.apply_chat_template(SINGLE, tools=[print], chat_template=TOOLS_TEMPLATE)


def test_compiled_templates_are_cached():
    source = "{{ messages | length }}"
    assert compile_chat_template(source) is compile_chat_template(source)
    assert compile_chat_template(source + " ") is not compile_chat_template(source)


class Unit(Enum):
    CELSIUS = "celsius"
    KELVIN = "kelvin"


def get_weather(city: str, unit: Unit, days: int | None = None, detail: Literal["low", 2] = "low",
                tags: list[str] | None = None, box: tuple[int, float] = (1, 2.0), extra: dict[str, Any] = None,
                mode: str = "fast") -> dict[str, float]:
    """
    Weather for a city,
    over the coming days.

    Args:
        city: The city name,
            possibly with a country
        unit: The temperature unit
        days: How many days ahead
        detail: How much detail
        tags: Free-form labels
        box: A bounding box
        extra: Anything else
        mode: Speed of lookup (choices: ["fast", "slow"])

    Returns:
        A mapping of
        day to temperature.
    """


class Calculator:
    def multiply(self, x: float, y: float | int) -> float:
        """Multiply two numbers.

        Args:
            x: First factor
            y: Second factor
        """
        return x * y


def no_docstring(x: int):
    pass


def undocumented_argument(x: int, y: int):
    """Adds.

    Args:
        x: first
    """


def test_function_tools_match_transformers_schemas(tokenizer, hf_smollm2_tokenizer):
    from transformers.utils import get_json_schema

    from tokenmill.tokenizer.tool_schema import function_tool_schema

    for tool in (get_weather, Calculator().multiply):
        assert function_tool_schema(tool) == get_json_schema(tool)
    template = "{{ tools | tojson(indent=1) }}{% for m in messages %}{{ m.content }}{% endfor %}"
    ours, theirs = both(tokenizer, hf_smollm2_tokenizer, SINGLE, tools=[get_weather, TOOLS[0]],
                        chat_template=template, tokenize=False)
    assert ours == theirs
    for bad, problem in ((no_docstring, "no docstring"), (undocumented_argument, "does not describe")):
        with pytest.raises(ChatTemplateError, match=problem):
            tokenizer.apply_chat_template(SINGLE, tools=[bad], chat_template=template)
