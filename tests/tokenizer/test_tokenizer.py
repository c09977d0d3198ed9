"""Tokenizer vs transformers' own fast tokenizer, both built from the real SmolLM2 GGUF."""

from __future__ import annotations

import json

import pytest
import torch
from tokenizers import AddedToken

from tokenmill.errors import CheckpointError
from tokenmill.tokenizer import BatchEncoding, Tokenizer

TEXTS = [
    "Hello world",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\n\n\r\nmixed",
    "def f(x):\n    return x ** 2  # square\n",
    "日本語のテキストと中文文本",
    "emoji 🎉🚀 and 👩‍👩‍👧‍👦 family",
    "accents: café naïve résumé Ångström",
    "special inline <|im_start|>user\nhi<|im_end|> done",
    "<|endoftext|><|endoftext|>",
    "",
    " ",
    "numbers 1234567890 3.14159 -42",
    "mixed <repo_name>tokenmill<file_sep>x.py",
]
BATCH = ["short", "a much longer sentence that needs several tokens", "mid length text"]


@pytest.fixture(scope="module")
def oracle_folder(hf_smollm2_tokenizer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("oracle_tokenizer")
    hf_smollm2_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tokenizer(oracle_folder) -> Tokenizer:
    return Tokenizer.from_folder(oracle_folder)


@pytest.fixture
def fresh_pair(oracle_folder):
    """A private (ours, theirs) pair for tests that modify the tokenizer."""
    import transformers

    return Tokenizer.from_folder(oracle_folder), transformers.AutoTokenizer.from_pretrained(str(oracle_folder))


def as_lists(encoding) -> dict:
    return {key: (value.tolist() if isinstance(value, torch.Tensor) else value) for key, value in encoding.items()}


@pytest.mark.parametrize("text", TEXTS)
def test_ids_tokens_and_decode_match(tokenizer, hf_smollm2_tokenizer, text):
    ids = tokenizer.encode(text)
    assert ids == hf_smollm2_tokenizer.encode(text)
    assert tokenizer.tokenize(text) == hf_smollm2_tokenizer.tokenize(text)
    assert tokenizer.convert_ids_to_tokens(ids) == hf_smollm2_tokenizer.convert_ids_to_tokens(ids)
    for skip in (False, True):
        assert tokenizer.decode(ids, skip_special_tokens=skip) == \
            hf_smollm2_tokenizer.decode(ids, skip_special_tokens=skip)
    assert dict(tokenizer(text)) == dict(hf_smollm2_tokenizer(text))


def test_special_token_attributes(tokenizer, hf_smollm2_tokenizer):
    for name in ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token"):
        assert getattr(tokenizer, name) == getattr(hf_smollm2_tokenizer, name), name
        assert getattr(tokenizer, f"{name}_id") == getattr(hf_smollm2_tokenizer, f"{name}_id"), name
    assert tokenizer.all_special_tokens == hf_smollm2_tokenizer.all_special_tokens
    assert tokenizer.all_special_ids == hf_smollm2_tokenizer.all_special_ids
    assert tokenizer.special_tokens_map == hf_smollm2_tokenizer.special_tokens_map
    assert tokenizer.vocab_size == hf_smollm2_tokenizer.vocab_size
    assert len(tokenizer) == len(hf_smollm2_tokenizer)
    assert tokenizer.get_vocab() == hf_smollm2_tokenizer.get_vocab()
    assert tokenizer.model_max_length == hf_smollm2_tokenizer.model_max_length
    assert tokenizer.chat_template == hf_smollm2_tokenizer.chat_template
    assert tokenizer.padding_side == hf_smollm2_tokenizer.padding_side == "right"
    assert str(tokenizer.added_tokens_decoder) == str(hf_smollm2_tokenizer.added_tokens_decoder)
    assert tokenizer.convert_tokens_to_ids(["<|im_end|>", "hello", "no-such-token"]) == \
        hf_smollm2_tokenizer.convert_tokens_to_ids(["<|im_end|>", "hello", "no-such-token"])


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("options", [
    dict(padding=True),
    dict(padding="longest", pad_to_multiple_of=8),
    dict(padding="max_length", max_length=16),
    dict(padding=True, truncation=True, max_length=5),
    dict(max_length=4),
    dict(truncation=True, max_length=3, padding="max_length"),
    dict(padding=True, return_attention_mask=False),
    dict(padding=True, return_token_type_ids=True, return_length=True, return_special_tokens_mask=True),
])
def test_batch_call_matches(tokenizer, hf_smollm2_tokenizer, side, options):
    ours = tokenizer(BATCH, padding_side=side, **options)
    theirs = hf_smollm2_tokenizer(BATCH, padding_side=side, **options)
    assert dict(ours) == dict(theirs)
    ours_pt = tokenizer(BATCH, padding_side=side, return_tensors="pt", **options) if options.get("padding") else None
    if ours_pt is not None:
        theirs_pt = hf_smollm2_tokenizer(BATCH, padding_side=side, return_tensors="pt", **options)
        assert ours_pt.keys() == theirs_pt.keys()
        for key in ours_pt:
            assert torch.equal(ours_pt[key], theirs_pt[key]), key
            assert ours_pt[key].dtype == theirs_pt[key].dtype


def test_truncation_side_and_single_text_tensors(fresh_pair):
    ours, theirs = fresh_pair
    ours.truncation_side = theirs.truncation_side = "left"
    ours.padding_side = theirs.padding_side = "left"
    text = "one two three four five six seven"
    assert ours(text, truncation=True, max_length=3)["input_ids"] == \
        theirs(text, truncation=True, max_length=3)["input_ids"]
    single = ours(text, return_tensors="pt")
    assert single["input_ids"].shape == (1, len(ours.encode(text)))
    assert torch.equal(single["input_ids"], theirs(text, return_tensors="pt")["input_ids"])
    assert dict(ours(BATCH, padding=True)) == dict(theirs(BATCH, padding=True))


def test_pairs_overflow_and_offsets(tokenizer, hf_smollm2_tokenizer):
    kwargs = dict(return_offsets_mapping=True, return_token_type_ids=True)
    assert as_lists(tokenizer("first part", "second part", **kwargs)) == \
        as_lists(hf_smollm2_tokenizer("first part", "second part", **kwargs))
    overflow = dict(truncation=True, max_length=4, stride=1, return_overflowing_tokens=True)
    assert as_lists(tokenizer(BATCH, **overflow)) == as_lists(hf_smollm2_tokenizer(BATCH, **overflow))


def test_batch_encoding_surface(tokenizer):
    encoding = tokenizer(BATCH, padding=True, return_tensors="pt")
    assert isinstance(encoding, BatchEncoding)
    assert encoding.input_ids is encoding["input_ids"]
    assert encoding.to("cpu") is encoding and encoding.attention_mask.device.type == "cpu"
    assert encoding.tokens(1)[:2] == tokenizer.tokenize(BATCH[1])[:2]
    assert encoding[0].ids == encoding["input_ids"][0].tolist()
    with pytest.raises(ValueError, match="padding=True"):
        tokenizer(BATCH, return_tensors="pt")
    with pytest.raises(AttributeError):
        encoding.not_a_field


def test_decode_variants(tokenizer, hf_smollm2_tokenizer):
    rows = hf_smollm2_tokenizer(["<|im_start|>hi there<|im_end|>", "plain"], padding=True)["input_ids"]
    for skip in (False, True):
        assert tokenizer.batch_decode(rows, skip_special_tokens=skip) == \
            hf_smollm2_tokenizer.batch_decode(rows, skip_special_tokens=skip)
        assert tokenizer.decode(torch.tensor(rows), skip_special_tokens=skip) == \
            hf_smollm2_tokenizer.decode(torch.tensor(rows), skip_special_tokens=skip)
    assert tokenizer.decode(2) == hf_smollm2_tokenizer.decode(2)
    assert tokenizer.decode(torch.tensor(rows[0])) == hf_smollm2_tokenizer.decode(rows[0])
    text = "Hello , world . It 's"
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids, clean_up_tokenization_spaces=True) == \
        hf_smollm2_tokenizer.decode(ids, clean_up_tokenization_spaces=True)


def test_pad_token_setting(fresh_pair):
    ours, theirs = fresh_pair
    ours.pad_token = theirs.pad_token = "<|endoftext|>"
    assert ours.pad_token_id == theirs.pad_token_id == 0
    assert dict(ours(BATCH, padding=True)) == dict(theirs(BATCH, padding=True))
    ours.pad_token_id = theirs.pad_token_id = 1
    assert ours.pad_token == theirs.pad_token == "<|im_start|>"
    ours.pad_token = None
    with pytest.raises(ValueError, match="padding token"):
        ours(BATCH, padding=True)


def test_add_tokens_and_special_tokens(fresh_pair):
    ours, theirs = fresh_pair
    new = ["<tool>", AddedToken("zzqx", single_word=True)]
    assert ours.add_tokens(new) == theirs.add_tokens(new) == 2
    assert ours.add_tokens(["<tool>"]) == theirs.add_tokens(["<tool>"]) == 0
    text = "call <tool> with zzqx and zzqxy"
    assert ours.encode(text) == theirs.encode(text)
    assert ours.convert_tokens_to_ids("<tool>") == theirs.convert_tokens_to_ids("<tool>") == len(ours) - 2
    added = {"pad_token": "<pad>", "extra_special_tokens": ["<extra_a>", "<extra_b>"]}
    assert ours.add_special_tokens(added) == theirs.add_special_tokens(added) == 3
    assert ours.pad_token_id == theirs.pad_token_id
    assert ours.all_special_tokens == theirs.all_special_tokens
    assert ours.all_special_ids == theirs.all_special_ids
    ids = ours.encode("x <extra_a> y <pad>")
    assert ids == theirs.encode("x <extra_a> y <pad>")
    assert ours.decode(ids, skip_special_tokens=True) == theirs.decode(ids, skip_special_tokens=True)
    assert ours.add_tokens(["<sp>"], special_tokens=True) == theirs.add_tokens(["<sp>"], special_tokens=True)
    assert ours.decode(ours.encode("a<sp>b"), skip_special_tokens=True) == \
        theirs.decode(theirs.encode("a<sp>b"), skip_special_tokens=True)


def test_save_pretrained_round_trips_through_transformers(fresh_pair, tmp_path):
    import transformers

    ours, theirs = fresh_pair
    ours.add_tokens(["<tool>"])
    theirs.add_tokens(["<tool>"])
    ours.add_special_tokens({"extra_special_tokens": ["<extra_a>"]})
    theirs.add_special_tokens({"extra_special_tokens": ["<extra_a>"]})
    written = ours.save_pretrained(tmp_path)
    assert sorted(path.rsplit("/", 1)[-1] for path in written) == \
        ["special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["chat_template"] == theirs.chat_template and "added_tokens_decoder" in config
    reloaded = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    ours_again = Tokenizer.from_folder(tmp_path)
    for text in TEXTS + ["a <tool> b <extra_a>"]:
        assert reloaded.encode(text) == theirs.encode(text) == ours_again.encode(text)
    for attribute in ("all_special_tokens", "special_tokens_map", "chat_template", "model_max_length",
                      "padding_side", "extra_special_tokens"):
        assert getattr(reloaded, attribute) == getattr(theirs, attribute) == getattr(ours_again, attribute), attribute
    assert str(reloaded.added_tokens_decoder) == str(theirs.added_tokens_decoder)
    assert len(reloaded) == len(theirs) == len(ours_again)


def test_post_processor_follows_add_bos_and_eos(fresh_pair):
    ours, theirs = fresh_pair
    for bos, eos in ((True, False), (True, True), (False, True), (False, False)):
        ours.add_bos_token, theirs.add_bos_token = bos, bos
        ours.add_eos_token, theirs.add_eos_token = eos, eos
        assert ours.encode("hello") == theirs.encode("hello")
        assert ours.encode("hello", "pair") == theirs.encode("hello", "pair")
        assert ours.encode("hello", add_special_tokens=False) == theirs.encode("hello", add_special_tokens=False)
        assert ours.num_special_tokens_to_add() == theirs.num_special_tokens_to_add()


def test_pad_method_matches(tokenizer, hf_smollm2_tokenizer):
    rows = [{"input_ids": tokenizer.encode(text)} for text in BATCH]
    for kwargs in (dict(), dict(padding="max_length", max_length=12, padding_side="left"),
                   dict(pad_to_multiple_of=4, return_tensors="pt")):
        assert as_lists(tokenizer.pad(rows, **kwargs)) == as_lists(hf_smollm2_tokenizer.pad(rows, **kwargs))


def test_missing_and_corrupt_folders(tmp_path, oracle_folder):
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        Tokenizer.from_folder(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"version": "1.0", "model": ')
    with pytest.raises(CheckpointError, match="cannot parse"):
        Tokenizer.from_folder(tmp_path)
    (tmp_path / "tokenizer.json").write_bytes((oracle_folder / "tokenizer.json").read_bytes())
    (tmp_path / "tokenizer_config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="JSON object"):
        Tokenizer.from_folder(tmp_path)


def test_from_gguf_matches_transformers(smollm2_gguf, hf_smollm2_tokenizer):
    ours = Tokenizer.from_gguf(smollm2_gguf)
    for text in TEXTS:
        assert ours.encode(text) == hf_smollm2_tokenizer.encode(text)
    assert ours.special_tokens_map == hf_smollm2_tokenizer.special_tokens_map
    assert ours.chat_template == hf_smollm2_tokenizer.chat_template
    assert ours.all_special_ids == hf_smollm2_tokenizer.all_special_ids


@pytest.mark.parametrize("flags", [dict(add_bos_token=True), dict(add_eos_token=True),
                                   dict(add_bos_token=True, add_eos_token=True), dict(add_bos_token=False)])
def test_config_flags_rebuild_post_processor_like_transformers(hf_smollm2_tokenizer, flags):
    """A config with add_bos_token/add_eos_token (as GGUF metadata gives) decides what encode adds."""
    import copy

    import transformers

    config = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "unk_token": "<|endoftext|>", **flags}
    backend = hf_smollm2_tokenizer.backend_tokenizer
    ours = Tokenizer(copy.deepcopy(backend), config)
    theirs = transformers.TokenizersBackend(tokenizer_object=copy.deepcopy(backend), **config)
    for text in ("hello", "two words"):
        assert ours.encode(text) == theirs.encode(text)
        assert ours.encode(text, "pair") == theirs.encode(text, "pair")
        assert ours.encode(text, add_special_tokens=False) == theirs.encode(text, add_special_tokens=False)
    assert (ours.add_bos_token, ours.add_eos_token) == (theirs.add_bos_token, theirs.add_eos_token)


def test_tokenizer_survives_pickle_and_deepcopy(tokenizer):
    import copy
    import pickle

    for clone in (pickle.loads(pickle.dumps(tokenizer)), copy.deepcopy(tokenizer)):
        assert clone.encode(TEXTS[3]) == tokenizer.encode(TEXTS[3])
        assert dict(clone(BATCH, padding=True)) == dict(tokenizer(BATCH, padding=True))


def test_reads_template_files_written_by_transformers(fresh_pair, tmp_path):
    _, theirs = fresh_pair
    theirs.chat_template = {"default": "D{{ messages | length }}", "tool_use": "T{{ tools | length }}"}
    theirs.save_pretrained(tmp_path)  # writes chat_template.jinja + additional_chat_templates/tool_use.jinja
    assert (tmp_path / "additional_chat_templates" / "tool_use.jinja").is_file()
    assert Tokenizer.from_folder(tmp_path).chat_template == theirs.chat_template


def test_concurrent_calls_keep_their_own_options(tokenizer, hf_smollm2_tokenizer):
    from concurrent.futures import ThreadPoolExecutor

    cases = [dict(padding=True, padding_side=side, max_length=length, truncation=True)
             for side in ("left", "right") for length in (3, 6, 9)] * 4
    expected = [dict(hf_smollm2_tokenizer(BATCH, **case)) for case in cases]
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda case: dict(tokenizer(BATCH, **case)), cases))
    assert results == expected


def test_legacy_folder_with_special_tokens_map(oracle_folder, tmp_path):
    """An older folder: special tokens only in special_tokens_map.json, padding side in tokenizer_config.json."""
    import transformers

    from tokenmill import AutoTokenizer

    (tmp_path / "tokenizer.json").write_bytes((oracle_folder / "tokenizer.json").read_bytes())
    config = json.loads((oracle_folder / "tokenizer_config.json").read_text())
    for key in ("added_tokens_decoder", "bos_token", "eos_token", "pad_token", "unk_token", "extra_special_tokens"):
        config.pop(key, None)
    config.update(padding_side="left", model_max_length=2048)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": "<|im_start|>", "pad_token": "<|endoftext|>",
        "eos_token": {"content": "<|im_end|>", "lstrip": False, "normalized": False, "rstrip": False,
                      "single_word": False},
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"]}))
    ours, theirs = AutoTokenizer.from_pretrained(tmp_path), transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    for name in ("bos_token", "eos_token", "pad_token", "unk_token", "padding_side", "model_max_length",
                 "all_special_tokens", "all_special_ids", "special_tokens_map"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours.padding_side == "left"
    assert dict(ours(BATCH, padding=True)) == dict(theirs(BATCH, padding=True))
    right = AutoTokenizer.from_pretrained(tmp_path, padding_side="right")
    assert right.padding_side == "right"
    assert dict(right(BATCH, padding=True)) == \
        dict(transformers.AutoTokenizer.from_pretrained(str(tmp_path), padding_side="right")(BATCH, padding=True))


@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_auto_tokenizer_from_gguf_matches_transformers(name, request):
    """AutoTokenizer on the real GGUF files: special tokens, sizes and padding side as transformers has them."""
    from tokenmill import AutoTokenizer

    path = request.getfixturevalue(f"{name}_gguf")
    theirs = request.getfixturevalue(f"hf_{name}_tokenizer")
    ours = AutoTokenizer.from_pretrained(path)
    for attribute in ("special_tokens_map", "all_special_tokens", "all_special_ids", "padding_side", "bos_token_id",
                      "eos_token_id", "pad_token_id", "add_bos_token", "chat_template"):
        assert getattr(ours, attribute) == getattr(theirs, attribute), attribute
    assert len(ours) == len(theirs)
    assert AutoTokenizer.from_pretrained(path, padding_side="left").padding_side == "left"


def test_text_that_is_not_unicode_is_a_clear_error(tokenizer):
    """Broken UTF-8 that Python decoded with surrogateescape: a ValueError naming the character, for every entry point."""
    broken = "caf\udcc3("
    for call in (lambda: tokenizer(broken), lambda: tokenizer(["fine", broken], padding=True),
                 lambda: tokenizer.encode("fine", broken), lambda: tokenizer.apply_chat_template(
                     [{"role": "user", "content": broken}])):
        with pytest.raises(ValueError, match=r"not valid Unicode: '\\udcc3' at character \d+"):
            call()
    assert tokenizer("café").input_ids == tokenizer.encode("café")  # good text is untouched
