"""Per-token logprobs / top-n alternatives (the servers' `logprobs`, `top_logprobs`, `top_n_tokens`) and
compute_transition_scores, against transformers' compute_transition_scores on the same generations."""

from __future__ import annotations

import pytest
import torch

from tokenmill import AutoModelForCausalLM
from tokenmill.generation.transition_scores import compute_transition_scores, token_logprobs

# single_thread is an autouse fixture (one intra-op thread for tiny models)
try:  # tests/generation is a plain folder on sys.path, or a package
    from decoding_fixtures import left_padded_prompts, save_tiny_llama, single_thread  # noqa: F401
except ImportError:
    from .decoding_fixtures import left_padded_prompts, save_tiny_llama, single_thread  # noqa: F401

from numerics import rounding_floor, score_tolerance


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scores-llama")
    oracle = save_tiny_llama(folder, logit_scale=3.0)
    return oracle, AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)


@pytest.mark.parametrize("settings", [dict(do_sample=False), dict(do_sample=True, temperature=0.7, top_k=20),
                                      dict(num_beams=3, num_return_sequences=2)])
@pytest.mark.parametrize("normalize", [False, True])
def test_transition_scores_match_oracle(pair, settings, normalize):
    oracle, model = pair
    ids, mask = left_padded_prompts()
    common = dict(max_new_tokens=8, return_dict_in_generate=True, output_scores=True, eos_token_id=None, **settings)
    torch.manual_seed(0)
    out = model.generate(ids, attention_mask=mask, **common)
    ours = compute_transition_scores(out.sequences, out.scores, getattr(out, "beam_indices", None), normalize)
    theirs = oracle.compute_transition_scores(out.sequences, out.scores, getattr(out, "beam_indices", None), normalize)
    # the same float32 scores; gather is exact, normalize is one log-softmax over V entries each side:
    # tests/numerics.py's agreement bound for one reduction of length V
    scores = torch.stack(out.scores)
    atol = 2 * rounding_floor(scores.shape[-1], 1, scores.numel(), float(scores[torch.isfinite(scores)].abs().max()))
    torch.testing.assert_close(ours, theirs, atol=atol, rtol=0)


def test_token_logprobs_of_greedy_generation(pair):
    oracle, model = pair
    ids, mask = left_padded_prompts()
    out = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, eos_token_id=None,
                         return_dict_in_generate=True, output_logits=True)
    chosen = out.sequences[:, ids.shape[1]:]
    result = token_logprobs(out.logits, chosen, top_n=5)
    # greedy picks the most likely token: rank 1, equal to the best alternative
    assert bool((result.ranks == 1).all())
    assert torch.equal(result.top_ids[..., 0], chosen)
    assert torch.equal(result.top_logprobs[..., 0], result.chosen)  # the same entries of one log-softmax
    # the values are log-softmax of the oracle's logits for the same sequences
    with torch.no_grad():
        full_mask = torch.cat([mask, torch.ones_like(chosen)], dim=1)
        logits = oracle(out.sequences, attention_mask=full_mask).logits[:, ids.shape[1] - 1:-1]
    expected = torch.log_softmax(logits, -1)
    atol = score_tolerance(model.config, out.sequences.shape[1], logits)  # tests/numerics.py: two float32 runs
    torch.testing.assert_close(result.chosen, expected.gather(-1, chosen[..., None]).squeeze(-1), atol=atol, rtol=0)
    torch.testing.assert_close(result.top_logprobs, expected.topk(5, dim=-1).values, atol=atol, rtol=0)
    assert bool((result.top_logprobs[..., :-1] >= result.top_logprobs[..., 1:]).all())


def test_token_logprobs_ranks_and_errors():
    logits = torch.tensor([[[0.0, 2.0, 1.0, -1.0]]])
    result = token_logprobs(logits, torch.tensor([[2]]), top_n=2)
    assert result.ranks.tolist() == [[2]] and result.top_ids.tolist() == [[[1, 2]]]
    # exp(log_softmax) against softmax of 4 values: a few float32 roundings, within torch's defaults (rtol ~22u)
    torch.testing.assert_close(result.chosen.exp().sum() + 0, torch.softmax(logits, -1)[0, 0, 2])
    assert token_logprobs(logits, torch.tensor([[2]])).top_ids.shape == (1, 1, 0)
    with pytest.raises(ValueError, match="top_n"):
        token_logprobs(logits, torch.tensor([[2]]), top_n=9)
    with pytest.raises(ValueError, match="chosen_ids"):
        token_logprobs(logits, torch.tensor([[2, 1]]))


@pytest.mark.parametrize("settings", [
    dict(do_sample=False, eos_token_id="frequent"),
    dict(do_sample=True, temperature=0.7, top_k=20, num_return_sequences=2, eos_token_id="frequent"),
    dict(do_sample=False, repetition_penalty=1.4, eos_token_id=None),
    dict(num_beams=3, num_return_sequences=2, length_penalty=0.7, eos_token_id="frequent"),
], ids=["greedy", "sample-nrs2", "greedy-penalty", "beam"])
def test_output_dict_matches_oracle(pair, settings):
    """return_dict_in_generate with output_scores + output_logits: every field transformers fills, on a batch of
    left-padded prompts, equal to transformers 5.24's (the scores differ from the logits: processors ran)."""
    oracle, model = pair
    ids, mask = left_padded_prompts()
    if settings["eos_token_id"] == "frequent":  # a token greedy decoding emits, so that rows really end early
        free = oracle.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False, eos_token_id=None)
        settings = dict(settings, eos_token_id=int(free[:, ids.shape[1]:].flatten().mode().values))
    common = dict(max_new_tokens=8, return_dict_in_generate=True, output_scores=True, output_logits=True, **settings)
    eos = settings["eos_token_id"]
    torch.manual_seed(0)
    theirs = oracle.generate(ids, attention_mask=mask, **common)
    torch.manual_seed(0)
    ours = model.generate(ids, attention_mask=mask, **common)
    assert torch.equal(ours.sequences, theirs.sequences)
    # transformers' float32 and ours, same weights: tests/numerics.py's bound (log-softmaxed scores: twice the logits')
    atol = score_tolerance(model.config, ours.sequences.shape[1], torch.stack(theirs.logits))
    for field in ("scores", "logits"):
        got, want = torch.stack(getattr(ours, field)), torch.stack(getattr(theirs, field))
        assert got.shape == want.shape
        finite = torch.isfinite(want)
        assert torch.equal(torch.isfinite(got), finite), field
        torch.testing.assert_close(got[finite], want[finite], atol=atol, rtol=0)
    if "num_beams" in settings:  # a sum of one score per step
        torch.testing.assert_close(ours.sequences_scores, theirs.sequences_scores, atol=atol * len(ours.scores), rtol=0)
        assert torch.equal(ours.beam_indices, theirs.beam_indices)
    if settings != dict(do_sample=False, eos_token_id=eos):  # processors ran: scores are not the raw logits
        assert not torch.allclose(torch.stack(ours.scores), torch.stack(ours.logits))
    assert eos is None or bool((ours.sequences[:, ids.shape[1]:] == eos).any()), "eos should end some row early"
