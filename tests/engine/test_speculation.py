"""Speculative decoding in the engine: n-gram drafts verified in one step must leave every output exactly as the
non-speculative engine produces it (greedy, seeded sampling, stops), and the paged cache as it would hold it."""

from __future__ import annotations

import pytest
import torch

from tokenmill.engine import LLM, EngineConfig, LLMEngine, SamplingParams
from tokenmill.engine.block_manager import BlockManager, block_hash
from tokenmill.engine.sampler import NO_TOKEN
from tokenmill.engine.scheduler import ScheduledChunk, Scheduler
from tokenmill.engine.sequence import Sequence, SequenceStatus
from tokenmill.engine.spec_params import SpeculativeConfig
from tokenmill.engine.speculation import Speculator, propose_drafts

SPEC = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3, "prompt_lookup_min": 1}
TEXTS = [
    "The quick brown fox jumps over the lazy dog. It was a sunny day in the park and children were playing with a "
    "red ball near the old oak tree.",
    "Water boils at one hundred degrees Celsius at sea level, but at higher altitudes it boils at a lower "
    "temperature because the air pressure is lower.",
    "The library opens at nine in the morning and closes at six in the evening, except on Sundays when it is "
    "closed all day.",
    "Paris is the capital of France. It is known for the Eiffel Tower, the Louvre museum and its many cafes "
    "along the river Seine.",
]


@pytest.fixture(scope="module")
def smol_llm(smollm2_gguf):
    return LLM(str(smollm2_gguf), num_blocks=128, block_size=16)


def _prompts(llm, count=len(TEXTS)):
    tokenizer = llm.get_tokenizer()
    return [tokenizer.encode(f"Repeat this paragraph exactly: {TEXTS[i % len(TEXTS)]}\nRepeated: ")
            for i in range(count)]


def _params(max_tokens, speculative=None, **kw):
    kw.setdefault("temperature", 0)
    return SamplingParams(max_tokens=max_tokens, speculative=speculative, **kw)


def _spec_counts(llm):
    stats = llm.engine.stats()
    return stats["spec_draft_tokens"], stats["spec_accepted_tokens"]


def _ids(outputs):
    return [output.outputs[0].token_ids for output in outputs]


def _tiny_prompts(count, seed=7):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 96, (n,), generator=generator).tolist() for n in range(5, 5 + 3 * count, 3)]


def _tiny_greedy(max_tokens, speculative=None):
    return SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True, speculative=speculative)


def test_one_greedy_request_is_unchanged_and_drafts_are_accepted(smol_llm):
    [prompt] = _prompts(smol_llm, 1)
    plain = smol_llm.generate(prompt, _params(24))
    drafted_before, accepted_before = _spec_counts(smol_llm)
    spec = smol_llm.generate(prompt, _params(24, SPEC))
    drafted, accepted = _spec_counts(smol_llm)
    assert _ids(spec) == _ids(plain)
    assert spec[0].outputs[0].text == plain[0].outputs[0].text
    assert drafted > drafted_before and accepted > accepted_before, "the copied paragraph must accept drafts"
    assert smol_llm.engine.stats()["spec_tokens_per_step"] > 1
    assert smol_llm.engine.blocks.num_used_blocks == 0


def test_eight_concurrent_requests_mixed_with_plain_ones_match_each_alone(tiny_model, hf_greedy):
    prompts = _tiny_prompts(8)
    llm = LLM(tiny_model, num_blocks=128, block_size=4, max_num_batched_tokens=48,
              speculative_step_tokens=64)  # every sequence drafts: the budget is tested on its own
    mixed = llm.generate(prompts, [_tiny_greedy(16, SPEC if i % 2 == 0 else None) for i in range(8)])
    assert _ids(mixed) == [hf_greedy(prompt, 16) for prompt in prompts]
    drafted, accepted = _spec_counts(llm)
    assert 0 < accepted < drafted  # both paths taken: accepted runs and rejected drafts


def test_the_engine_default_applies_and_a_request_can_turn_it_off(tiny_model, hf_greedy):
    prompts = _tiny_prompts(2)
    default = LLM(tiny_model, num_blocks=64, block_size=4, speculative=SpeculativeConfig(3))
    outputs = default.generate(prompts[:1], _tiny_greedy(16))
    assert _ids(outputs) == [hf_greedy(prompts[0], 16)]
    drafted = default.engine.stats()["spec_draft_tokens"]
    assert drafted > 0
    outputs = default.generate(prompts[1:], _tiny_greedy(16, {"num_speculative_tokens": 0}))
    assert _ids(outputs) == [hf_greedy(prompts[1], 16)]
    assert default.engine.stats()["spec_draft_tokens"] == drafted


def test_stops_inside_an_accepted_run_are_cut_where_plain_decoding_stops(smol_llm):
    [prompt] = _prompts(smol_llm, 1)
    reference = smol_llm.generate(prompt, _params(24))[0].outputs[0]
    stop_token = reference.token_ids[10]
    stop_text = smol_llm.get_tokenizer().decode(reference.token_ids[14:16]).strip()
    cases = [
        {"max_tokens": 9},  # the limit falls where drafts would run on
        {"stop_token_ids": [stop_token]},
        {"stop": [stop_text], "include_stop_str_in_output": True},
    ]
    for case in cases:
        kw = {"max_tokens": 24, **case}
        plain = smol_llm.generate(prompt, _params(**kw))[0].outputs[0]
        drafted_before, accepted_before = _spec_counts(smol_llm)
        spec = smol_llm.generate(prompt, _params(speculative=SPEC, **kw))[0].outputs[0]
        assert (spec.token_ids, spec.text, spec.finish_reason, spec.stop_reason) == \
               (plain.token_ids, plain.text, plain.finish_reason, plain.stop_reason), case
        assert len(plain.token_ids) < 24 and _spec_counts(smol_llm)[1] > accepted_before, case


def test_eos_inside_a_draft_run_ends_the_sequence_there(smol_llm):
    [prompt] = _prompts(smol_llm, 1)
    reference = smol_llm.generate(prompt, _params(24))[0].outputs[0]
    engine = smol_llm.engine
    saved = engine.eos_token_ids
    engine.eos_token_ids = [reference.token_ids[12]]  # a token the copied text reaches through accepted drafts
    try:
        spec = smol_llm.generate(prompt, _params(24, SPEC))[0].outputs[0]
    finally:
        engine.eos_token_ids = saved
    first = reference.token_ids.index(reference.token_ids[12])
    assert spec.token_ids == reference.token_ids[:first + 1] and spec.finish_reason == "stop"


def test_seeded_sampling_draws_the_same_tokens_as_without_speculation(tiny_model):
    """Each token is drawn from the model's distribution by the request's own generator, one draw per token, so
    a seed gives the same tokens (and logprobs) with and without drafts."""
    prompts = _tiny_prompts(2, seed=5)
    settings = [dict(temperature=0.2, top_k=20, seed=5, n=2),
                dict(temperature=0.3, top_p=0.9, repetition_penalty=1.05, seed=3, logprobs=2)]
    llm = LLM(tiny_model, num_blocks=64, block_size=4)
    plain = llm.generate(prompts, [SamplingParams(max_tokens=24, ignore_eos=True, **s) for s in settings])
    spec = llm.generate(prompts, [SamplingParams(max_tokens=24, ignore_eos=True, speculative=SPEC, **s)
                                  for s in settings])
    assert _spec_counts(llm)[1] > 0, "some drafts must have been accepted"
    for p, s in zip(plain, spec):
        assert [o.token_ids for o in s.outputs] == [o.token_ids for o in p.outputs]
        for po, so in zip(p.outputs, s.outputs):
            assert po.seed == so.seed
            if po.logprobs is not None:
                assert [lp.token_id for lp in so.logprobs] == [lp.token_id for lp in po.logprobs]
                assert all(len(lp.top) == 2 for lp in so.logprobs)


def test_rejected_drafts_roll_the_cache_back_to_the_plain_engines(tiny_model):
    """After every step each sequence holds exactly the blocks its computed tokens fill, and at the end the
    prefix cache holds the same full blocks as the non-speculative engine's (a pool nothing is evicted from)."""
    prompts = _tiny_prompts(4, seed=3)
    registered = []
    for speculative in (None, SPEC):
        engine = LLMEngine(tiny_model, config=EngineConfig(num_blocks=256, block_size=4))
        for i, prompt in enumerate(prompts):
            engine.add_request(str(i), prompt, _tiny_greedy(20, speculative))
        while engine.has_unfinished_requests():
            engine.step()
            for seq in engine.scheduler.running:
                assert seq.draft_token_ids == []
                assert seq.num_computed_tokens == seq.num_tokens - 1
                assert len(seq.block_table) == engine.blocks.blocks_needed(seq.num_computed_tokens)
            held = sum(len(seq.block_table) for seq in engine.scheduler.running)
            assert engine.blocks.num_used_blocks <= held  # nothing leaked (shared prefix blocks count once)
        assert engine.blocks.num_used_blocks == 0
        registered.append(set(engine.blocks._block_of))
    stats = engine.stats()
    assert stats["spec_accepted_tokens"] < stats["spec_draft_tokens"], "some drafts must have been rejected"
    assert registered[1] == registered[0]


def test_drafts_never_preempt_and_stay_exact_on_a_small_pool(tiny_model, hf_greedy):
    generator = torch.Generator().manual_seed(7)
    prompts = [torch.randint(0, 96, (n,), generator=generator).tolist() for n in (5, 9, 12, 7)]
    llm = LLM(tiny_model, num_blocks=14, block_size=4, max_num_batched_tokens=32, enable_prefix_caching=False)
    outputs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True,
                                                   speculative={"num_speculative_tokens": 6, "prompt_lookup_max": 2}))
    for prompt, output in zip(prompts, outputs):
        assert output.outputs[0].token_ids == hf_greedy(prompt, 12)
    assert llm.engine.stats()["spec_draft_tokens"] > 0
    assert llm.engine.blocks.num_used_blocks == 0


def test_drafts_come_from_the_earlier_match_and_respect_the_limits():
    params = SamplingParams(max_tokens=10, speculative={"num_speculative_tokens": 3, "prompt_lookup_max": 2,
                                                        "prompt_lookup_min": 2})
    seq = Sequence("r", 0, [1, 2, 3, 4, 5, 6, 1, 2], params)
    assert propose_drafts(seq, params.speculative, max_model_len=100, budget=16) == [3, 4, 5]
    seq.prompt_token_ids = [1, 2, 3, 4, 1, 2]
    seq.output_token_ids = [7] * 7 + [1, 2]  # one token left under max_tokens: the one chosen after the drafts
    assert propose_drafts(seq, params.speculative, max_model_len=100, budget=16) == []
    seq.output_token_ids = [7] * 6 + [1, 2]  # two left: one draft
    assert propose_drafts(seq, params.speculative, max_model_len=100, budget=16) == [3]
    seq.output_token_ids = [1, 2]
    assert propose_drafts(seq, params.speculative, max_model_len=100, budget=16) == [3, 4, 1]
    assert propose_drafts(seq, params.speculative, max_model_len=len(seq.all_token_ids) + 2, budget=16) == [3]
    lone = Sequence("r", 0, [5, 1, 6, 2], params)  # only unigram matches: below prompt_lookup_min
    lone.output_token_ids = [1]
    assert propose_drafts(lone, params.speculative, max_model_len=100, budget=16) == []
    assert propose_drafts(seq, params.speculative, max_model_len=100, budget=2) == [3, 4]  # the step's budget


def test_a_step_drafts_within_its_token_budget():
    """Rows run as wide as the widest: each decoding sequence gets at most step_tokens // sequences - 1 drafts."""
    params = SamplingParams(max_tokens=50, speculative={"num_speculative_tokens": 4, "prompt_lookup_max": 2})
    decoding = []
    for index in range(3):
        seq = Sequence(f"r{index}", 0, [1, 2, 3, 4, 5, 6, 7, 1, 2], params)
        seq.num_computed_tokens = seq.num_tokens - 1  # decoding: one new token to run
        decoding.append(seq)

    def drafts_with(step_tokens: int, running: list[Sequence]) -> list[int]:
        for seq in decoding:
            seq.draft_token_ids = []
        Speculator(step_tokens=step_tokens).propose(running, max_model_len=100)
        return [len(seq.draft_token_ids) for seq in decoding]

    assert drafts_with(12, decoding) == [3, 3, 3]  # 3 rows x (1 + 3) = 12 positions
    assert drafts_with(100, decoding) == [4, 4, 4]  # the request's own k caps it
    assert drafts_with(5, decoding) == [0, 0, 0]  # 3 x 2 would exceed 5: no drafts
    prefilling = Sequence("p", 0, [9] * 5, params)  # a prompt still being read: the step is compute-bound
    assert drafts_with(100, [*decoding, prefilling]) == [0, 0, 0]
    prefilling.num_computed_tokens = 3  # its last two prompt tokens still to read: as compute-bound
    assert drafts_with(100, [*decoding, prefilling]) == [0, 0, 0]

# ---- verification on fixed logits (no model): which tokens are appended, what is computed, what is freed ----

VOCAB = 16


def _verifying(drafts: list[int], **params):
    """A decoding sequence of 6 prompt tokens with `drafts` scheduled, its blocks (of 4) for every position."""
    blocks = BlockManager(8, 4)
    scheduler = Scheduler(blocks)
    seq = Sequence("r", 0, [1, 2, 3, 4, 5, 6], SamplingParams(max_tokens=10, **{"temperature": 0, **params}))
    seq.status = SequenceStatus.RUNNING
    seq.num_computed_tokens = 5
    seq.draft_token_ids = list(drafts)
    seq.block_table = [blocks.allocate() for _ in range(blocks.blocks_needed(6 + len(drafts)))]
    return seq, scheduler, ScheduledChunk(seq, 5, 1 + len(drafts))


def _logits(picks: list[int]) -> torch.Tensor:
    """One row per verified position whose argmax is the given token."""
    rows = torch.zeros(len(picks), VOCAB)
    rows[torch.arange(len(picks)), torch.tensor(picks)] = 1.0
    return rows


def _verify(speculator, chunk, scheduler, picks, finish_on=None, constrained=False):
    """Verify with an argmax chooser that records each call's (rows, sequences) and an append that finishes the
    sequence on `finish_on`; returns (result, appended tokens, calls)."""
    seq, calls, appended = chunk.seq, [], []

    def choose(rows, seqs):
        calls.append((rows.shape[0], len(seqs)))
        return [NO_TOKEN if row.isnan().any() else int(row.argmax()) for row in rows]

    def append(token):
        appended.append(token)
        seq.output_token_ids.append(token)
        if token == finish_on:
            seq.status = SequenceStatus.FINISHED

    result = speculator.verify(chunk, _logits(picks) if not isinstance(picks, torch.Tensor) else picks, choose,
                               append, scheduler, constrained)
    return result, appended, calls


def test_verify_keeps_every_agreeing_draft_and_the_token_after_them():
    speculator = Speculator()
    seq, scheduler, chunk = _verifying([7, 8, 9])
    assert _verify(speculator, chunk, scheduler, [7, 8, 9, 10]) == (True, [7, 8, 9, 10], [(4, 4)])
    assert seq.draft_token_ids == [] and seq.num_computed_tokens == 9  # the last pick's K/V comes next step
    assert len(seq.block_table) == 3 and scheduler.blocks.num_used_blocks == 3
    assert speculator.stats() == {"spec_draft_tokens": 3, "spec_accepted_tokens": 3, "spec_verify_steps": 1,
                                  "spec_acceptance_rate": 1.0, "spec_tokens_per_step": 4.0}


def test_verify_stops_at_the_first_disagreement_and_frees_the_blocks_past_it():
    speculator = Speculator()
    seq, scheduler, chunk = _verifying([7, 8, 9, 11, 12, 13])  # 12 positions: 3 blocks
    assert _verify(speculator, chunk, scheduler, [7, 3, 9, 11, 12, 13, 1]) == (True, [7, 3], [(7, 7)])
    assert seq.output_token_ids == [7, 3] and seq.num_computed_tokens == 7
    assert len(seq.block_table) == 2 and scheduler.blocks.num_used_blocks == 2
    assert seq.block_hashes == [block_hash(None, (1, 2, 3, 4))]  # the one full block, published
    seq2, scheduler2, chunk2 = _verifying([7, 8])
    assert _verify(speculator, chunk2, scheduler2, [5, 8, 9])[1] == [5]  # the first draft already differs
    assert seq2.num_computed_tokens == 6 and len(seq2.block_table) == 2
    assert speculator.stats() == {"spec_draft_tokens": 8, "spec_accepted_tokens": 1, "spec_verify_steps": 2,
                                  "spec_acceptance_rate": 1 / 8, "spec_tokens_per_step": 1.5}


def test_verify_ends_where_the_sequence_finishes_and_keeps_its_blocks():
    speculator = Speculator()
    seq, scheduler, chunk = _verifying([7, 8, 9])
    assert _verify(speculator, chunk, scheduler, [7, 8, 9, 10], finish_on=8)[:2] == (True, [7, 8])
    assert seq.num_computed_tokens == 7
    assert len(seq.block_table) == 3  # a finished sequence's blocks are the engine's to free, all at once
    assert speculator.stats()["spec_accepted_tokens"] == 1  # the finishing token is not counted as accepted


def test_verify_reports_a_position_with_no_distribution():
    speculator = Speculator()
    seq, scheduler, chunk = _verifying([7, 8])
    logits = _logits([7, 8, 9])
    logits[1] = float("nan")
    assert _verify(speculator, chunk, scheduler, logits) == (False, [7], [(3, 3)])
    assert seq.num_computed_tokens == 7 and len(seq.block_table) == 2  # nothing freed: the request fails


@pytest.mark.parametrize("params, constrained", [
    ({"temperature": 0.5, "seed": 1}, False),  # sampled
    ({"repetition_penalty": 1.2}, False),  # needs the history up to each position
    ({"logit_bias": {3: 1.0}}, False),
    ({"logprobs": 0}, False),
    ({}, True),  # a grammar advances with each token
])
def test_verify_picks_one_position_at_a_time_when_a_pick_depends_on_the_previous(params, constrained):
    seq, scheduler, chunk = _verifying([7, 8], **params)
    picks = [7, 8, 9]
    assert _verify(Speculator(), chunk, scheduler, picks, constrained=constrained) == \
           (True, [7, 8, 9], [(1, 1), (1, 1), (1, 1)])


def test_the_speculating_config_of_a_sequence():
    seq = Sequence("r", 0, [1], SamplingParams())
    own = Sequence("r", 0, [1], SamplingParams(speculative=SpeculativeConfig(2)))
    off = Sequence("r", 0, [1], SamplingParams(speculative=SpeculativeConfig(0)))
    default = Speculator(SpeculativeConfig(3))
    assert [default.config_of(s) for s in (seq, own, off)] == [SpeculativeConfig(3), SpeculativeConfig(2), None]
    assert Speculator(SpeculativeConfig(0)).default is None and Speculator().config_of(seq) is None
    assert Speculator().step_tokens == 8
    assert Speculator().stats() == {"spec_draft_tokens": 0, "spec_accepted_tokens": 0, "spec_verify_steps": 0,
                                    "spec_acceptance_rate": 0.0, "spec_tokens_per_step": 1.0}


def test_finished_sequences_take_no_share_of_the_step_budget():
    params = SamplingParams(max_tokens=50, speculative={"num_speculative_tokens": 4, "prompt_lookup_max": 2})
    live = Sequence("r", 0, [1, 2, 3, 4, 5, 6, 7, 1, 2], params)
    live.num_computed_tokens = live.num_tokens - 1
    done = Sequence("d", 0, [9] * 5, params)  # unread tokens, but finished: neither blocks nor shares the budget
    done.status = SequenceStatus.FINISHED
    Speculator(step_tokens=4).propose([live, done], max_model_len=100)
    assert live.draft_token_ids == [3, 4, 5] and done.draft_token_ids == []
    Speculator(step_tokens=4).propose([done], max_model_len=100)  # nothing live: nothing to do
    assert done.draft_token_ids == []
