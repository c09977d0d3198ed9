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


class ByteTokenizer:
    """One token per byte (ids 0-255) and one special token: enough to pin SequenceText's own logic, fast."""

    SPECIAL = 256

    def decode(self, ids, skip_special_tokens=False, **kwargs):
        pieces = []
        for token in ids:
            if token == self.SPECIAL:
                if not skip_special_tokens:
                    pieces.append(b"<s>")
            else:
                pieces.append(bytes([token]))
        return b"".join(pieces).decode("utf-8", errors="replace")


def _ids(text: str) -> list[int]:
    return list(text.encode())


def _text(stop=(), include_stop=False, skip_special_tokens=True):
    return SequenceText(ByteTokenizer(), list(stop), skip_special_tokens=skip_special_tokens,
                        include_stop=include_stop)


@pytest.mark.parametrize("skip, expected", [(True, "ab"), (False, "a<s>b")])
def test_special_tokens_follow_skip_special_tokens(skip, expected):
    state = _text(skip_special_tokens=skip)
    ids = [ord("a"), ByteTokenizer.SPECIAL, ord("b")]
    state.add(ids)
    state.finish(ids)
    assert state.take_delta(final=True) == expected


def test_finish_appends_an_incomplete_character_as_a_replacement():
    state = _text()
    state.add(_ids("ab"))
    ids = _ids("ab") + [0xE6]  # the first byte of a three-byte character
    state.add(ids)
    assert state.text == "ab"
    state.finish(ids)
    assert state.text == "ab\ufffd" and state.take_delta(final=True) == "ab\ufffd"


def test_a_stop_string_at_the_very_start_and_the_first_of_two_occurrences():
    state = _text(stop=["ab"])
    state.add(_ids("abcd"))
    assert (state.stopped_by, state.text) == ("ab", "")
    state = _text(stop=["."])
    state.add(_ids("x.y.z"))
    assert (state.stopped_by, state.text) == (".", "x")


def test_text_is_held_back_only_while_it_may_begin_a_stop_string():
    state = _text(stop=["xyz"])
    ids = _ids("abc")
    state.add(ids)
    assert state.take_delta(final=False) == "abc"  # no stop prefix at the end: nothing held
    ids += _ids("x")
    state.add(ids)
    assert state.take_delta(final=False) == ""  # "x" may begin "xyz"
    state.finish(ids)
    assert state.take_delta(final=True) == "x"  # the end: nothing is held back any more


def test_once_stopped_the_whole_text_is_released_before_the_end():
    state = _text(stop=["aa"], include_stop=True)
    state.add(_ids("xaab"))
    assert state.stopped_by == "aa"
    assert state.take_delta(final=False) == "xaa"
