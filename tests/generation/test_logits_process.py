"""Every logits processor against transformers' class of the same name, on random scores (batch > 1, -inf
already present, ties), and build_logits_processor against transformers' `_get_logits_processor`."""

from __future__ import annotations

import math

import pytest
import torch
import transformers.generation.logits_process as hf

import tokenmill.generation.logits_process as tm
from tokenmill.generation.config import GenerationConfig

VOCAB = 97
SEEDS = (0, 1, 2, 3)


def random_inputs(seed: int, batch: int = 4, length: int = 12, vocab: int = VOCAB):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(batch, vocab, generator=g) * 3
    # ties: a block of equal values per row, and duplicated maxima
    scores[:, 5:9] = scores[:, 5:6]
    scores[0, 10] = scores[0, 11] = scores[0].max()
    # -inf already present (e.g. from an earlier processor)
    scores[1, :: 7] = -math.inf
    scores[2, 3] = -math.inf
    input_ids = torch.randint(0, vocab, (batch, length), generator=g)
    if length >= 8:
        input_ids[:, -4:-2] = torch.tensor([3, 4])  # a repeated bigram source
        input_ids[:, 2:4] = torch.tensor([3, 4])
    return input_ids, scores


def assert_same(ours: torch.Tensor, theirs: torch.Tensor):
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    assert torch.equal(torch.isneginf(ours), torch.isneginf(theirs))
    assert torch.equal(torch.isnan(ours), torch.isnan(theirs))
    finite = torch.isfinite(theirs)
    # elementwise float32 on the same scores (x/T against x*(1/T), penalties): a few roundings per entry, each at most
    # u = 2**-24 relative; 16u (1e-6) relative, and 1e-6 absolute for entries that cancel to near zero
    torch.testing.assert_close(ours[finite], theirs[finite], atol=1e-6, rtol=1e-6)


def check(name: str, *args, seeds=SEEDS, batch=4, length=12, **kwargs):
    for seed in seeds:
        ids, scores = random_inputs(seed, batch=batch, length=length)
        ours = getattr(tm, name)(*args, **kwargs)(ids.clone(), scores.clone())
        theirs = getattr(hf, name)(*args, **kwargs)(ids.clone(), scores.clone())
        assert_same(ours, theirs)


@pytest.mark.parametrize("temperature", [0.3, 1.0, 2.5])
def test_temperature(temperature):
    check("TemperatureLogitsWarper", temperature)


@pytest.mark.parametrize("top_k,keep", [(1, 1), (3, 1), (7, 2), (1, 5), (500, 1)])
def test_top_k(top_k, keep):
    check("TopKLogitsWarper", top_k, min_tokens_to_keep=keep)


@pytest.mark.parametrize("top_p,keep", [(0.0, 1), (0.1, 1), (0.5, 1), (0.9, 3), (0.99, 1), (1.0, 1)])
def test_top_p(top_p, keep):
    check("TopPLogitsWarper", top_p, min_tokens_to_keep=keep)


@pytest.mark.parametrize("min_p,keep", [(0.0, 1), (0.05, 1), (0.3, 2), (1.0, 1), (0.5, 200)])
def test_min_p(min_p, keep):
    check("MinPLogitsWarper", min_p, min_tokens_to_keep=keep)


@pytest.mark.parametrize("mass,keep", [(0.2, 1), (0.5, 1), (0.9, 4), (0.999, 1)])
def test_typical(mass, keep):
    check("TypicalLogitsWarper", mass, min_tokens_to_keep=keep)


@pytest.mark.parametrize("epsilon,keep", [(1e-4, 1), (0.01, 1), (0.2, 3), (0.9, 1)])
def test_epsilon(epsilon, keep):
    check("EpsilonLogitsWarper", epsilon, min_tokens_to_keep=keep)


@pytest.mark.parametrize("epsilon,keep", [(1e-4, 1), (0.01, 1), (0.2, 3), (0.9, 1)])
def test_eta(epsilon, keep):
    check("EtaLogitsWarper", epsilon, min_tokens_to_keep=keep)


@pytest.mark.parametrize("top_h", [0.1, 0.5, 1.0])
def test_top_h(top_h):
    check("TopHLogitsWarper", top_h)


@pytest.mark.parametrize("penalty", [0.5, 1.3, 2.0])
def test_repetition_penalty(penalty):
    check("RepetitionPenaltyLogitsProcessor", penalty)
    check("RepetitionPenaltyLogitsProcessor", penalty, prompt_ignore_length=5)
    check("RepetitionPenaltyLogitsProcessor", penalty, prompt_ignore_length=torch.tensor([0, 3, 12, 7]))


def test_repetition_penalty_ids_beyond_vocab():
    ids, scores = random_inputs(0)
    ids[:, 0] = VOCAB + 5  # an embedding-only id the lm head cannot produce
    assert_same(tm.RepetitionPenaltyLogitsProcessor(1.5)(ids, scores.clone()),
                hf.RepetitionPenaltyLogitsProcessor(1.5)(ids, scores.clone()))


@pytest.mark.parametrize("n", [1, 2, 3, 5, 13, 20])
def test_no_repeat_ngram(n):
    check("NoRepeatNGramLogitsProcessor", n)
    # tiny vocabularies make repeats frequent
    g = torch.Generator().manual_seed(n)
    ids = torch.randint(0, 4, (3, 30), generator=g)
    scores = torch.randn(3, 6, generator=g)
    assert_same(tm.NoRepeatNGramLogitsProcessor(n)(ids, scores.clone()),
                hf.NoRepeatNGramLogitsProcessor(n)(ids, scores.clone()))


def test_sequence_bias():
    bias = [[[3], 2.5], [[10, 11], -4.0], [[3, 4, 7], 1.5], [[4, 8], 3.0], [[50, 51, 52], -1.0], [[4, 7], 0.25]]
    check("SequenceBiasLogitsProcessor", bias)
    # the prefix [.., 3, 4] ends some rows: force it at the end
    ids, scores = random_inputs(7)
    ids[:2, -2:] = torch.tensor([3, 4])
    assert_same(tm.SequenceBiasLogitsProcessor(bias)(ids, scores.clone()),
                hf.SequenceBiasLogitsProcessor(bias)(ids, scores.clone()))
    # the dict form transformers still accepts
    as_dict = {tuple(ids_): b for ids_, b in bias}
    assert_same(tm.SequenceBiasLogitsProcessor(dict(as_dict))(ids, scores.clone()),
                hf.SequenceBiasLogitsProcessor(dict(as_dict))(ids, scores.clone()))
    with pytest.raises(ValueError):
        tm.SequenceBiasLogitsProcessor([[[VOCAB + 1], 1.0]])(ids, scores)
    for bad in ([], [[[1], 1]], [[[-1], 1.0]], {(1,): 1}, "x"):
        with pytest.raises(ValueError):
            tm.SequenceBiasLogitsProcessor(bad)


@pytest.mark.parametrize("eos", [None, 3, [3, 60]])
def test_no_bad_words(eos):
    bad = [[3], [60], [4, 8], [3, 4, 9], [20, 21, 22, 23], [7]]
    ids, scores = random_inputs(3)
    ids[1, -3:] = torch.tensor([20, 21, 22])
    ids[2, -1] = 4
    assert_same(tm.NoBadWordsLogitsProcessor(bad, eos)(ids, scores.clone()),
                hf.NoBadWordsLogitsProcessor(bad, eos)(ids, scores.clone()))
    for bad_arg in ([], [1, 2], [[-1]]):
        with pytest.raises(ValueError):
            tm.NoBadWordsLogitsProcessor(bad_arg)


def test_suppress_tokens():
    check("SuppressTokensLogitsProcessor", [0, 5, 96, 40])
    for index in (11, 12, 13):
        check("SuppressTokensAtBeginLogitsProcessor", [1, 5, 7], index)


@pytest.mark.parametrize("min_length", [0, 5, 12, 13, 40])
@pytest.mark.parametrize("eos", [2, [2, 50]])
def test_min_length(min_length, eos):
    check("MinLengthLogitsProcessor", min_length, eos)
    check("MinNewTokensLengthLogitsProcessor", 8, min_length, eos)


def test_forced_bos_eos():
    check("ForcedBOSTokenLogitsProcessor", 5, length=1)
    check("ForcedBOSTokenLogitsProcessor", 5, length=2)
    for max_length in (12, 13, 14):
        check("ForcedEOSTokenLogitsProcessor", max_length, 9)
        check("ForcedEOSTokenLogitsProcessor", max_length, [9, 40])


def test_exponential_decay():
    for start in (0, 3, 20):
        check("ExponentialDecayLengthPenalty", (start, 1.5), [2, 7], 4)


def test_inf_nan_and_normalization():
    ids, scores = random_inputs(0)
    scores[0, 0] = math.nan
    scores[3, 1] = math.inf
    assert_same(tm.InfNanRemoveLogitsProcessor()(ids, scores.clone()),
                hf.InfNanRemoveLogitsProcessor()(ids, scores.clone()))
    check("LogitNormalization")


def test_constructor_errors_match():
    cases = [
        ("TemperatureLogitsWarper", (0.0,), {}), ("TemperatureLogitsWarper", (-1.0,), {}),
        ("TopKLogitsWarper", (0,), {}), ("TopKLogitsWarper", (-3,), {}),
        ("TopPLogitsWarper", (1.5,), {}), ("TopPLogitsWarper", (0.5,), {"min_tokens_to_keep": 0}),
        ("MinPLogitsWarper", (1.5,), {}), ("TypicalLogitsWarper", (1.0,), {}),
        ("EpsilonLogitsWarper", (0.0,), {}), ("EtaLogitsWarper", (1.0,), {}),
        ("RepetitionPenaltyLogitsProcessor", (0.0,), {}), ("NoRepeatNGramLogitsProcessor", (0,), {}),
        ("MinLengthLogitsProcessor", (-1, 2), {}), ("ForcedEOSTokenLogitsProcessor", (5, -1), {}),
    ]
    for name, args, kwargs in cases:
        with pytest.raises(ValueError):
            getattr(hf, name)(*args, **kwargs)
        with pytest.raises(ValueError):
            getattr(tm, name)(*args, **kwargs)


def test_processor_list_passes_kwargs():
    class NeedsExtra(tm.LogitsProcessor):
        def __call__(self, input_ids, scores, step):
            return scores + step

    class Plain(tm.LogitsProcessor):
        def __call__(self, input_ids, scores):
            return scores * 2

    ids, scores = random_inputs(0)
    chain = tm.LogitsProcessorList([Plain(), NeedsExtra()])
    assert torch.equal(chain(ids, scores, step=1.0), scores * 2 + 1.0)  # the same two float32 operations in order
    with pytest.raises(ValueError, match="step"):
        chain(ids, scores)
    with pytest.raises(NotImplementedError):
        tm.LogitsProcessor()(ids, scores)


# ---- build_logits_processor vs transformers' _get_logits_processor --------------------------------------------

CONFIGS = [
    {},
    {"do_sample": True},
    {"do_sample": True, "temperature": 0.7, "top_k": 20, "top_p": 0.9, "min_p": 0.05},
    {"do_sample": True, "top_k": 0, "typical_p": 0.8, "epsilon_cutoff": 3e-4, "eta_cutoff": 1e-3,
     "renormalize_logits": True},
    {"repetition_penalty": 1.3, "no_repeat_ngram_size": 3, "min_length": 15, "min_new_tokens": 2,
     "bad_words_ids": [[5], [6, 7]], "sequence_bias": [[[9], 2.0], [[3, 4], -1.0]]},
    {"forced_bos_token_id": 1, "forced_eos_token_id": 2, "remove_invalid_values": True,
     "suppress_tokens": [11, 12], "begin_suppress_tokens": [13], "exponential_decay_length_penalty": (2, 1.2)},
    {"do_sample": True, "num_beams": 3, "top_k": 2, "top_p": 0.5, "renormalize_logits": True},
    {"do_sample": False, "temperature": 0.5, "top_p": 0.5, "repetition_penalty": 0.9},
]


def hf_processors(config_kwargs, prompt_length, user=None, attention_mask=None):
    """transformers' own list, built by the real `_get_logits_processor` on a stand-in model object."""
    import transformers
    from transformers.generation.utils import GenerationMixin

    config = transformers.GenerationConfig(**{"max_length": 20, "eos_token_id": 2, **config_kwargs})
    for key, value in config._get_default_generation_params().items():
        if getattr(config, key, None) is None:
            setattr(config, key, value)
    config._eos_token_tensor = torch.tensor([2])

    class Stub(GenerationMixin):
        class config:
            is_encoder_decoder = False

    model_kwargs = {"attention_mask": attention_mask} if attention_mask is not None else None
    return Stub()._get_logits_processor(config, input_ids_seq_length=prompt_length,
                                        logits_processor=user or hf.LogitsProcessorList(), model_kwargs=model_kwargs)


@pytest.mark.parametrize("config_kwargs", CONFIGS)
def test_build_matches_transformers(config_kwargs):
    ours = tm.build_logits_processor(GenerationConfig(max_length=20, eos_token_id=2, **config_kwargs), 12)
    theirs = hf_processors(config_kwargs, 12)
    assert [type(p).__name__ for p in ours] == [type(p).__name__ for p in theirs]
    for seed in SEEDS:
        ids, scores = random_inputs(seed, length=12)
        assert_same(ours(ids, scores.clone()), theirs(ids, scores.clone()))
    for length in (1, 19):  # forced BOS / forced EOS steps
        ids, scores = random_inputs(5, length=length)
        assert_same(ours(ids, scores.clone()), theirs(ids, scores.clone()))


def test_build_repetition_penalty_skips_left_padding():
    mask = torch.ones(4, 12, dtype=torch.long)
    mask[1, :3] = 0
    mask[3, :6] = 0
    ours = tm.build_logits_processor(GenerationConfig(repetition_penalty=1.5), 12, attention_mask=mask)
    theirs = hf_processors({"repetition_penalty": 1.5}, 12, attention_mask=mask)
    ids, scores = random_inputs(1)
    assert_same(ours(ids, scores.clone()), theirs(ids, scores.clone()))


def test_build_merges_user_processors_like_transformers():
    config = {"do_sample": True, "repetition_penalty": 1.2, "temperature": 0.8}
    user_ours = tm.LogitsProcessorList([tm.RepetitionPenaltyLogitsProcessor(3.0), tm.MinPLogitsWarper(0.1)])
    user_theirs = hf.LogitsProcessorList([hf.RepetitionPenaltyLogitsProcessor(3.0), hf.MinPLogitsWarper(0.1)])
    ours = tm.build_logits_processor(GenerationConfig(**config), 12, user_ours)
    theirs = hf_processors(config, 12, user_theirs)
    assert [type(p).__name__ for p in ours] == [type(p).__name__ for p in theirs]
    assert ours[0] is user_ours[0]
    ids, scores = random_inputs(2)
    assert_same(ours(ids, scores.clone()), theirs(ids, scores.clone()))
    with pytest.raises(ValueError, match="RepetitionPenaltyLogitsProcessor"):
        tm.build_logits_processor(GenerationConfig(**config), 12, user_ours, strict_merge=True)


def test_build_rejects_unsupported():
    with pytest.raises(ValueError, match="guidance_scale"):
        tm.build_logits_processor(GenerationConfig(guidance_scale=2.0), 4)
    with pytest.raises(ValueError, match="watermark_processor"):
        tm.build_logits_processor(GenerationConfig(watermarking_config={"bias": 2.0}), 4)


def test_build_places_watermark_before_normalization():
    class Mark(tm.LogitsProcessor):
        def __call__(self, input_ids, scores):
            return scores

    config = GenerationConfig(do_sample=True, top_p=0.5, renormalize_logits=True, watermarking_config={"bias": 2.0})
    names = [type(p).__name__ for p in tm.build_logits_processor(config, 4, watermark_processor=Mark())]
    assert names == ["TopKLogitsWarper", "TopPLogitsWarper", "Mark", "LogitNormalization"]


def test_set_seed_reproduces_every_generator():
    import random

    import numpy as np

    from tokenmill.generation.utils import set_seed

    def draw():
        return random.random(), float(np.random.rand()), torch.rand(3).tolist(), torch.multinomial(
            torch.ones(10), 4).tolist()

    set_seed(1234)
    first = draw()
    set_seed(1234)
    assert draw() == first
    set_seed(4321)
    assert draw() != first
