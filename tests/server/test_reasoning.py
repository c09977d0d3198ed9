"""Reasoning split from `<think>…</think>` on fixed texts: whole and streamed in every split, both parser styles,
a prompt that already opened the tag, reasoning cut short by the budget, and detection from the template."""

import pytest

from tokenmill.server.reasoning import (ReasoningStream, check_reasoning_parser, detect_reasoning_parser,
                                        split_reasoning)

CASES = [
    ("qwen3", "", "<think>\nThe user greets.\n</think>\n\nHello!", "\nThe user greets.\n", "Hello!"),
    ("qwen3", "", "Hello, no thinking.", "", "Hello, no thinking."),
    ("qwen3", "<|im_start|>assistant\n<think>\n", "Pondering</think>Answer", "Pondering", "Answer"),
    ("qwen3", "", "<think>cut short by max_tokens", "cut short by max_tokens", ""),
    ("deepseek_r1", "", "Step 1, step 2.</think>\n\nThe answer is 4.", "Step 1, step 2.", "The answer is 4."),
    ("deepseek_r1", "", "<think>Step</think>4", "Step", "4"),
    ("deepseek_r1", "", "still thinking", "still thinking", ""),
    ("qwen3", "", "a < b, and <thinking> is not a tag", "", "a < b, and <thinking> is not a tag"),
]


@pytest.mark.parametrize("parser, prompt, text, reasoning, answer", CASES)
def test_whole_text(parser, prompt, text, reasoning, answer):
    assert split_reasoning(parser, text, prompt) == (reasoning, answer)


@pytest.mark.parametrize("parser, prompt, text, reasoning, answer", CASES)
def test_streamed_in_every_split(parser, prompt, text, reasoning, answer):
    for size in (1, 2, 5):
        stream = ReasoningStream(parser, prompt)
        pieces = [stream.feed(text[start:start + size]) for start in range(0, len(text), size)]
        pieces.append(stream.finish())
        assert "".join(p[0] for p in pieces) == reasoning
        assert "".join(p[1] for p in pieces) == answer


def test_answer_text_flows_before_the_end():
    stream = ReasoningStream("qwen3")
    assert stream.feed("<think>abc") == ("abc", "")
    assert stream.feed("</th") == ("", "")
    assert stream.feed("ink>Hi") == ("", "Hi")


def test_detection_and_names():
    assert detect_reasoning_parser("{{ '<think>' }}{{ reasoning }}{{ '</think>' }}") == "qwen3"
    assert detect_reasoning_parser("{{ '<|im_start|>' }}") is None
    assert check_reasoning_parser("deepseek_r1") == "deepseek_r1"
    with pytest.raises(ValueError, match="qwen3"):
        check_reasoning_parser("o1")


@pytest.mark.parametrize("parser, prompt, expected", [
    (None, "<think>", None),
    ("qwen3", "<|im_start|>assistant\n", "optional"),
    ("qwen3", "<|im_start|>assistant\n<think>\n", "open"),
    ("qwen3", "<|im_start|>assistant\n<think>\n\n</think>\n\n", None),  # thinking switched off by the template
    ("deepseek_r1", "<｜Assistant｜>", "open"),
])
def test_thinking_state_from_the_prompt(parser, prompt, expected):
    from tokenmill.server.reasoning import thinking_state

    assert thinking_state(parser, prompt) == expected
