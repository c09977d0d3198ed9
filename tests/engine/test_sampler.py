"""The engine's sampler against generate(): the same parameters and seed give the same tokens, and each step's
distribution equals the processed scores of transformers' generate() and of tokenmill's generate() (both
oracles see the same raw logits as the engine's sampler here, so the comparison is exact)."""

import pytest
import torch

from tokenmill.engine import LLM, SamplingParams
from tokenmill.engine.sampler import choice_seed, choose_tokens, sampling_probs
from tokenmill.engine.sequence import Sequence
from tokenmill.execution.ops import TORCH_OPS

PROMPT = [5, 17, 42, 8, 8, 63, 17, 90, 3, 42, 11]
# (engine parameters, the same for generate()); top_k=0 turns generate()'s default top_k=50 off
CASES = [
    ({"temperature": 0.8, "top_k": 20, "top_p": 0.9, "min_p": 0.05, "typical_p": 0.95, "repetition_penalty": 1.3},
     {"do_sample": True, "temperature": 0.8, "top_k": 20, "top_p": 0.9, "min_p": 0.05, "typical_p": 0.95,
      "repetition_penalty": 1.3}),
    ({"temperature": 1.4, "top_p": 0.5}, {"do_sample": True, "temperature": 1.4, "top_p": 0.5, "top_k": 0}),
    ({"typical_p": 0.6, "min_p": 0.1}, {"do_sample": True, "typical_p": 0.6, "min_p": 0.1, "top_k": 0}),
    ({"top_k": 3, "repetition_penalty": 0.7}, {"do_sample": True, "top_k": 3, "repetition_penalty": 0.7}),
]
NEW_TOKENS = 8


def _generate(model, generate_kwargs, seed):
    torch.manual_seed(seed)
    with torch.no_grad():
        return model.generate(torch.tensor([PROMPT]), max_new_tokens=NEW_TOKENS, output_scores=True,
                              output_logits=True, return_dict_in_generate=True, **generate_kwargs)


def _assert_engine_distributions_match(out, engine_kwargs):
    """At every step: the engine's distribution for the sequence so far == softmax of generate()'s scores."""
    params = SamplingParams(**engine_kwargs, max_tokens=NEW_TOKENS)
    generated = out.sequences[0, len(PROMPT):].tolist()
    for step, (raw, processed) in enumerate(zip(out.logits, out.scores)):
        seq = Sequence("r", 0, list(PROMPT), params)
        seq.output_token_ids = generated[:step]
        ours = sampling_probs(raw.float(), [seq], eos_ids=[], ops=TORCH_OPS)
        expected = processed.float().softmax(-1)
        assert torch.equal(torch.isfinite(ours.log()), torch.isfinite(expected.log())), f"step {step}: support"
        torch.testing.assert_close(ours, expected, rtol=0, atol=0, msg=f"step {step}")


@pytest.mark.parametrize("engine_kwargs, generate_kwargs", CASES)
def test_step_distributions_equal_transformers_generate(hf_tiny, engine_kwargs, generate_kwargs):
    _assert_engine_distributions_match(_generate(hf_tiny, generate_kwargs, seed=3), engine_kwargs)


@pytest.mark.parametrize("engine_kwargs, generate_kwargs", CASES)
def test_step_distributions_equal_tokenmill_generate(tiny_model, engine_kwargs, generate_kwargs):
    _assert_engine_distributions_match(_generate(tiny_model, generate_kwargs, seed=3), engine_kwargs)


@pytest.mark.parametrize("engine_kwargs, generate_kwargs", CASES + [
    ({"temperature": 0, "repetition_penalty": 1.5}, {"do_sample": False, "repetition_penalty": 1.5}),
])
@pytest.mark.parametrize("seed", [0, 1234])
def test_same_seed_same_tokens_as_generate(tiny_model, engine_kwargs, generate_kwargs, seed):
    expected = _generate(tiny_model, generate_kwargs, seed).sequences[0, len(PROMPT):].tolist()
    llm = LLM(tiny_model, num_blocks=32, block_size=4)
    params = SamplingParams(**engine_kwargs, max_tokens=NEW_TOKENS, seed=seed, ignore_eos=True)
    assert llm.generate([PROMPT], params)[0].outputs[0].token_ids == expected


def _batch():
    """Rows with different parameters, one greedy, with histories and biases that the penalties see."""
    specs = [dict(temperature=0.7, top_k=10, seed=1), dict(temperature=0, repetition_penalty=1.4),
             dict(top_p=0.6, min_p=0.05, presence_penalty=0.5, frequency_penalty=0.3, seed=2),
             dict(typical_p=0.7, repetition_penalty=0.8, logit_bias={4: 3.0, 9: -100.0}, seed=3),
             dict(temperature=1.3, min_tokens=5, stop_token_ids=[7], seed=4)]
    seqs = []
    for i, spec in enumerate(specs):
        seq = Sequence(f"r{i}", 0, PROMPT[i:], SamplingParams(**spec))
        seq.output_token_ids = [7, 3, 3, i]
        if seq.params.sampled:
            seq.generator = torch.Generator().manual_seed(seq.params.seed)
        seqs.append(seq)
    return seqs


def test_a_batch_samples_each_row_as_it_would_alone():
    logits = torch.randn(5, 96, generator=torch.Generator().manual_seed(0)) * 3
    together = sampling_probs(logits, _batch(), eos_ids=[2], ops=TORCH_OPS)
    alone = torch.cat([sampling_probs(logits[i:i + 1], [seq], eos_ids=[2], ops=TORCH_OPS) for i, seq in enumerate(_batch())])
    assert torch.equal(together, alone)
    assert together[3, 9] == 0 and together[4, 2] == 0 and together[4, 7] == 0  # bias -100, min_tokens
    tokens = choose_tokens(logits, _batch(), eos_ids=[2], ops=TORCH_OPS)
    assert tokens == [choose_tokens(logits[i:i + 1], [seq], eos_ids=[2], ops=TORCH_OPS)[0] for i, seq in enumerate(_batch())]


def test_choice_seeds_never_collide():
    assert choice_seed(41, 0) == 41  # choice 0 draws the stream generate() draws after torch.manual_seed(41)
    seeds = {choice_seed(seed, index) for seed in range(500) for index in range(8)}
    assert len(seeds) == 500 * 8


def test_neighbouring_seeds_give_distinct_choices(tiny_model):
    llm = LLM(tiny_model, num_blocks=128, block_size=4)
    seeds = range(100, 106)
    params = [SamplingParams(temperature=1.0, max_tokens=6, seed=s, n=3, ignore_eos=True) for s in seeds]
    outputs = llm.generate([PROMPT] * len(params), params)
    streams = [tuple(o.token_ids) for output in outputs for o in output.outputs]
    assert len(set(streams)) == len(streams)
    assert [o.seed for o in outputs[0].outputs][0] == 100


def test_rows_without_a_finite_distribution_get_no_token_and_the_others_theirs():
    from tokenmill.engine.sampler import NO_TOKEN, sample

    logits = torch.randn(4, 96, generator=torch.Generator().manual_seed(1))
    poisoned = logits.clone()
    poisoned[1, 7] = float("nan")  # sampled row
    poisoned[2, 9] = float("inf")  # greedy row
    seqs = [Sequence("r", i, [1, 2], SamplingParams(temperature=t, seed=4)) for i, t in enumerate([0, 0.8, 0, 0.8])]
    for seq in seqs:
        seq.generator = torch.Generator().manual_seed(4) if seq.params.sampled else None
    tokens = sample(poisoned, seqs, eos_ids=[], ops=TORCH_OPS)
    assert tokens[1] == NO_TOKEN and tokens[2] == NO_TOKEN
    for seq in seqs:
        seq.generator = torch.Generator().manual_seed(4) if seq.params.sampled else None
    for i in (0, 3):
        assert tokens[i] == sample(logits[i:i + 1], [seqs[i]], eos_ids=[], ops=TORCH_OPS)[0]


def test_a_grammar_that_raises_fails_its_row_alone():
    from tokenmill.engine.sampler import NO_TOKEN, sample

    class Broken:
        def __call__(self, token_ids, scores):
            raise RuntimeError("matcher state lost")

    logits = torch.randn(2, 96, generator=torch.Generator().manual_seed(2))
    seqs = [Sequence("r", i, [1, 2], SamplingParams(temperature=0)) for i in range(2)]
    tokens = sample(logits, seqs, eos_ids=[], ops=TORCH_OPS, constraints=[Broken(), None])
    assert tokens == [NO_TOKEN, int(logits[1].argmax())]
    assert "structured output failed" in seqs[0].error and "matcher state lost" in seqs[0].error


# ---- value tests on fixed logits (no model): each transform against a hand-computed result ----

from tokenmill.engine.sampler import (apply_logit_bias, apply_penalties, block_early_stop, constrain,  # noqa: E402
                                      needs_slow_path, prompt_logprobs, record_logprobs, sample)
from tokenmill.engine.sampler import _row_token_mask  # noqa: E402


def _seq(outputs=(), prompt=(0,), **params):
    seq = Sequence("r", 0, list(prompt), SamplingParams(**params))
    seq.output_token_ids = list(outputs)
    return seq


def _log(probs):
    return torch.tensor(probs, dtype=torch.float32).log()


def test_row_token_mask_ignores_ids_outside_the_vocabulary():
    mask = _row_token_mask([[1, 5, 6, 99, -1], [], [0, 0]], 6, "cpu")
    expected = torch.zeros(3, 6, dtype=torch.bool)
    expected[0, 1] = expected[0, 5] = expected[2, 0] = True
    assert torch.equal(mask, expected)


def test_logit_bias_adds_per_row_and_skips_unknown_ids():
    logits = torch.zeros(2, 4)
    biased = apply_logit_bias(logits, [_seq(logit_bias={1: 2.0, 3: -1.5, 4: 9.0, -1: 9.0}), _seq()])
    assert torch.equal(biased, torch.tensor([[0.0, 2.0, 0.0, -1.5], [0.0, 0.0, 0.0, 0.0]]))
    assert apply_logit_bias(logits, [_seq(logit_bias={9: 1.0}), _seq()]) is logits
    wide = apply_logit_bias(torch.zeros(1, 3, dtype=torch.float64), [_seq(logit_bias={0: 1.5})])  # token 0, float64
    assert wide.dtype == torch.float64 and wide.tolist() == [[1.5, 0.0, 0.0]]


def test_min_tokens_blocks_eos_and_stop_ids_until_reached_unless_nothing_is_left():
    logits = torch.zeros(3, 4)
    seqs = [_seq(outputs=[1], min_tokens=2, stop_token_ids=[3]), _seq(outputs=[1, 1], min_tokens=2),
            _seq(min_tokens=1)]
    blocked = block_early_stop(logits, seqs, eos_ids=[2])
    inf = float("-inf")
    assert torch.equal(blocked, torch.tensor([[0.0, 0.0, inf, inf], [0.0] * 4, [0.0, 0.0, inf, 0.0]]))
    assert block_early_stop(logits, seqs[1:2], eos_ids=[2]) is logits
    assert torch.equal(block_early_stop(logits, [_seq(min_tokens=2)], eos_ids=[4, 99]), logits)  # ids past the vocabulary
    only_eos = torch.tensor([[inf, inf, 1.0, inf]])  # a finished grammar allows only eos
    assert torch.equal(block_early_stop(only_eos, [_seq(min_tokens=3)], eos_ids=[2]), only_eos)


def test_penalties_by_hand():
    logits = torch.tensor([[2.0, -2.0, 1.0, 4.0], [2.0, -2.0, 1.0, 4.0], [2.0, -2.0, 1.0, 4.0]])
    seqs = [_seq(prompt=[0], outputs=[1], repetition_penalty=2.0),  # prompt and output tokens
            _seq(prompt=[3], outputs=[2, 2, 0], presence_penalty=0.5, frequency_penalty=0.25),  # outputs only
            _seq(prompt=[0], outputs=[1, 2])]  # no penalty
    penalized = apply_penalties(logits, seqs)
    assert torch.equal(penalized, torch.tensor([
        [1.0, -4.0, 1.0, 4.0],
        [2.0 - 0.25 - 0.5, -2.0, 1.0 - 0.5 - 0.5, 4.0],
        [2.0, -2.0, 1.0, 4.0]]))
    assert torch.equal(apply_penalties(logits, [_seq(outputs=[1, 2])] * 3), logits)


def test_each_warper_by_hand():
    # probabilities [0.2, 0.5, 0.3] in vocabulary order: sorting must be undone
    logits = _log([[0.2, 0.5, 0.3]] * 4)
    seqs = [_seq(top_p=0.6), _seq(min_p=0.5), _seq(top_k=1), _seq(temperature=2.0)]
    probs = sampling_probs(logits, seqs, eos_ids=[], ops=TORCH_OPS)
    tempered = torch.tensor([0.2, 0.5, 0.3]).sqrt()
    expected = torch.stack([
        torch.tensor([0.0, 0.5 / 0.8, 0.3 / 0.8]),  # top-p 0.6: 0.5 alone is short of it, 0.3 crosses and is kept
        torch.tensor([0.0, 0.5 / 0.8, 0.3 / 0.8]),  # min-p 0.5: relative to the top token (0.25), not absolute
        torch.tensor([0.0, 1.0, 0.0]),
        tempered / tempered.sum()])
    torch.testing.assert_close(probs, expected, rtol=1e-6, atol=0)  # float32 rounding of a softmax


def test_greedy_rows_are_one_hot_on_the_adjusted_argmax_and_never_warped():
    logits = torch.tensor([[3.0, 1.0, 2.0], [3.0, 1.0, 2.0]])
    seqs = [_seq(temperature=0, logit_bias={2: 5.0}), _seq(temperature=0.5, top_k=2, seed=1)]
    probs = sampling_probs(logits, seqs, eos_ids=[], ops=TORCH_OPS)
    assert torch.equal(probs[0], torch.tensor([0.0, 0.0, 1.0]))
    sharpened = torch.tensor([6.0, 4.0]).softmax(-1)
    torch.testing.assert_close(probs[1], torch.tensor([sharpened[0], 0.0, sharpened[1]]), rtol=1e-6, atol=0)


def test_choose_tokens_draws_sampled_rows_from_their_own_generator():
    logits = torch.tensor([[3.0, 1.0, 2.0, 0.0]] * 3)
    seqs = [_seq(temperature=0, logit_bias={1: 5.0}), _seq(top_k=1, logit_bias={3: 9.0}),
            _seq(temperature=1.0, top_k=2)]
    seqs[2].generator = torch.Generator().manual_seed(4)
    top2 = torch.tensor([3.0, 2.0]).softmax(-1)
    expected_draw = torch.multinomial(torch.tensor([top2[0], 0.0, top2[1], 0.0]), 1,
                                      generator=torch.Generator().manual_seed(4)).item()
    assert expected_draw == 2  # this seed draws the second choice, not the argmax a greedy row would take
    assert choose_tokens(logits, seqs, eos_ids=[], ops=TORCH_OPS) == [1, 3, expected_draw]


def test_choice_seeds_are_pinned():
    # seeded outputs must not change between versions: these are the values of the published derivation
    assert choice_seed(7, 1) == 12361642489464619842 and choice_seed(-3, 5) == 16277095214067745985
    assert choice_seed(7, 0) == 7


def test_needs_slow_path():
    assert not needs_slow_path(_seq(temperature=0))
    assert not needs_slow_path(_seq(temperature=0, logit_bias={}))
    assert needs_slow_path(_seq(temperature=0, logit_bias={1: 1.0}))
    assert needs_slow_path(_seq(temperature=0, presence_penalty=0.1))
    assert needs_slow_path(_seq(temperature=0.5))


def test_record_logprobs_by_hand():
    # unnormalized: each row shifted, so the log-normalizer is not 0
    rows = _log([[0.1, 0.6, 0.3], [0.5, 0.25, 0.25], [0.2, 0.2, 0.6]]) + torch.tensor([[2.0], [-1.0], [5.0]])
    seqs = [_seq(logprobs=2), _seq(), _seq(logprobs=0)]
    record_logprobs(rows, seqs, [2, 0, 2])
    first, = seqs[0].output_logprobs
    assert first.token_id == 2 and first.logprob == pytest.approx(torch.tensor(0.3).log().item(), abs=1e-6)
    assert [t for t, _ in first.top] == [1, 2]
    assert [v for _, v in first.top] == pytest.approx([torch.tensor(p).log().item() for p in (0.6, 0.3)], abs=1e-6)
    assert seqs[1].output_logprobs == []
    last, = seqs[2].output_logprobs
    assert last.token_id == 2 and last.logprob == pytest.approx(torch.tensor(0.6).log().item(), abs=1e-6)
    assert last.top == []
    record_logprobs(rows, [_seq(), _seq(), _seq()], [0, 0, 0])  # nobody asked: nothing to do


class _AllowOnly:
    """A structured-output processor stand-in: allows one token, records what it was given."""

    def __init__(self, token):
        self.token, self.calls = token, []

    def __call__(self, token_ids, scores):
        self.calls.append(token_ids.tolist())
        masked = torch.full_like(scores, float("-inf"))
        masked[:, self.token] = scores[:, self.token]
        return masked


def test_constrain_gives_the_processor_prompt_and_outputs():
    processor = _AllowOnly(2)
    seq = _seq(prompt=[5, 6], outputs=[7])
    masked = constrain(torch.tensor([1.0, 2.0, 0.5]), seq, processor)
    assert processor.calls == [[[5, 6, 7]]] and masked.tolist() == [float("-inf"), float("-inf"), 0.5]


def test_sample_mixes_fast_constrained_and_slow_rows():
    rows = _log([[0.6, 0.3, 0.1]] * 4) + 3.0
    seqs = [_seq(temperature=0, logprobs=1), _seq(temperature=0), _seq(temperature=0, logit_bias={1: 2.0}),
            _seq(temperature=0, logit_bias={2: 9.0}, logprobs=0)]
    processor = _AllowOnly(1)
    tokens = sample(rows, seqs, eos_ids=[], ops=TORCH_OPS, constraints=[None, processor, None, _AllowOnly(0)])
    assert tokens == [0, 1, 1, 0]  # greedy, grammar, bias, grammar before bias
    # logprobs come from the model's own distribution, before any mask or bias
    assert seqs[3].output_logprobs[0].logprob == pytest.approx(torch.tensor(0.6).log().item(), abs=1e-6)
    assert seqs[0].output_logprobs[0].top[0][0] == 0
    assert sample(rows[:2], seqs[:2], eos_ids=[], ops=TORCH_OPS) == [0, 0]  # the fast path
    assert len(seqs[0].output_logprobs) == 2
    assert sample(rows[:1], [_seq(temperature=0, logit_bias={2: 9.0})], eos_ids=[], ops=TORCH_OPS) == [2]


def test_prompt_logprobs_by_hand():
    seq = _seq(prompt=[0, 2, 1, 1])
    # unnormalized rows (shifted), so only a softmax over the vocabulary gives these probabilities
    logits = _log([[0.5, 0.2, 0.3], [0.1, 0.6, 0.3], [0.7, 0.2, 0.1], [0.3, 0.3, 0.4]]) + torch.tensor(
        [[1.0], [-2.0], [0.5], [0.0]])
    got = prompt_logprobs(logits, seq, start=1, top_n=1)  # logits[j] predicts prompt token 1 + j + 1
    assert [t.token_id for t in got] == [1, 1]
    assert [t.logprob for t in got] == pytest.approx([torch.tensor(p).log().item() for p in (0.2, 0.6)], abs=1e-6)
    chunk = prompt_logprobs(logits[:2], seq, start=0, top_n=0)  # a prefill chunk: two rows, two targets
    assert [(t.token_id, t.top) for t in chunk] == [(2, []), (1, [])]
    assert [t.logprob for t in chunk] == pytest.approx([torch.tensor(p).log().item() for p in (0.3, 0.6)], abs=1e-6)
    assert [t.top for t in got][1][0][0] == 1 and len(got[0].top) == 1 and got[0].top[0][0] == 0
    assert got[0].top[0][1] == pytest.approx(torch.tensor(0.5).log().item(), abs=1e-6)
    assert [t.top for t in prompt_logprobs(logits, seq, start=0, top_n=0)] == [[], [], []]
    assert prompt_logprobs(logits, seq, start=3, top_n=2) == []


def test_sample_constrains_rows_without_a_slow_path_and_passes_eos_on():
    rows = _log([[0.6, 0.3, 0.1]] * 2)
    assert sample(rows, [_seq(temperature=0), _seq(temperature=0)], eos_ids=[], ops=TORCH_OPS,
                  constraints=[None, _AllowOnly(2)]) == [0, 2]
    assert sample(rows[:1], [_seq(temperature=0, min_tokens=1)], eos_ids=[0], ops=TORCH_OPS) == [1]


def test_min_tokens_restores_only_the_rows_with_nothing_left():
    inf = float("-inf")
    logits = torch.tensor([[inf, inf, 1.0, inf], [0.5, 0.0, 1.0, 0.0]])  # row 0: a finished grammar allows only eos
    blocked = block_early_stop(logits, [_seq(min_tokens=3), _seq(min_tokens=3)], eos_ids=[2])
    assert torch.equal(blocked, torch.tensor([[inf, inf, 1.0, inf], [0.5, 0.0, inf, 0.0]]))


def test_penalties_when_every_row_has_one_and_histories_differ():
    logits = torch.tensor([[2.0, 2.0, 2.0, 2.0], [2.0, 2.0, 2.0, 2.0]])
    seqs = [_seq(prompt=[3], outputs=[0, 0, 2], repetition_penalty=2.0), _seq(prompt=[3], repetition_penalty=2.0)]
    assert torch.equal(apply_penalties(logits, seqs), torch.tensor([[1.0, 2.0, 1.0, 1.0], [2.0, 2.0, 2.0, 1.0]]))


def test_presence_alone_counts_and_ids_past_the_vocabulary_are_ignored():
    logits = torch.zeros(2, 4, dtype=torch.float64)
    seqs = [_seq(outputs=[1, 1, 4], presence_penalty=0.1), _seq(outputs=[2], frequency_penalty=0.1)]
    penalized = apply_penalties(logits, seqs)
    assert penalized.dtype == torch.float64
    assert penalized.tolist() == [[0.0, -0.1, 0.0, 0.0], [0.0, 0.0, -0.1, 0.0]]  # the penalties in float64
