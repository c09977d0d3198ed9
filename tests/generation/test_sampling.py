"""generation/sampling.py with one parameter value per row: each row must come out exactly as transformers'
class of the same role processes that row alone (the scalar path is covered by test_logits_process.py, which
runs the warper classes built on these functions); `Warpers` in transformers' order; `draw` as torch.multinomial."""

from __future__ import annotations

import math

import pytest
import torch
import transformers.generation.logits_process as hf

from tokenmill.generation import sampling

try:  # tests/generation is a plain folder on sys.path, or a package
    from test_logits_process import hf_processors, random_inputs
except ImportError:
    from .test_logits_process import hf_processors, random_inputs

BATCH = 6


def batch_scores(seed: int) -> torch.Tensor:
    """Random rows with ties, duplicated maxima and -inf already present (random_inputs' rows, tiled)."""
    _, scores = random_inputs(seed, batch=4)
    return torch.cat([scores, scores[:2].flip(-1)])[:BATCH]


def row_by_row(scores: torch.Tensor, make_processor, values, off) -> torch.Tensor:
    """transformers' class applied to each row alone with that row's value (rows whose value is `off` untouched)."""
    ids = torch.zeros((1, 1), dtype=torch.long)
    rows = [row[None] if value == off else make_processor(value)(ids, row[None].clone())
            for row, value in zip(scores, values)]
    return torch.cat(rows)


def assert_exact(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    # same arithmetic, so the same floats: equal -inf masks and equal finite values, bit for bit
    assert torch.equal(torch.isneginf(ours), torch.isneginf(theirs))
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_per_row_temperature(seed):
    scores, values = batch_scores(seed), [0.3, 1.0, 2.5, 0.7, 1.3, 1.0]
    ours = sampling.apply_temperature(scores.clone(), torch.tensor(values))
    assert_exact(ours, row_by_row(scores, hf.TemperatureLogitsWarper, values, off=1.0))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("keep", [1, 3])
def test_per_row_top_k(seed, keep):
    scores, values = batch_scores(seed), [1, 0, 3, 7, 500, 2]
    ours = sampling.apply_top_k(scores.clone(), torch.tensor(values), keep)
    theirs = row_by_row(scores, lambda k: hf.TopKLogitsWarper(k, min_tokens_to_keep=keep), values, off=0)
    assert_exact(ours, theirs)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("keep", [1, 4])
def test_per_row_top_p(seed, keep):
    scores, values = batch_scores(seed), [0.9, 1.0, 0.3, 0.05, 0.999, 0.5]
    ours = sampling.apply_top_p(scores.clone(), torch.tensor(values), keep)
    theirs = row_by_row(scores, lambda p: hf.TopPLogitsWarper(p, min_tokens_to_keep=keep), values, off=1.0)
    assert_exact(ours, theirs)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("keep", [1, 4])
def test_per_row_min_p(seed, keep):
    scores, values = batch_scores(seed), [0.1, 0.0, 0.5, 0.9, 0.02, 1.0]
    ours = sampling.apply_min_p(scores.clone(), torch.tensor(values), keep)
    theirs = row_by_row(scores, lambda p: hf.MinPLogitsWarper(p, min_tokens_to_keep=keep), values, off=None)
    assert_exact(ours, theirs)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("keep", [1, 4])
def test_per_row_typical(seed, keep):
    scores, values = batch_scores(seed), [0.9, 1.0, 0.2, 0.5, 0.99, 0.05]
    ours = sampling.apply_typical(scores.clone(), torch.tensor(values), keep)
    theirs = row_by_row(scores, lambda m: hf.TypicalLogitsWarper(m, min_tokens_to_keep=keep), values, off=1.0)
    assert_exact(ours, theirs)


def test_per_row_min_tokens_to_keep():
    scores = batch_scores(3)
    keep = torch.tensor([1, 2, 5, 1, 3, 8])
    for name, value, function in [("TopPLogitsWarper", 0.2, sampling.apply_top_p),
                                  ("MinPLogitsWarper", 0.6, sampling.apply_min_p),
                                  ("TypicalLogitsWarper", 0.3, sampling.apply_typical),
                                  ("TopKLogitsWarper", 2, sampling.apply_top_k)]:
        ours = function(scores.clone(), torch.full((BATCH,), value), keep)
        theirs = torch.cat([getattr(hf, name)(value, min_tokens_to_keep=int(k))(None, row[None].clone())
                            for row, k in zip(scores, keep)])
        assert_exact(ours, theirs)


@pytest.mark.parametrize("seed", [0, 1])
def test_per_row_repetition_penalty(seed):
    ids, scores = random_inputs(seed, batch=4)
    penalties = [1.3, 1.0, 0.8, 2.0]
    padded = torch.cat([ids, torch.tensor([[-1, 500]] * 4)], 1)  # ids outside the vocabulary: padding
    ours = sampling.apply_repetition_penalty(scores.clone(), padded, torch.tensor(penalties))
    theirs = torch.cat([hf.RepetitionPenaltyLogitsProcessor(p)(ids[i:i + 1], scores[i:i + 1].clone())
                        for i, p in enumerate(penalties)])
    assert_exact(ours, theirs)


@pytest.mark.parametrize("config", [
    {"temperature": 0.7, "top_k": 5, "top_p": 0.8, "min_p": 0.05, "typical_p": 0.9},
    {"temperature": 1.6, "top_p": 0.6, "typical_p": 0.5},
    {"top_k": 3, "min_p": 0.2},
])
def test_warpers_apply_in_transformers_order(config):
    """Every warper on at once: the result equals transformers' own processor list for the same config."""
    theirs = hf_processors({"do_sample": True, "top_k": 0, **config}, 12)
    ours = sampling.Warpers(**config)
    per_row = sampling.Warpers.per_row(*([config.get(name, off)] * BATCH for name, off in
                                         [("temperature", 1.0), ("top_k", 0), ("top_p", 1.0), ("min_p", 0.0),
                                          ("typical_p", 1.0)]))
    for seed in (0, 1, 2):
        ids, scores = random_inputs(seed, batch=4)
        expected = theirs(ids, scores.clone())
        assert_exact(ours(scores.clone()), expected)
        tiled = torch.cat([scores, scores[:2]])
        assert_exact(per_row(tiled)[:4], expected)


def test_per_row_warpers_leave_off_rows_alone():
    scores = batch_scores(4)
    warpers = sampling.Warpers.per_row(temperature=[1.0, 0.5] * 3, top_k=[0, 4] * 3, top_p=[1.0, 0.7] * 3,
                                       min_p=[0.0, 0.1] * 3, typical_p=[1.0, 0.8] * 3)
    warped = warpers(scores.clone())
    assert torch.equal(warped[0::2], scores[0::2])
    assert not torch.equal(warped[1::2], scores[1::2])
    assert sampling.Warpers.per_row([1.0], [0], [1.0], [0.0], [1.0]) == sampling.Warpers()


def test_draw_is_multinomial_with_each_rows_generator():
    probs = torch.softmax(batch_scores(5), -1)
    seeds = [11, 12, 13, 14, 15, 16]
    drawn = sampling.draw(probs, [torch.Generator().manual_seed(s) for s in seeds])
    alone = [int(torch.multinomial(p[None], 1, generator=torch.Generator().manual_seed(s)))
             for p, s in zip(probs, seeds)]
    assert drawn.tolist() == alone
    # a row's token depends on its own generator only, not on its neighbours in the batch
    assert sampling.draw(probs[2:3], [torch.Generator().manual_seed(13)]).tolist() == alone[2:3]
    torch.manual_seed(7)
    global_draw = sampling.draw(probs)
    torch.manual_seed(7)
    assert torch.equal(global_draw, torch.multinomial(probs, 1)[:, 0])


def test_draw_follows_the_distribution():
    probs = torch.tensor([[0.0, 0.25, 0.75, 0.0]])
    generator = torch.Generator().manual_seed(0)
    counts = torch.bincount(torch.cat([sampling.draw(probs, [generator]) for _ in range(4000)]), minlength=4)
    assert counts[0] == counts[3] == 0
    assert abs(float(counts[2]) / 4000 - 0.75) < 0.03  # 5 standard deviations of a 4000-draw binomial
    assert math.isclose(float(probs.sum()), 1.0)


@pytest.mark.parametrize("per_row", [False, True])
def test_thresholds_on_exact_boundaries(per_row):
    """Uniform rows make the cumulative mass hit 1 - top_p exactly and every token sit at min_p * max: a token
    whose cumulative mass equals 1 - top_p is dropped, a token exactly at the min-p threshold is kept."""
    scores = torch.zeros((2, 4))  # probabilities exactly 0.25

    def value(x):
        return torch.full((2,), x) if per_row else x

    ids = torch.zeros((2, 1), dtype=torch.long)
    top_p = sampling.apply_top_p(scores.clone(), value(0.75))
    assert_exact(top_p, hf.TopPLogitsWarper(0.75)(ids, scores.clone()))
    assert torch.isneginf(top_p).sum(-1).tolist() == [1, 1]
    min_p = sampling.apply_min_p(scores.clone(), value(1.0))
    assert_exact(min_p, hf.MinPLogitsWarper(1.0)(ids, scores.clone()))
    assert not torch.isneginf(min_p).any()
