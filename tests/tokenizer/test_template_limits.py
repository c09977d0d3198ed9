"""Memory bounds inside the chat-template sandbox: each way a template could build gigabytes in one step is
refused before it allocates, with a ChatTemplateError naming the operation and the limit. No wall clock here:
each case is refused by a size computed before the work, so the tests are deterministic and take milliseconds."""

from __future__ import annotations

import pytest

from tokenmill.errors import ChatTemplateError
from tokenmill.tokenizer import template_limits
from tokenmill.tokenizer.chat_template import render_template
from tokenmill.tokenizer.template_limits import MAX_VALUE_CHARS, text_size


def render(source: str, **variables) -> str:
    return render_template(source, messages=[], **variables)[0]


DOUBLING = "{% set ns = namespace(v=SEED) %}{% for i in range(60) %}{% set ns.v = ns.v OP ns.v %}{% endfor %}{{ ns.v }}"


@pytest.mark.parametrize("seed, op", [("'x'", "~"), ("'x'", "+"), ("[1]", "+"), ("['abc']", "+"), ("[[1, 2]]", "+")])
def test_doubling_strings_and_lists_is_refused(seed, op):
    """60 doublings would be 2^60 items; the step past the limit is refused, the ones before it ran."""
    with pytest.raises(ChatTemplateError, match=rf"'{'[~]' if op == '~' else '[+]'}' would build a value of \d+ .*"
                                                 rf"\(limit {MAX_VALUE_CHARS}\)"):
        render(DOUBLING.replace("SEED", seed).replace("OP", op))


@pytest.mark.parametrize("source, what", [
    ("{{ lipsum(n=10**6) }}", r"lipsum\(n=1000000, min=20, max=100\) is over the limit of 100 paragraphs"),
    ("{{ lipsum(2, max=10**9) }}", "lipsum.*over the limit"),
    ("{{ 'x'.ljust(10**9) }}", r"str.ljust\(1000000000\) would build"),
    ("{{ 'x'.rjust(1000000000) }}", r"str.rjust\(1000000000\)"),
    ("{{ 'x'.center(10**9) }}", r"str.center\(1000000000\)"),
    ("{{ 'x'.zfill(10**9) }}", r"str.zfill\(1000000000\)"),
    ("{{ 'a\tb'.expandtabs(10**9) }}", "str.expandtabs would build"),
    ("{{ 'a\nb' | indent(10**9) }}", "indent of width 1000000000 would build"),
    ("{{ ('a\n' * 100) | indent(' ' * 999999) }}", "indent of width 999999 would build a value of 101"),
    ("{{ '{:{}}'.format('x', 10**9) }}", "takes a width of a million or more"),
    ("{{ '{:>{w}}'.format('x', w=10**9) }}", "takes a width of a million or more"),
    ("{{ '%*s' | format(10**9, 'x') }}", "million"),
    ("{{ ['x' * 1000000] * 1000000 }}", r"'\*' would build a value of 1000004000000"),
    ("{{ (('x' * 1000000) ~ '').replace('x', 'y' * 10) }}", "str.replace would build"),
    ("{{ ('x' * 1000000) | replace('x', 'yyyyyyyyyy') }}", "replace would build"),
    ("{{ ('x' * 1000000) | wordwrap(1, wrapstring='yyyyyyyyyy') }}", "wordwrap would build"),
    ("{{ ('y' * 100).join(['x'] * 100000) }}", "str.join would build"),
    ("{{ (['x'] * 100000) | join('y' * 100) }}", "join would build"),
    ("{{ [1] | batch(10**9, 'x') | list }}", r"batch\(1000000000\) with a fill value"),
    ("{{ [1] | slice(10**9) | list }}", r"slice\(1000000000\)"),
    ("{{ {'a': [1, [2]]} | tojson(indent=10**9) }}", "tojson indent 1000000000 is over the limit of 64"),
    ("{% set s = 'x' * 1000000 %}{{ '%s%s%s%s%s%s%s%s%s' % (s, s, s, s, s, s, s, s, s) }}", r"'%' would build"),
])
def test_each_growing_operation_is_refused_before_it_runs(source, what):
    with pytest.raises(ChatTemplateError, match=what):
        render(source)


def test_large_values_handed_in_are_refused_when_a_template_would_turn_them_into_text(monkeypatch):
    monkeypatch.setattr(template_limits, "MAX_VALUE_CHARS", 1000)
    big = [{"role": "user", "content": "x" * 600}] * 2
    for source, what in (("{{ big }}", "printing a value"), ("{{ big | string }}", "the string filter's input"),
                         ("{{ big | tojson }}", "the tojson filter's input"), ("{{ big ~ '' }}", "'~'"),
                         ("{{ big | map(attribute='content') | join }}", "the map filter's input"),
                         ("{{ big | sum(start=[]) }}", "sum filter's input")):
        with pytest.raises(ChatTemplateError, match=f"{what}.*limit 1000"):
            render(source, big=big)


def test_ordinary_templates_are_untouched():
    source = ("{{ 'hi' ~ 3 ~ [1, 2] }}|{{ 'a' + 'b' }}|{{ [1] + [2] }}|{{ '%s-%d' % ('a', 3) }}|{{ 'x'.ljust(3) }}|"
              "{{ 'a\nb' | indent(2) }}|{{ [1, 2, 3] | batch(2, 0) | list }}|{{ 'a b c' | wordwrap(2) }}|"
              "{{ lipsum(1, html=False) | length > 0 }}|{{ {'k': [1]} | tojson(indent=2) }}|"
              "{{ ['a', 'b'] | join(', ') }}|{{ 'a-b' | replace('-', '+') }}|{{ '{:>4}'.format(7) }}|{{ [[1], [2]] | sum(start=[]) }}")
    assert render(source) == ("hi3[1, 2]|ab|[1, 2]|a-3|x  |a\n  b|[[1, 2], [3, 0]]|a\nb\nc|True|"
                              '{\n  "k": [\n    1\n  ]\n}|a, b|a+b|   7|[1, 2]')


def test_a_long_conversation_within_the_output_limit_still_renders():
    content = "word " * 200_000  # a million characters, as a long-context prompt could be
    source = "{% for m in messages %}{{ '<|' + m.role + '|>' + m.content + '<|end|>' }}{% endfor %}{{ messages | tojson | length > 0 }}"
    text, _ = render_template(source, messages=[{"role": "user", "content": content}] * 3)
    assert len(text) == 3 * (len(content) + len("<|user|><|end|>")) + len("True")


def test_text_size_walks_containers_and_stops_past_the_limit():
    assert text_size("abc") == 3
    assert text_size(["ab", "c"]) == 2 + 2 * 2 + 3
    assert text_size({"k": "vv"}) == 2 + 2 + (2 + 2 * 2 + 1 + 2)
    assert text_size([1] * 5, limit=10) == 2 + 2 * 5 + 8 * 5
    nested = [["x" * 100]] * 50
    assert text_size(nested, limit=1000) > 1000
    assert text_size([0] * (template_limits.MAX_WALKED_ITEMS + 1)) > MAX_VALUE_CHARS
