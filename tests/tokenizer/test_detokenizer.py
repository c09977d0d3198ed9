"""IncrementalDetokenizer: byte-safe pieces that join up to tokenizer.decode(all ids), at O(window) cost.

The real SmolLM2 tokenizer (byte-level BPE, from transformers) is the stand-in for tokenmill's Tokenizer; a small
Llama-style SentencePiece tokenizer (Metaspace, byte fallback, leading-space strip) is built here with `tokenizers`.
"""

from __future__ import annotations

import random

import pytest
import torch

from tokenmill.tokenizer.detokenizer import IncrementalDetokenizer

FFFD = "\ufffd"

TEXTS = [
    "Hello, world! A plain ASCII sentence.",
    "Emoji: 😀🎉👍🏽 family 👨‍👩‍👧‍👦 flags 🇫🇷🇯🇵 end",
    "中文测试：你好，世界。日本語のテキスト、한국어 텍스트",
    "Accents: café, naïve, Zürich, Ångström, façade, résumé, São Paulo",
    "Mixed ✓ math ∑∫√ arrows →⇒ 😀中文é and \n\n new lines\ttabs  double  spaces ",
    "<|im_start|>user\nhi 😀<|im_end|>\n<|im_start|>assistant\n中文<|im_end|>",
    "  leading spaces and trailing ",
]


def stream(detok: IncrementalDetokenizer, ids: list[int], chunk_sizes=None) -> list[str]:
    pieces, i = [], 0
    rng = random.Random(len(ids))
    while i < len(ids):
        size = 1 if chunk_sizes is None else rng.choice(chunk_sizes)
        pieces.append(detok.add(ids[i:i + size]))
        i += size
    pieces.append(detok.flush())
    return pieces


def check_stream(tokenizer, ids, skip_special_tokens=False, chunk_sizes=None):
    full = tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
    pieces = stream(IncrementalDetokenizer(tokenizer, skip_special_tokens=skip_special_tokens), ids, chunk_sizes)
    assert "".join(pieces) == full
    if FFFD not in full:
        assert not any(FFFD in p for p in pieces), pieces
    return pieces


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("skip_special_tokens", [False, True])
def test_byte_level_one_token_at_a_time(hf_smollm2_tokenizer, text, skip_special_tokens):
    ids = hf_smollm2_tokenizer.encode(text, add_special_tokens=False)
    pieces = check_stream(hf_smollm2_tokenizer, ids, skip_special_tokens)
    assert sum(1 for p in pieces if p) > 1  # really incremental


@pytest.mark.parametrize("text", TEXTS)
def test_byte_level_random_chunks(hf_smollm2_tokenizer, text):
    ids = hf_smollm2_tokenizer.encode(text, add_special_tokens=False)
    check_stream(hf_smollm2_tokenizer, ids, chunk_sizes=[1, 2, 3, 5])


def test_multibyte_character_is_held_back(hf_smollm2_tokenizer):
    tok = hf_smollm2_tokenizer
    ids = tok.encode(" 😀", add_special_tokens=False)
    assert len(ids) >= 2 and FFFD in tok.decode(ids[:1])  # the emoji is split across tokens
    detok = IncrementalDetokenizer(tok)
    assert detok.add(ids[0]) == ""
    assert "".join(detok.add(i) for i in ids[1:]) == " 😀"


def test_tensor_inputs_and_prompt(hf_smollm2_tokenizer):
    tok = hf_smollm2_tokenizer
    prompt = tok.encode("The prompt 中文", add_special_tokens=False)
    gen = tok.encode(" then 😀 café", add_special_tokens=False)
    detok = IncrementalDetokenizer(tok, prompt_ids=torch.tensor([prompt]))
    pieces = [detok.add(torch.tensor([t])) for t in gen] + [detok.flush()]
    expected = tok.decode(prompt + gen)[len(tok.decode(prompt)):]
    assert "".join(pieces) == expected
    with pytest.raises(ValueError):
        IncrementalDetokenizer(tok).add(torch.tensor([[1, 2], [3, 4]]))


def test_invalid_utf8_is_flushed(hf_smollm2_tokenizer):
    tok = hf_smollm2_tokenizer
    emoji = tok.encode(" 😀", add_special_tokens=False)
    ids = tok.encode("ok", add_special_tokens=False) + emoji[:1]  # ends inside a character
    assert tok.decode(ids).endswith(FFFD)
    check_stream(tok, ids)
    # a broken character in the middle: emitted once valid text follows it
    ids = emoji[:1] + tok.encode(" fine", add_special_tokens=False)
    check_stream(tok, ids)


def test_cost_is_windowed(hf_smollm2_tokenizer):
    class Counting:
        def __init__(self, inner):
            self.inner, self.longest, self.calls = inner, 0, 0

        def decode(self, ids, **kwargs):
            self.longest, self.calls = max(self.longest, len(ids)), self.calls + 1
            return self.inner.decode(ids, **kwargs)

    counting = Counting(hf_smollm2_tokenizer)
    ids = hf_smollm2_tokenizer.encode(" ".join(TEXTS) * 20, add_special_tokens=False)
    assert len(ids) > 1000
    pieces = stream(IncrementalDetokenizer(counting), ids)
    assert "".join(pieces) == hf_smollm2_tokenizer.decode(ids)
    assert counting.longest <= 12
    assert counting.calls <= 2 * len(ids) + 2


# ---- a Llama-style SentencePiece tokenizer (leading-space strip, byte fallback) ----------------------------


@pytest.fixture(scope="module")
def sentencepiece_tokenizer():
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["▁Hello", "▁world", "▁the", "▁caf", "é", "▁中", "文", "▁", ",", "!", "▁a", "b", "c"]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [chr(c) for c in range(ord("A"), ord("Z") + 1)]
    pieces = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + words + letters
    vocab = [(p, 0.0 if p.startswith("<") else (-1.0 if p in words else -5.0)) for p in pieces]
    model = models.Unigram(vocab, unk_id=0, byte_fallback=True)
    tok = Tokenizer(model)
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    tok.decoder = decoders.Sequence([
        decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    return wrapped


SP_TEXTS = ["Hello world, the café!", "Hello 😀 world 中文 and ü", " a b c  d", "😀"]


@pytest.mark.parametrize("text", SP_TEXTS)
def test_sentencepiece_leading_spaces(sentencepiece_tokenizer, text):
    tok = sentencepiece_tokenizer
    ids = tok.encode(text, add_special_tokens=False)
    check_stream(tok, ids)
    check_stream(tok, ids, chunk_sizes=[1, 2, 3])


def test_sentencepiece_lone_token_strips_space(sentencepiece_tokenizer):
    tok = sentencepiece_tokenizer
    emoji = tok.convert_ids_to_tokens(tok.encode("😀", add_special_tokens=False))
    assert emoji[-4:] == ["<0xF0>", "<0x9F>", "<0x98>", "<0x80>"]  # byte fallback pieces
    ids = tok.encode("Hello world", add_special_tokens=False)
    assert tok.decode(ids[-1:]) == "world"  # decoded alone, the leading space is stripped ...
    pieces = check_stream(tok, ids)
    assert "".join(pieces) == "Hello world"  # ... but not inside the stream


def test_with_tokenmills_own_tokenizer(smollm2_gguf):
    """The real consumer: tokenmill's Tokenizer (same decode signature as transformers')."""
    from tokenmill.tokenizer import Tokenizer

    tok = Tokenizer.from_pretrained(str(smollm2_gguf))
    for text in TEXTS:
        ids = tok.encode(text, add_special_tokens=False)
        for skip in (False, True):
            check_stream(tok, ids, skip_special_tokens=skip)


@pytest.mark.parametrize("model", ["smollm2", "gemma3"])
def test_streamers_with_tokenmills_tokenizer(request, model):
    """TextStreamer / TextIteratorStreamer over tokenmill's own tokenizers (byte-level BPE and SentencePiece with
    byte fallback): no piece holds half a character, and the pieces join up to decode(all generated ids)."""
    from tokenmill import AutoTokenizer, TextIteratorStreamer, TextStreamer

    tok = AutoTokenizer.from_pretrained(request.getfixturevalue(f"{model}_gguf"))
    prompt = tok.encode("Reply with emoji, CJK and accents:")
    for text in TEXTS:
        reply = tok.encode(text, add_special_tokens=False)
        printed = []

        class Recording(TextStreamer):
            def on_finalized_text(self, text, stream_end=False):
                printed.append(text)

        for streamer in (Recording(tok, skip_prompt=True), TextIteratorStreamer(tok, skip_prompt=True)):
            streamer.put(torch.tensor([prompt]))
            for token in reply:
                streamer.put(torch.tensor([token]))
            streamer.end()
            pieces = printed if isinstance(streamer, Recording) else list(streamer)
            assert "".join(pieces) == tok.decode(reply), text
            assert not any(FFFD in piece for piece in pieces), pieces
            assert sum(1 for piece in pieces if piece) > 1


@pytest.mark.parametrize("prompt_text, reply_text", [
    ("Hello", "world, the café!"), ("the", "Hello 😀 world 中文"), ("a b", "c  d"), ("Hello world", "😀 a")])
def test_sentencepiece_prompt_gives_the_first_token_its_space(sentencepiece_tokenizer, prompt_text, reply_text):
    tok = sentencepiece_tokenizer
    prompt = tok.encode(prompt_text, add_special_tokens=False)
    reply = tok.encode(reply_text, add_special_tokens=False)  # starts with "▁": a word boundary
    full_text = tok.decode(prompt + reply)
    expected = full_text[len(tok.decode(prompt)):]
    assert expected.startswith(" ") and not tok.decode(reply).startswith(" ")  # the space exists only in context
    for chunk_sizes in (None, [1, 2, 3]):
        detok = IncrementalDetokenizer(tok, prompt_ids=prompt)
        pieces = stream(detok, reply, chunk_sizes)
        assert "".join(pieces) == expected
        assert tok.decode(prompt) + "".join(pieces) == full_text  # prompt + stream == decode(all ids)


class RewritingTokenizer:
    """decode() of a fixed table, where appending a token rewrites the text before it (as clean-up rules and
    some decoders do); records the keyword arguments of every call."""

    TABLE = {(1,): "abcd", (1, 2): "abcXe", (3,): "q", (3, 4): "Zr", (5,): "abc", (5, 6): "ab"}

    def __init__(self):
        self.kwargs = []

    def decode(self, ids, **kwargs):
        self.kwargs.append(kwargs)
        return self.TABLE[tuple(ids)]


def test_a_rewritten_boundary_emits_from_the_longest_common_prefix():
    tokenizer = RewritingTokenizer()
    for first, second, expected in ((1, 2, "Xe"), (3, 4, "Zr")):
        detok = IncrementalDetokenizer(tokenizer, clean_up_tokenization_spaces=True)
        assert detok.add(first) == tokenizer.TABLE[(first,)]
        assert detok.add(second) == expected  # no character of the context is emitted twice
    shrinking = IncrementalDetokenizer(tokenizer)
    assert shrinking.add(5) == "abc" and shrinking.add(6) == "" and shrinking.flush() == ""
    assert all(kw == {"clean_up_tokenization_spaces": True, "skip_special_tokens": False}
               for kw in tokenizer.kwargs[:4])  # decode_kwargs reach every decode call


def test_a_batch_of_two_is_refused_by_name(sentencepiece_tokenizer):
    with pytest.raises(ValueError, match="decodes one sequence; got a batch of 2"):
        IncrementalDetokenizer(sentencepiece_tokenizer).add([[1, 2], [3, 4]])


def test_flush_midway_and_reset_keep_the_stream_exact(sentencepiece_tokenizer):
    tok = sentencepiece_tokenizer
    ids = tok.encode("Hello world, the café!", add_special_tokens=False)
    detok = IncrementalDetokenizer(tok)
    assert tok.convert_ids_to_tokens(ids[3]) == "▁the"  # its space shows only with the token before as context
    pieces = [detok.add(ids[:3]), detok.flush(), detok.flush()]  # a flush with nothing pending changes nothing
    pieces += stream(detok, ids[3:])
    assert "".join(pieces) == tok.decode(ids)
    detok.reset()
    assert "".join(stream(detok, ids)) == tok.decode(ids)


def test_a_skipped_special_token_keeps_the_next_words_space(sentencepiece_tokenizer):
    tok = sentencepiece_tokenizer
    hello, world = (tok.encode(word, add_special_tokens=False) for word in ("Hello", "world"))
    ids = hello + [tok.eos_token_id] + world
    full = tok.decode(ids, skip_special_tokens=True)
    assert full == "Hello world"
    assert "".join(stream(IncrementalDetokenizer(tok, skip_special_tokens=True), ids)) == full


def test_a_long_prompt_costs_only_its_last_tokens(hf_smollm2_tokenizer):
    class Counting:
        longest = 0

        def decode(self, ids, **kwargs):
            Counting.longest = max(Counting.longest, len(ids))
            return hf_smollm2_tokenizer.decode(ids, **kwargs)

    prompt = hf_smollm2_tokenizer.encode(" ".join(TEXTS) * 10, add_special_tokens=False)
    reply = hf_smollm2_tokenizer.encode(" then 😀 café", add_special_tokens=False)
    pieces = stream(IncrementalDetokenizer(Counting(), prompt_ids=prompt), reply)
    assert "".join(pieces) == hf_smollm2_tokenizer.decode(prompt + reply)[len(hf_smollm2_tokenizer.decode(prompt)):]
    assert len(prompt) > 300 and Counting.longest <= 12
