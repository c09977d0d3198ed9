"""Per-sequence text: byte-safe incremental decoding and stop strings, with the real SmolLM2 tokenizer."""

import pytest

from tokenmill.engine.detokenize import SequenceText


@pytest.fixture(scope="module")
def tokenizer(smollm2_gguf):
    from tokenmill.auto import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_gguf)


def _stream(tokenizer, text, stop=(), include_stop=False):
    ids = tokenizer.encode(text, add_special_tokens=False)
    state = SequenceText(tokenizer, list(stop), skip_special_tokens=True, include_stop=include_stop)
    deltas = []
    for end in range(1, len(ids) + 1):
        state.add(ids[:end])
        deltas.append(state.take_delta(final=False))
        if state.stopped_by:
            break
    state.finish(ids[:end])
    deltas.append(state.take_delta(final=True))
    return deltas, state


def test_multibyte_characters_never_stream_half_decoded(tokenizer):
    text = "Café 東京 🤖🎉 naïve — ok"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) > len(text.split())  # some characters span several byte-level tokens
    deltas, _ = _stream(tokenizer, text)
    assert all("\ufffd" not in delta for delta in deltas), deltas
    assert "".join(deltas) == tokenizer.decode(ids)


@pytest.mark.parametrize("include_stop, expected", [(False, "The answer is 42"), (True, "The answer is 42.\n\n")])
def test_stop_string_truncates_and_is_never_streamed_early(tokenizer, include_stop, expected):
    deltas, state = _stream(tokenizer, "The answer is 42.\n\nNext question", stop=[".\n\n"],
                            include_stop=include_stop)
    assert state.stopped_by == ".\n\n"
    assert "".join(deltas) == expected == state.text
    # deltas[-2] is the step that found the stop string, deltas[-1] the final flush
    assert all("." not in delta for delta in deltas[:-2]), "a possible stop-string prefix was streamed early"


def test_the_held_back_overlap_is_the_longest_text_end_that_begins_a_stop_string():
    """Checked against its definition on every short text and stop string over two letters."""
    import itertools

    from tokenmill.engine.detokenize import _overlap

    def by_definition(text, stop):
        return max([size for size in range(1, min(len(stop) - 1, len(text)) + 1) if text.endswith(stop[:size])],
                   default=0)

    words = ["".join(w) for n in range(7) for w in itertools.product("ab", repeat=n)]
    for text in words:
        for stop in words[1:]:
            assert _overlap(text, stop) == by_definition(text, stop), (text, stop)
