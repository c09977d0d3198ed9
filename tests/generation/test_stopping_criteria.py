"""Stopping criteria against transformers' classes, on crafted ids and with the real SmolLM2 tokenizer."""

from __future__ import annotations

import time

import pytest
import torch
import transformers.generation.stopping_criteria as hf

import tokenmill.generation.stopping_criteria as tm
from tokenmill.generation.config import GenerationConfig


def test_max_length():
    ids = torch.zeros(3, 7, dtype=torch.long)
    for max_length in (5, 7, 8):
        assert torch.equal(tm.MaxLengthCriteria(max_length)(ids, None), hf.MaxLengthCriteria(max_length)(ids, None))
    assert tm.MaxLengthCriteria(8, max_position_embeddings=4)(ids, None).tolist() == [False] * 3


def test_max_time():
    ids = torch.zeros(2, 3, dtype=torch.long)
    assert tm.MaxTimeCriteria(10.0)(ids, None).tolist() == [False, False]
    assert tm.MaxTimeCriteria(0.5, initial_timestamp=time.time() - 1)(ids, None).tolist() == [True, True]


@pytest.mark.parametrize("eos", [2, [2, 9], torch.tensor([9, 4])])
def test_eos(eos):
    ids = torch.tensor([[1, 2, 3], [3, 4, 2], [5, 9, 9], [2, 2, 4]])
    for new in (1, 2):
        ours = tm.EosTokenCriteria(eos)(ids, None, new_token_length=new)
        theirs = hf.EosTokenCriteria(eos)(ids, None, new_token_length=new)
        assert torch.equal(ours, theirs)


def test_list_ors_and_max_length():
    ids = torch.tensor([[1, 2], [1, 5]])
    criteria = tm.StoppingCriteriaList([tm.EosTokenCriteria(5), tm.MaxLengthCriteria(10)])
    assert criteria(ids, None).tolist() == [False, True]
    assert criteria.max_length == 10
    assert tm.validate_stopping_criteria(tm.StoppingCriteriaList(), 12).max_length == 12


# ---- stop strings with the real byte-level BPE tokenizer ------------------------------------------------------

STOP_STRINGS = ["stop", " stop", "\n\n", "Texas", "😀", "中文", "é!", "a", "User:", "<|im_end|>"]

TEXTS = [
    "Please stop here. Then stop again, stopper and laptop-stopping.",
    "States: Alaska\n- Texas\n\n- California",
    "Smile 😀 and 😀😀 in 中文 text, café! naïve é!",
    "User: hi\nAssistant: hello<|im_end|>\nUser:",
    "abracadabra topper las topper",
]


@pytest.fixture(scope="module")
def stop_pair(hf_smollm2_tokenizer):
    tok = hf_smollm2_tokenizer
    return (tm.StopStringCriteria(tok, STOP_STRINGS), hf.StopStringCriteria(tok, STOP_STRINGS))


def _compare_all_prefixes(ours, theirs, ids: list[int]):
    for end in range(1, len(ids) + 1):
        row = torch.tensor([ids[:end]])
        a, b = ours(row, None), theirs(row, None)
        assert a.tolist() == b.tolist(), (end, ids[:end])


@pytest.mark.parametrize("text", TEXTS)
def test_stop_strings_match_transformers_on_text(hf_smollm2_tokenizer, stop_pair, text):
    ours, theirs = stop_pair
    ids = hf_smollm2_tokenizer.encode(text, add_special_tokens=False)
    _compare_all_prefixes(ours, theirs, ids)


def test_stop_strings_single_and_spanning(hf_smollm2_tokenizer):
    tok = hf_smollm2_tokenizer
    vocab = tok.get_vocab()

    def ids_of(*tokens):
        return [vocab[t] for t in tokens]

    # one stop string at a time, including ones spanning several tokens and tokens overhanging both ends
    cases = {
        "stop": [("st", "op"), ("stop",), ("st", "opping"), ("las", "top"), ("s", "to", "p"), ("stop", "ped"),
                 ("st", "op", "ped"), ("s", "top")],
        "😀": [("ĠðŁĺ", "Ģ"), ("ĠðŁĺ",)],
        "Texas\n": [("Tex", "as", "Ċ"), ("Texas", "ĊĊ"), ("Texas",)],
    }
    for stop, sequences in cases.items():
        ours, theirs = tm.StopStringCriteria(tok, stop), hf.StopStringCriteria(tok, stop)
        for tokens in sequences:
            present = [t for t in tokens if t in vocab]
            if len(present) != len(tokens):
                continue
            prefix = tok.encode("The end:", add_special_tokens=False)
            _compare_all_prefixes(ours, theirs, prefix + ids_of(*tokens))


def test_stop_strings_batch(hf_smollm2_tokenizer, stop_pair):
    ours, theirs = stop_pair
    rows = [hf_smollm2_tokenizer.encode(t, add_special_tokens=False)[:9] for t in TEXTS]
    length = min(len(r) for r in rows)
    batch = torch.tensor([r[:length] for r in rows])
    for end in range(1, length + 1):
        assert ours(batch[:, :end], None).tolist() == theirs(batch[:, :end], None).tolist()


def test_stop_strings_random_tokens(hf_smollm2_tokenizer, stop_pair):
    """Random id sequences drawn from tokens that overlap the stop strings."""
    ours, theirs = stop_pair
    tok = hf_smollm2_tokenizer
    pieces = ["s", "st", "sto", "stop", "op", "p", "top", "Ġstop", "Ġst", "Tex", "as", "Ċ", "ĊĊ", "ĠðŁĺ", "Ģ",
              "ä¸Ń", "æĸĩ", "Ã©", "!", "a", "User", ":", "<|im_end|>", "Ġ"]
    vocab = tok.get_vocab()
    pool = torch.tensor([vocab[p] for p in pieces if p in vocab])
    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        ids = pool[torch.randint(0, len(pool), (8,), generator=g)].tolist()
        _compare_all_prefixes(ours, theirs, ids)


# ---- build_stopping_criteria ---------------------------------------------------------------------------------


def test_build_order_and_errors(hf_smollm2_tokenizer):
    config = GenerationConfig(max_length=30, max_time=5.0, stop_strings=["stop"], eos_token_id=[2, 3])
    criteria = tm.build_stopping_criteria(config, hf_smollm2_tokenizer)
    names = [type(c).__name__ for c in criteria]
    assert names == ["MaxLengthCriteria", "MaxTimeCriteria", "StopStringCriteria", "EosTokenCriteria"]
    with pytest.raises(ValueError, match="tokenizer"):
        tm.build_stopping_criteria(config, None)
    assert [type(c).__name__ for c in tm.build_stopping_criteria(GenerationConfig())] == ["MaxLengthCriteria"]


def test_build_merges_user_criteria():
    class Custom(tm.StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return input_ids[:, -1] == 7

    user = tm.StoppingCriteriaList([tm.MaxLengthCriteria(3), Custom()])
    criteria = tm.build_stopping_criteria(GenerationConfig(max_length=30, eos_token_id=2), None, user)
    assert [type(c).__name__ for c in criteria] == ["MaxLengthCriteria", "EosTokenCriteria", "Custom"]
    assert criteria[0] is user[0]
    ids = torch.tensor([[1, 2], [1, 7], [1, 1]])
    assert criteria(ids, None).tolist() == [True, True, False]
    assert criteria(torch.tensor([[1, 1, 1]]), None).tolist() == [True]
