"""The tokenizer rebuilt from GGUF metadata gives transformers' ids and decodings, text for text."""

from __future__ import annotations

import pytest
from gguf import GGUFWriter

from tokenmill.errors import CheckpointError
from tokenmill.loading.gguf import GGUFCheckpoint
from tokenmill.loading.gguf_tokenizer import build_tokenizer, derive_merges, tokenizer_config

TEXTS = [
    "Hello world",
    "  two leading spaces",
    "multiple   spaces   inside  ",
    "tabs\tand\t\tmore tabs",
    "new\nlines\n\n\nand a blank line\n",
    "\r\n windows line\r\nendings",
    "def square(x):\n    return x ** 2  # code\n\nprint(square(3))",
    "中文字符测试，日本語のテキスト、한국어",
    "emoji 😀🚀👍🏽 and flags 🇫🇷",
    "accents: café naïve Ærøskøbing Ünïcödé ﬁ",
    "numbers 12345 3.14159 1,000,000 and 2024-01-01",
    "can't won't I'm they'll we've",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n",
    "<bos>text<eos> and <pad>",
    "",
    " ",
    "\n",
    "a" * 40,
    "x<unk>y",
]


@pytest.fixture(scope="module")
def smollm2_tokenizer(smollm2):
    return smollm2.tokenizer()


@pytest.fixture(scope="module")
def gemma3_tokenizer(gemma3):
    return gemma3.tokenizer()


@pytest.fixture(params=["smollm2", "gemma3"])
def pair(request):
    """(our tokenizer, transformers' tokenizer) for one of the real models."""
    ours = request.getfixturevalue(f"{request.param}_tokenizer")
    oracle = request.getfixturevalue(f"hf_{request.param}_tokenizer")
    return ours, oracle


@pytest.mark.parametrize("text", TEXTS)
def test_ids_match_transformers(pair, text):
    ours, oracle = pair
    assert ours.encode(text, add_special_tokens=False).ids == oracle.encode(text, add_special_tokens=False)
    # with special tokens: the BOS the file asks for (Gemma) or none (SmolLM2)
    assert ours.encode(text).ids == oracle.encode(text)


@pytest.mark.parametrize("text", TEXTS)
def test_decode_matches_transformers(pair, text):
    ours, oracle = pair
    ids = oracle.encode(text, add_special_tokens=False)
    assert ours.decode(ids, skip_special_tokens=False) == oracle.decode(ids)
    assert ours.decode(ids, skip_special_tokens=True) == oracle.decode(ids, skip_special_tokens=True)


def test_batch_and_pairs(pair):
    ours, oracle = pair
    batch = ours.encode_batch(TEXTS[:5], add_special_tokens=False)
    assert [encoding.ids for encoding in batch] == [oracle.encode(t, add_special_tokens=False) for t in TEXTS[:5]]


def test_vocabulary_and_special_tokens_match(pair):
    ours, oracle = pair
    assert ours.get_vocab_size(with_added_tokens=True) == len(oracle)
    assert ours.get_vocab(with_added_tokens=True) == oracle.get_vocab()
    ours_special = {token.content for token in ours.get_added_tokens_decoder().values() if token.special}
    oracle_special = {token.content for token in oracle.added_tokens_decoder.values() if token.special}
    assert ours_special == oracle_special


@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_tokenizer_config_matches_transformers(name, request):
    checkpoint = request.getfixturevalue(name)
    oracle = request.getfixturevalue(f"hf_{name}_tokenizer")
    config = checkpoint.tokenizer_config()
    for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
        assert config[key] == getattr(oracle, key), key
    assert config["add_bos_token"] == oracle.add_bos_token
    assert config["add_eos_token"] == bool(getattr(oracle, "add_eos_token", False))
    assert config.get("chat_template") == oracle.chat_template
    assert config["model_max_length"] == checkpoint.metadata[f"{checkpoint.architecture}.context_length"]


def test_bos_behaviour(smollm2_tokenizer, gemma3_tokenizer, gemma3):
    assert gemma3_tokenizer.encode("hi").ids[0] == gemma3.metadata["tokenizer.ggml.bos_token_id"] == 2
    assert gemma3_tokenizer.encode("hi", add_special_tokens=False).ids[0] != 2
    assert smollm2_tokenizer.encode("hi").ids == smollm2_tokenizer.encode("hi", add_special_tokens=False).ids


# ---- synthetic vocabularies ------------------------------------------------------------------------


def test_derive_merges_orders_by_priority_then_piece_length():
    tokens = ["a", "b", "c", "ab", "bc", "abc"]
    vocab = {token: index for index, token in enumerate(tokens)}
    # "abc" outranks "ab"; within "abc" the longer left piece ("ab" + "c") comes first
    priorities = [0, 0, 0, 1.0, 0.5, 2.0]
    assert derive_merges(tokens, vocab, priorities) == [("ab", "c"), ("a", "bc"), ("a", "b"), ("b", "c")]


def sentencepiece_metadata(add_space_prefix: bool) -> dict:
    tokens = ["<unk>", "<s>", "</s>", "▁", "h", "i", "▁h", "▁hi", "hi"] + [f"<0x{b:02X}>" for b in range(256)]
    scores = [0, 0, 0, -1, -2, -3, -1.5, -0.5, -0.7] + [0] * 256
    types = [2, 3, 3, 1, 1, 1, 1, 1, 1] + [6] * 256
    return {
        "general.architecture": "llama", "tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": scores, "tokenizer.ggml.token_type": types, "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.add_space_prefix": add_space_prefix,
    }


def test_sentencepiece_prefix_space_and_byte_fallback():
    with_prefix = build_tokenizer(sentencepiece_metadata(True))
    tokens = with_prefix.get_vocab()
    assert with_prefix.encode("hi", add_special_tokens=False).ids == [tokens["▁hi"]]
    assert with_prefix.encode("hi").ids == [1, tokens["▁hi"]]  # llama vocabularies add BOS by default
    # "é" is not in the vocabulary: its two UTF-8 bytes fall back to byte tokens and decode back
    ids = with_prefix.encode("hié", add_special_tokens=False).ids
    assert ids[-2:] == [tokens["<0xC3>"], tokens["<0xA9>"]]
    assert with_prefix.decode(ids) == "hié"
    without_prefix = build_tokenizer(sentencepiece_metadata(False))
    assert without_prefix.encode("hi", add_special_tokens=False).ids == [tokens["hi"]]
    assert tokenizer_config(sentencepiece_metadata(True))["bos_token"] == "<s>"


def test_missing_vocabulary_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "novocab.gguf"
    writer = GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model("gpt2")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(CheckpointError, match="tokenizer.ggml.tokens") as error:
        GGUFCheckpoint(path).tokenizer()
    assert str(path) in str(error.value)


@pytest.mark.parametrize("pre", ["llama-bpe", "qwen2", "gpt-2"])
def test_byte_level_splits_match_transformers(pre, smollm2, tmp_path):
    """SmolLM2's vocabulary re-labelled with another llama.cpp pre-tokenizer: the same split as transformers."""
    import transformers

    metadata = smollm2.metadata
    # the first 6000 tokens and the merges among them: still a complete BPE, built much faster
    tokens = metadata["tokenizer.ggml.tokens"][:6000]
    kept = set(tokens)
    merges = [merge for merge in metadata["tokenizer.ggml.merges"]
              if merge.replace(" ", "") in kept and all(piece in kept for piece in merge.split(" "))]
    writer = GGUFWriter(str(tmp_path / "vocab.gguf"), "llama")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(metadata["tokenizer.ggml.token_type"][:6000])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    ours = GGUFCheckpoint(tmp_path / "vocab.gguf").tokenizer()
    oracle = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="vocab.gguf")
    for text in TEXTS:
        ids = oracle.encode(text, add_special_tokens=False)
        assert ours.encode(text, add_special_tokens=False).ids == ids, text
        assert ours.decode(ids, skip_special_tokens=False) == oracle.decode(ids), text
