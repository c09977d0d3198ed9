"""Tool-call parsing on fixed texts, per format: whole and streamed (in every split of the text, the stream
sends the same content and calls as the whole parse), malformed calls kept as content, template detection, and
the forcing grammars accepting exactly the call shapes."""

import json

import pytest

from tokenmill.server.tool_calls import (ToolCallStream, detect_tool_call_format, parse_tool_calls,
                                         tool_call_format)

WEATHER = {"city": "Paris", "unit": "celsius"}
CASES = [
    ("hermes", 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", '
               '"unit": "celsius"}}\n</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>',
     "Let me check.\n", [("get_weather", WEATHER), ("get_time", {})]),
    ("hermes", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}',
     "", [("get_weather", WEATHER)]),  # left unclosed at the end of the turn
    ("llama3_json", '{"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}; '
                    '{"name": "get_time", "parameters": {}}',
     "", [("get_weather", WEATHER), ("get_time", {})]),
    ("llama3_json", '<|python_tag|>{"name": "get_time", "parameters": {}}', "", [("get_time", {})]),
    ("mistral", 'Sure. [TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}, '
                '{"name": "get_time", "arguments": "{}"}]',
     "Sure. ", [("get_weather", WEATHER), ("get_time", {})]),
    ("mistral", '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris", "unit": "celsius"}[TOOL_CALLS]get_time[ARGS]{}',
     "", [("get_weather", WEATHER), ("get_time", {})]),
]


def _named(calls):
    return [(call.name, json.loads(call.arguments)) for call in calls]


@pytest.mark.parametrize("fmt, text, content, calls", CASES)
def test_whole_text(fmt, text, content, calls):
    parsed_content, parsed_calls = parse_tool_calls(tool_call_format(fmt), text)
    assert parsed_content == content
    assert _named(parsed_calls) == calls
    assert len({call.id for call in parsed_calls}) == len(parsed_calls)


@pytest.mark.parametrize("fmt, text, content, calls", CASES)
def test_streamed_in_every_split(fmt, text, content, calls):
    for size in (1, 3, 7):
        stream = ToolCallStream(tool_call_format(fmt))
        pieces, streamed = [], []
        for start in range(0, len(text), size):
            piece, new = stream.feed(text[start:start + size])
            pieces.append(piece)
            streamed += new
        piece, new = stream.finish()
        assert "".join(pieces) + piece == content
        assert _named(streamed + new) == calls


def test_hermes_call_sent_as_soon_as_its_block_closes():
    stream = ToolCallStream(tool_call_format("hermes"))
    content, calls = stream.feed('Hi <tool_call>{"name": "a", "arguments": {"x": 1}}</tool_call>')
    assert content == "Hi " and _named(calls) == [("a", {"x": 1})]
    assert stream.feed('\n<tool_call>{"name": "b", ') == ("", [])


def test_marker_start_held_back_then_released():
    stream = ToolCallStream(tool_call_format("hermes"))
    assert stream.feed("a <tool") == ("a ", [])
    assert stream.feed("kit") == ("<toolkit", [])


@pytest.mark.parametrize("fmt, text", [
    ("hermes", "I would call <tool_call>{not json}</tool_call>"),
    ("hermes", '<tool_call>{"arguments": {}}</tool_call>'),  # no name
    ("llama3_json", '{"answer": 42}'),  # JSON, but not a call
    ("llama3_json", '{"name": "f", "parameters": {"x": 1'),  # cut short
    ("mistral", "[TOOL_CALLS] nothing"),
])
def test_malformed_calls_stay_content(fmt, text):
    assert parse_tool_calls(tool_call_format(fmt), text) == (text, [])


def test_llama3_text_answer_streams_at_once():
    stream = ToolCallStream(tool_call_format("llama3_json"))
    assert stream.feed("  ") == ("", [])
    assert stream.feed("Hello") == ("  Hello", [])


@pytest.mark.parametrize("template, expected", [
    ("{% for tool in tools %}{{ tool | tojson }}{% endfor %}<tool_call>\n{...}\n</tool_call>", "hermes"),
    ("{{ '[AVAILABLE_TOOLS]' }}{{ '[TOOL_CALLS]' }}", "mistral"),
    ("<|start_header_id|>ipython<|end_header_id|>{{ '<|python_tag|>' }}", "llama3_json"),
    ("{{ '<|im_start|>' + message['role'] }}", None),
    (None, None),
])
def test_detected_from_the_template(template, expected):
    assert detect_tool_call_format(template) == expected


def test_unknown_parser_named():
    with pytest.raises(ValueError, match="hermes"):
        tool_call_format("nope")


@pytest.mark.parametrize("fmt, good, bad", [
    ("hermes", '<tool_call>\n{"name":"get_weather","arguments":{"city":"Paris"}}\n</tool_call>',
     '<tool_call>\n{"name":"get_weather","arguments":{"town":"Paris"}}\n</tool_call>'),
    ("llama3_json", '{"name":"get_weather","parameters":{"city":"Paris"}}',
     '{"name":"get_time","parameters":{"city":"Paris"}}'),
    ("mistral", '[TOOL_CALLS][{"name":"get_weather","arguments":{"city":"Paris"}}]',
     '[TOOL_CALLS][{"name":"get_weather","arguments":{}}]'),
])
def test_forcing_grammar_accepts_only_valid_calls(fmt, good, bad):
    import llguidance
    tool = {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                  "required": ["city"], "additionalProperties": False}}
    grammar = llguidance.LLMatcher.grammar_from_lark(tool_call_format(fmt).grammar([tool], several=False))
    tokenizer = llguidance.LLTokenizer("byte")  # one token per byte: the matcher sees the text itself
    for text, accepted in ((good, True), (bad, False)):
        matcher = llguidance.LLMatcher(tokenizer, grammar)
        consumed = matcher.try_consume_tokens(list(text.encode()))
        assert (consumed == len(text.encode()) and matcher.is_accepting()) == accepted, text


@pytest.mark.parametrize("thinking, text, accepted", [
    ("optional", '<think>\nweather, so call it</think>\n\n<tool_call>\n{"name":"f","arguments":{}}\n</tool_call>',
     True),
    ("optional", '<tool_call>\n{"name":"f","arguments":{}}\n</tool_call>', True),
    ("optional", 'plain words <tool_call>\n{"name":"f","arguments":{}}\n</tool_call>', False),
    ("open", 'still reasoning</think>\n<tool_call>\n{"name":"f","arguments":{}}\n</tool_call>', True),
    ("open", '<tool_call>\n{"name":"f","arguments":{}}\n</tool_call>', False),  # the reasoning must close first
    (None, '<think>x</think><tool_call>\n{"name":"f","arguments":{}}\n</tool_call>', False),
])
def test_forcing_grammar_lets_the_model_reason_first(thinking, text, accepted):
    import llguidance

    tool = {"name": "f", "parameters": {"type": "object", "properties": {}, "additionalProperties": False}}
    grammar = llguidance.LLMatcher.grammar_from_lark(tool_call_format("hermes").grammar([tool], False, thinking))
    matcher = llguidance.LLMatcher(llguidance.LLTokenizer("byte"), grammar, log_level=0)
    consumed = matcher.try_consume_tokens(list(text.encode()))
    assert (consumed == len(text.encode()) and matcher.is_accepting()) == accepted


@pytest.mark.parametrize("fmt, text", [
    ("hermes", '<tool_call>\n{"name":"f","arguments":{"x":1}}\n</tool_call>\n'
               '<tool_call>\n{"name":"g","arguments":{}}\n</tool_call>'),
    ("llama3_json", '{"name":"f","parameters":{"x":1}}; {"name":"g","parameters":{}}'),
    ("mistral", '[TOOL_CALLS][{"name":"f","arguments":{"x":1}},{"name":"g","arguments":{}}]'),
])
def test_what_the_grammar_forces_parses_back(fmt, text):
    """Several calls in the forcing grammar's own shape: accepted by it, and read back by the same format."""
    import llguidance

    tools = [{"name": "f", "parameters": {"type": "object", "properties": {"x": {"type": "integer"}},
                                          "required": ["x"], "additionalProperties": False}},
             {"name": "g", "parameters": {"type": "object", "properties": {}, "additionalProperties": False}}]
    format_ = tool_call_format(fmt)
    grammar = llguidance.LLMatcher.grammar_from_lark(format_.grammar(tools, several=True))
    matcher = llguidance.LLMatcher(llguidance.LLTokenizer("byte"), grammar, log_level=0)
    assert matcher.try_consume_tokens(list(text.encode())) == len(text.encode()) and matcher.is_accepting()
    assert _named(parse_tool_calls(format_, text)[1]) == [("f", {"x": 1}), ("g", {})]
