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
