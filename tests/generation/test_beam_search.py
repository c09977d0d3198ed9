"""Beam search against transformers' generate(num_beams=...): sequences, sequences_scores, beam_indices, scores."""

from __future__ import annotations

import pytest
import torch

from tokenmill import AutoModelForCausalLM
from tokenmill.generation.transition_scores import compute_transition_scores

# single_thread is an autouse fixture (one intra-op thread for tiny models)
try:  # tests/generation is a plain folder on sys.path, or a package
    from decoding_fixtures import left_padded_prompts, save_tiny_llama, single_thread  # noqa: F401
except ImportError:
    from .decoding_fixtures import left_padded_prompts, save_tiny_llama, single_thread  # noqa: F401

from numerics import score_tolerance, summation_tolerance


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("beam-llama")
    oracle = save_tiny_llama(folder)
    return oracle, AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)


@pytest.fixture(scope="module")
def frequent_tokens(pair):
    """Tokens the model often emits: used as eos so that beams really finish early."""
    oracle, _ = pair
    ids, mask = left_padded_prompts()
    out = oracle.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False, eos_token_id=None)
    counts = torch.bincount(out[:, ids.shape[1]:].flatten(), minlength=97)
    return counts.topk(3).indices.tolist()


def run_both(pair, **kwargs):
    oracle, model = pair
    ids, mask = left_padded_prompts()
    common = dict(max_new_tokens=12, return_dict_in_generate=True, output_scores=True, do_sample=False, **kwargs)
    return oracle.generate(ids, attention_mask=mask, **common), model.generate(ids, attention_mask=mask, **common)


def score_atol(config, out, steps: int = 1) -> float:
    """transformers' float32 and ours, same weights: tests/numerics.py's bound for scores (x steps for sums); the
    scores are log-probabilities, no smaller than the logits' spread, so they give the magnitude."""
    return score_tolerance(config, out.sequences.shape[1], torch.stack(out.scores), steps)


def assert_same_beams(expected, actual, config):
    assert torch.equal(actual.sequences, expected.sequences)
    torch.testing.assert_close(actual.sequences_scores, expected.sequences_scores,
                               atol=score_atol(config, expected, len(expected.scores)), rtol=0)
    assert torch.equal(actual.beam_indices.long(), expected.beam_indices.long())
    assert len(actual.scores) == len(expected.scores)
    for got, want in zip(actual.scores, expected.scores):
        finite = torch.isfinite(want)
        assert torch.equal(finite, torch.isfinite(got))
        torch.testing.assert_close(got[finite], want[finite], atol=score_atol(config, expected), rtol=0)


@pytest.mark.parametrize("settings, ends_early", [
    (dict(num_beams=4), True),
    (dict(num_beams=4, num_return_sequences=3, length_penalty=0.5, early_stopping=True), True),
    (dict(num_beams=3, num_return_sequences=2, early_stopping="never", length_penalty=2.0), False),
    (dict(num_beams=2, early_stopping=False, length_penalty=-1.0), True),
], ids=["default", "early-true-lp0.5", "never-lp2", "lp-neg"])
def test_beam_search_matches_oracle_with_eos(pair, frequent_tokens, settings, ends_early):
    expected, actual = run_both(pair, eos_token_id=frequent_tokens, **settings)
    # the eos tokens really end returned hypotheses early (a long-favouring penalty keeps full-length ones)
    assert bool((expected.beam_indices < 0).any()) == ends_early
    assert_same_beams(expected, actual, pair[1].config)


def test_beam_search_matches_oracle_without_eos(pair):
    expected, actual = run_both(pair, num_beams=3, num_return_sequences=3, eos_token_id=None)
    assert actual.sequences.shape[1] == 6 + 12
    assert_same_beams(expected, actual, pair[1].config)


def test_transition_scores_recover_sequence_scores(pair, frequent_tokens):
    _, model = pair
    _, out = run_both(pair, num_beams=4, num_return_sequences=2, eos_token_id=frequent_tokens, length_penalty=0.0)
    transition = compute_transition_scores(out.sequences, out.scores, out.beam_indices)
    # the same float32 scores summed in another order (length_penalty 0: no division)
    torch.testing.assert_close(transition.sum(-1), out.sequences_scores, atol=summation_tolerance(transition), rtol=0)
    via_model = model.compute_transition_scores(out.sequences, out.scores, out.beam_indices)
    assert torch.equal(via_model, transition)


@pytest.mark.parametrize("settings", [dict(), dict(num_return_sequences=2, length_penalty=0.5, early_stopping=True),
                                      dict(num_return_sequences=3, early_stopping="never", top_k=10)],
                         ids=["default", "nrs2-early-true", "nrs3-never-topk"])
def test_beam_sampling_matches_oracle_with_same_seed(pair, frequent_tokens, settings):
    oracle, model = pair
    ids, mask = left_padded_prompts()
    common = dict(max_new_tokens=10, do_sample=True, num_beams=3, top_k=0, temperature=0.7,
                  eos_token_id=frequent_tokens, return_dict_in_generate=True, output_scores=True)
    common.update(settings)
    for seed in range(3):
        torch.manual_seed(seed)
        expected = oracle.generate(ids, attention_mask=mask, **common)
        torch.manual_seed(seed)
        actual = model.generate(ids, attention_mask=mask, **common)
        assert_same_beams(expected, actual, model.config)


def test_beam_search_rejects_bad_settings(pair):
    _, model = pair
    ids, _ = left_padded_prompts(batch=1, pads=(0,))
    with pytest.raises(ValueError, match="num_return_sequences"):
        model.generate(ids, num_beams=2, num_return_sequences=3, max_new_tokens=3)


def test_beam_search_refuses_streamer(pair):
    _, model = pair
    ids, _ = left_padded_prompts(batch=1, pads=(0,))

    class Recorder:
        def put(self, value):
            pass

        def end(self):
            pass

    with pytest.raises(ValueError, match="streamer"):
        model.generate(ids, num_beams=2, max_new_tokens=3, streamer=Recorder())


# ---- diverse (group) beam search: moved out of transformers' core; oracle = direct algorithm + transformers ----

@torch.no_grad()
def reference_diverse_beam_search(oracle, prompt, groups, group_size, penalty, new_tokens, length_penalty=1.0):
    """Vijayakumar et al. 2016 without eos, no cache: groups advance in order; group g's log-probs are lowered by
    penalty x (times each token was chosen by groups < g at this step). Returns all hypotheses, best first."""
    beams = [[(0.0, prompt[0].tolist())] for _ in range(groups)]
    for _ in range(new_tokens):
        chosen_this_step: list[int] = []
        for group in range(groups):
            candidates = []
            for score, tokens in beams[group]:
                log_probs = torch.log_softmax(oracle(torch.tensor([tokens])).logits[0, -1], -1)
                for token in chosen_this_step:
                    log_probs[token] -= penalty
                top = log_probs.topk(group_size)
                candidates += [(score + value, tokens + [token]) for value, token in zip(top.values.tolist(),
                                                                                        top.indices.tolist())]
            beams[group] = sorted(candidates, key=lambda c: c[0], reverse=True)[:group_size]
            chosen_this_step += [tokens[-1] for _, tokens in beams[group]]
    finished = [(score / new_tokens ** length_penalty, tokens) for group in beams for score, tokens in group]
    return sorted(finished, key=lambda c: c[0], reverse=True)


@pytest.mark.parametrize("groups, group_size, penalty", [(2, 2, 0.0), (3, 2, 1.5), (2, 3, 5.0)])
def test_diverse_beam_search_matches_direct_algorithm(pair, groups, group_size, penalty):
    oracle, model = pair
    ids, _ = left_padded_prompts(batch=1, pads=(0,))
    beams = groups * group_size
    out = model.generate(ids, num_beams=beams, num_beam_groups=groups, diversity_penalty=penalty,
                         num_return_sequences=beams, max_new_tokens=6, eos_token_id=None, do_sample=False,
                         return_dict_in_generate=True, output_scores=True)
    expected = reference_diverse_beam_search(oracle, ids, groups, group_size, penalty, 6)
    torch.testing.assert_close(out.sequences_scores, torch.tensor([s for s, _ in expected]),
                               atol=score_atol(model.config, out, 6), rtol=0)
    assert sorted(out.sequences.tolist()) == sorted(tokens for _, tokens in expected)


def test_diverse_beam_search_groups_without_penalty_equal_plain_beam_search(pair):
    """With no diversity penalty every group is the same beam search of group_size beams (transformers' core)."""
    oracle, model = pair
    ids, mask = left_padded_prompts()
    out = model.generate(ids, attention_mask=mask, num_beams=4, num_beam_groups=2, diversity_penalty=0.0,
                         num_return_sequences=2, max_new_tokens=8, eos_token_id=None, do_sample=False,
                         return_dict_in_generate=True, output_scores=True)
    plain = oracle.generate(ids, attention_mask=mask, num_beams=2, max_new_tokens=8, eos_token_id=None,
                            do_sample=False, return_dict_in_generate=True, output_scores=True)
    # both groups found the same best hypothesis: it comes back twice
    assert torch.equal(out.sequences[0::2], plain.sequences) and torch.equal(out.sequences[1::2], plain.sequences)
    torch.testing.assert_close(out.sequences_scores[0::2], plain.sequences_scores,
                               atol=score_atol(model.config, out, 8), rtol=0)


def test_diverse_beam_search_transition_scores_sum_to_sequence_scores(pair, frequent_tokens):
    """One eos id: a finished hypothesis is returned with eos_token_id[0] appended, as transformers did."""
    _, model = pair
    ids, mask = left_padded_prompts()
    out = model.generate(ids, attention_mask=mask, num_beams=4, num_beam_groups=2, diversity_penalty=0.7,
                         num_return_sequences=3, max_new_tokens=10, eos_token_id=frequent_tokens[0], do_sample=False,
                         length_penalty=0.0, return_dict_in_generate=True, output_scores=True)
    assert bool((out.beam_indices < 0).any()), "some hypotheses should end early on eos"
    transition = compute_transition_scores(out.sequences, out.scores, out.beam_indices)
    # the same float32 scores summed in another order (length_penalty 0: no division)
    torch.testing.assert_close(transition.sum(-1), out.sequences_scores, atol=summation_tolerance(transition), rtol=0)


def test_diverse_beam_search_stops_on_eos(pair, frequent_tokens):
    _, model = pair
    ids, mask = left_padded_prompts()
    out = model.generate(ids, attention_mask=mask, num_beams=4, num_beam_groups=2, diversity_penalty=1.0,
                         num_return_sequences=3, max_new_tokens=12, eos_token_id=frequent_tokens, do_sample=False)
    for row in out[:, ids.shape[1]:].tolist():
        ended = [i for i, token in enumerate(row) if token in frequent_tokens]
        if ended:  # a finished hypothesis ends with eos followed only by padding
            assert all(token == 0 for token in row[ended[0] + 1:])
    assert any(token in frequent_tokens for row in out[:, ids.shape[1]:].tolist() for token in row)


def test_beam_search_stop_strings_match_oracle(smollm2_gguf, hf_smollm2_tokenizer, tmp_path_factory):
    from tokenmill.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_gguf(smollm2_gguf)
    folder = tmp_path_factory.mktemp("beam-stop-llama")
    oracle = save_tiny_llama(folder, vocab=len(tokenizer), eos=tokenizer.eos_token_id, logit_scale=4.0)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    ids = torch.tensor([tokenizer.encode("The weather today is", add_special_tokens=False)])
    # length_penalty 0 favours the short hypotheses that the stop string ends
    common = dict(num_beams=3, num_return_sequences=2, max_new_tokens=16, do_sample=False, length_penalty=0.0,
                  eos_token_id=tokenizer.eos_token_id, return_dict_in_generate=True, output_scores=True)
    free = model.generate(ids, **common).sequences[0, ids.shape[1]:].tolist()
    stop = tokenizer.decode(free[5:7]).strip() or tokenizer.decode(free[5:7])
    expected = oracle.generate(ids, stop_strings=[stop], tokenizer=hf_smollm2_tokenizer, **common)
    actual = model.generate(ids, stop_strings=[stop], tokenizer=tokenizer, **common)
    assert bool((expected.beam_indices[0] < 0).any()), "the stop string should end the best hypothesis early"
    assert_same_beams(expected, actual, model.config)


@pytest.mark.parametrize("kind", ["static", "offloaded"])
def test_beam_search_reorders_other_cache_kinds(pair, kind):
    """Beam search only touches the cache through Cache.reorder_cache, so every kind gives the oracle's beams."""
    expected, _ = run_both(pair, num_beams=3, eos_token_id=None)
    oracle, model = pair
    ids, mask = left_padded_prompts()
    actual = model.generate(ids, attention_mask=mask, max_new_tokens=12, return_dict_in_generate=True,
                            output_scores=True, do_sample=False, num_beams=3, eos_token_id=None,
                            cache_implementation=kind)
    assert_same_beams(expected, actual, pair[1].config)
