"""The engine on a tiny random Llama: continuous batching, chunked prefill, preemption and prefix caching
must leave every request's greedy output identical to transformers generating it alone."""

import pytest
import torch

from tokenmill.engine import LLM, EngineConfig, LLMEngine, SamplingParams

from numerics import assert_matches_oracle, score_tolerance


def _prompts(count, seed, low=3, high=40, vocab=96):
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(low, high, (count,), generator=generator).tolist()
    return [torch.randint(0, vocab, (n,), generator=generator).tolist() for n in lengths]


def _greedy(max_tokens, **kw):
    return SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True, **kw)


def _drain(engine, finished):
    for output in engine.step():
        if output.finished:
            finished[output.request_id] = output


def test_requests_joining_and_leaving_match_generate_alone(tiny_model, hf_greedy):
    engine = LLMEngine(tiny_model, config=EngineConfig(num_blocks=64, block_size=4, max_num_batched_tokens=24))
    prompts = _prompts(9, seed=1)
    lengths = [3, 12, 7, 1, 15, 5, 9, 2, 11]
    finished = {}
    # three waves: requests arrive while others are mid-prefill or mid-decode
    for step_count, wave in ((2, range(0, 3)), (3, range(3, 6)), (0, range(6, 9))):
        for i in wave:
            engine.add_request(str(i), prompts[i], _greedy(lengths[i]))
        for _ in range(step_count):
            _drain(engine, finished)
    while engine.has_unfinished_requests():
        _drain(engine, finished)
    for i, prompt in enumerate(prompts):
        got = finished[str(i)].outputs[0].token_ids
        assert got == hf_greedy(prompt, lengths[i]), f"request {i} diverged under batching"
    assert engine.blocks.num_used_blocks == 0  # every block came back


def test_preemption_by_recompute_keeps_outputs_exact(tiny_model, hf_greedy):
    llm = LLM(tiny_model, num_blocks=12, block_size=4, max_num_batched_tokens=32, max_num_seqs=8,
              enable_prefix_caching=False)
    prompts = _prompts(8, seed=2, low=4, high=14)
    outputs = llm.generate(prompts, _greedy(12))
    assert llm.engine.scheduler.num_preemptions > 0, "the pool was meant to be too small for every request"
    for prompt, output in zip(prompts, outputs):
        assert output.outputs[0].token_ids == hf_greedy(prompt, 12)
        assert output.outputs[0].finish_reason == "length"


def test_prefix_cache_reuses_shared_prompts_exactly(tiny_model, hf_greedy):
    llm = LLM(tiny_model, num_blocks=64, block_size=4)
    system = _prompts(1, seed=3, low=17, high=18)[0]
    prompts = [system + tail for tail in _prompts(6, seed=4, low=2, high=6)]
    first = llm.generate(prompts[:1], _greedy(6))
    rest = llm.generate(prompts[1:], _greedy(6))
    assert all(o.num_cached_tokens == 16 for o in rest), [o.num_cached_tokens for o in rest]
    assert llm.engine.blocks.prefix_hit_rate > 0.5
    for prompt, output in zip(prompts, first + rest):
        assert output.outputs[0].token_ids == hf_greedy(prompt, 6)


def test_paged_step_logits_match_transformers(tiny_model, hf_tiny):
    """One step mixing a decode row, a prefill chunk and a full prefill: logits vs transformers' forward."""
    engine = LLMEngine(tiny_model, config=EngineConfig(num_blocks=32, block_size=4, max_num_batched_tokens=64))
    prompts = _prompts(3, seed=5, low=5, high=20)
    engine.add_request("a", prompts[0], _greedy(5))
    engine.step()  # "a" is now decoding
    engine.add_request("b", prompts[1], _greedy(5))
    engine.add_request("c", prompts[2], _greedy(5))
    plan = engine.scheduler.schedule()
    logits, _ = engine.runner.run(plan.chunks)
    for chunk, row in zip(plan.chunks, logits):
        tokens = chunk.seq.all_token_ids[:chunk.start + chunk.count]
        assert_matches_oracle(row, hf_tiny, torch.tensor([tokens]), (0, -1), "paged step")


def test_logprobs_match_transformers_scores(tiny_model, hf_tiny):
    llm = LLM(tiny_model, num_blocks=32, block_size=4)
    prompt = _prompts(1, seed=6)[0]
    output = llm.generate([prompt], _greedy(4, logprobs=3))[0].outputs[0]
    with torch.no_grad():
        ref = hf_tiny.generate(torch.tensor([prompt]), max_new_tokens=4, do_sample=False, output_logits=True,
                               return_dict_in_generate=True)
    # transformers' float32 and ours: tests/numerics.py's bound for log-softmaxed logits of two float32 runs
    tolerance = score_tolerance(hf_tiny.config, len(prompt) + 4, torch.stack(ref.logits))
    for entry, logits in zip(output.logprobs, ref.logits):
        log_probs = logits[0].log_softmax(-1)
        assert entry.logprob == pytest.approx(float(log_probs[entry.token_id]), abs=tolerance)
        top_values, top_ids = log_probs.topk(3)
        assert [t for t, _ in entry.top] == top_ids.tolist()
        assert [v for _, v in entry.top] == pytest.approx(top_values.tolist(), abs=tolerance)


def test_repetition_penalty_matches_transformers(tiny_model, hf_greedy):
    llm = LLM(tiny_model, num_blocks=32, block_size=4)
    prompt = _prompts(1, seed=7)[0]
    output = llm.generate([prompt], _greedy(10, repetition_penalty=1.5))[0]
    assert output.outputs[0].token_ids == hf_greedy(prompt, 10, repetition_penalty=1.5)


def test_seeded_sampling_is_reproducible_and_n_choices_differ(tiny_model):
    llm = LLM(tiny_model, num_blocks=64, block_size=4)
    prompt = _prompts(1, seed=8)[0]
    params = SamplingParams(temperature=1.5, top_p=0.95, top_k=40, max_tokens=12, seed=1234, n=3, ignore_eos=True)
    first = llm.generate([prompt], params)[0]
    again = llm.generate([prompt, _prompts(1, seed=9)[0]], [params, params])[0]  # different batch company
    assert [o.token_ids for o in first.outputs] == [o.token_ids for o in again.outputs]
    assert len({tuple(o.token_ids) for o in first.outputs}) == 3
    top1 = llm.generate([prompt], SamplingParams(temperature=1.0, top_k=1, max_tokens=6, seed=5, ignore_eos=True))
    assert top1[0].outputs[0].token_ids == llm.generate([prompt], _greedy(6))[0].outputs[0].token_ids


def test_stop_token_and_min_tokens(tiny_model, hf_greedy):
    llm = LLM(tiny_model, num_blocks=32, block_size=4)
    prompt = _prompts(1, seed=10)[0]
    reference = hf_greedy(prompt, 8)
    stop_at = reference[3]
    first_index = reference.index(stop_at)
    output = llm.generate([prompt], _greedy(8, stop_token_ids=[stop_at]))[0].outputs[0]
    assert output.token_ids == reference[:first_index + 1]
    assert (output.finish_reason, output.stop_reason) == ("stop", stop_at)


def test_abort_frees_blocks(tiny_model):
    engine = LLMEngine(tiny_model, config=EngineConfig(num_blocks=32, block_size=4))
    engine.add_request("x", _prompts(1, seed=11)[0], _greedy(50))
    engine.step()
    assert engine.blocks.num_used_blocks > 0
    engine.abort_request("x")
    (report,) = engine.step()
    assert report.finished and report.outputs[0].finish_reason == "abort"
    assert engine.blocks.num_used_blocks == 0 and not engine.has_unfinished_requests()


@pytest.mark.parametrize("prompt, params, message", [
    ([], SamplingParams(max_tokens=2), "prompt is empty"),
    ([1] * 200, SamplingParams(max_tokens=2), "prompt has 200 tokens"),
    ([1, 2], SamplingParams(max_tokens=500), "exceeds the limit of 128 tokens"),
    ([1, 500], SamplingParams(max_tokens=2), "out of range"),
])
def test_bad_requests_are_clear_errors(tiny_model, prompt, params, message):
    engine = LLMEngine(tiny_model, config=EngineConfig(num_blocks=64, block_size=4))
    with pytest.raises(ValueError, match=message):
        engine.add_request("bad", prompt, params)
    assert not engine.has_unfinished_requests()


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": -1}, "temperature"), ({"top_p": 0}, "top_p"), ({"max_tokens": 0}, "max_tokens"),
    ({"n": 0}, "n must be"), ({"logprobs": 50}, "logprobs"),
])
def test_bad_sampling_params_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)


def test_llm_loads_a_folder_by_path(tiny_llama_dir, tiny_model, hf_greedy):
    llm = LLM(str(tiny_llama_dir), skip_tokenizer_init=True, dtype="float32", num_blocks=16, block_size=4)
    prompt = _prompts(1, seed=12)[0]
    assert llm.generate([prompt], _greedy(5))[0].outputs[0].token_ids == hf_greedy(prompt, 5)


def test_prompt_logprobs_over_chunked_prefill_match_transformers(tiny_model, hf_tiny):
    llm = LLM(tiny_model, num_blocks=32, block_size=4, max_num_batched_tokens=7)  # the prompt takes 4 steps
    prompt = _prompts(1, seed=13, low=25, high=26)[0]
    output = llm.generate([prompt], _greedy(2, prompt_logprobs=2))[0]
    with torch.no_grad():
        logits = hf_tiny(torch.tensor([prompt])).logits[0]
    log_probs = logits.log_softmax(-1)
    tolerance = score_tolerance(hf_tiny.config, len(prompt), logits)  # tests/numerics.py, two float32 runs
    assert output.prompt_logprobs[0] is None and len(output.prompt_logprobs) == len(prompt)
    for position, entry in enumerate(output.prompt_logprobs[1:], start=1):
        assert entry.token_id == prompt[position]
        assert entry.logprob == pytest.approx(float(log_probs[position - 1, prompt[position]]), abs=tolerance)
        assert [t for t, _ in entry.top] == log_probs[position - 1].topk(2).indices.tolist()


def test_presence_and_frequency_penalties_follow_openai_rule():
    from tokenmill.engine.sampler import apply_penalties
    from tokenmill.engine.sequence import Sequence

    seq = Sequence("p", 0, [0], SamplingParams(presence_penalty=0.5, frequency_penalty=0.25))
    seq.output_token_ids = [2, 2, 3]
    logits = apply_penalties(torch.zeros(1, 5), [seq])[0]
    # token 2: 2 * 0.25 + 0.5; token 3: 1 * 0.25 + 0.5; the prompt token 0 is not penalized
    assert logits.tolist() == [0.0, 0.0, -1.0, -0.75, 0.0]


def test_prefix_cache_under_eviction_pressure_keeps_outputs_exact(tiny_model, hf_greedy):
    # a pool this small evicts cached blocks while other sequences hit (and so revive) them
    llm = LLM(tiny_model, num_blocks=14, block_size=4, max_num_batched_tokens=32, max_num_seqs=4)
    system = _prompts(1, seed=5, low=9, high=10)[0]
    prompts = [system + tail for tail in _prompts(8, seed=6, low=2, high=9)]
    first = llm.generate(prompts[:2], _greedy(10))
    rest = llm.generate(prompts[2:], _greedy(10))
    assert any(o.num_cached_tokens > 0 for o in rest), "the shared prefix was meant to hit the cache"
    for prompt, output in zip(prompts, first + rest):
        assert output.outputs[0].token_ids == hf_greedy(prompt, 10)
    assert llm.engine.blocks.num_used_blocks == 0


def _run_all(engine) -> dict:
    finished = {}
    for _ in range(200):
        if not engine.has_unfinished_requests():
            break
        _drain(engine, finished)
    return finished


def test_a_request_that_fails_to_start_leaves_nothing_behind(tiny_model, hf_greedy, monkeypatch):
    """Issue 18's critical example: choice 1 of seed 2**64 - 1 was seeded 2**64 (seed + index), which
    torch.Generator refuses; the request's choice 0 stayed queued without a request and every later step failed
    (KeyError), holding its slot and blocks. Any failure while a request is set up now leaves no state."""
    from tokenmill.engine import engine as engine_module

    engine = LLMEngine(tiny_model, config=EngineConfig(num_blocks=32, block_size=4))
    monkeypatch.setattr(engine_module, "choice_seed", lambda seed, index: seed + index)  # the old rule
    with pytest.raises(ValueError, match="Overflow"):
        engine.add_request("seeded", [1, 2, 3], SamplingParams(temperature=1, seed=2**64 - 1, n=2, max_tokens=4))
    assert not engine.has_unfinished_requests() and not engine.scheduler.has_unfinished()
    prompt = _prompts(1, seed=12)[0]
    engine.add_request("next", prompt, _greedy(6))
    assert _run_all(engine)["next"].outputs[0].token_ids == hf_greedy(prompt, 6)
    assert engine.blocks.num_used_blocks == 0


def test_the_largest_seed_with_several_choices_runs(tiny_model):
    engine = LLMEngine(tiny_model, config=EngineConfig(num_blocks=32, block_size=4))
    engine.add_request("seeded", [1, 2, 3], SamplingParams(temperature=1, seed=2**64 - 1, n=2, max_tokens=4,
                                                           ignore_eos=True))
    output = _run_all(engine)["seeded"]
    assert [len(o.token_ids) for o in output.outputs] == [4, 4] and output.error is None


def test_a_row_with_non_finite_logits_fails_alone(tiny_model, hf_greedy, monkeypatch):
    """Issue 18: one request's NaN / inf (its parameters or the logits) made the whole step fail ("probability
    tensor contains inf/nan") and every request in flight with it. Now that request ends with an error and
    the others get their exact tokens."""
    engine = LLMEngine(tiny_model, config=EngineConfig(num_blocks=64, block_size=4))
    prompts = _prompts(3, seed=13)
    run = engine.runner.run

    def poisoned(chunks, all_rows):
        last_logits, every_position = run(chunks, all_rows)
        last_logits = last_logits.clone()
        for i, chunk in enumerate(chunks):
            if chunk.seq.request_id.startswith("bad") and chunk.completes_sequence:
                last_logits[i, 5] = float("nan") if chunk.seq.request_id == "bad-nan" else float("inf")
        return last_logits, every_position

    monkeypatch.setattr(engine.runner, "run", poisoned)
    engine.add_request("good-0", prompts[0], _greedy(6))
    engine.add_request("bad-nan", prompts[1], SamplingParams(temperature=0.7, seed=1, max_tokens=6, n=2))
    engine.add_request("bad-inf", prompts[1], _greedy(6, repetition_penalty=1.3))
    engine.add_request("good-1", prompts[2], SamplingParams(temperature=0.9, seed=3, max_tokens=6, ignore_eos=True))
    finished = _run_all(engine)
    for name in ("bad-nan", "bad-inf"):
        assert {o.finish_reason for o in finished[name].outputs} == {"error"}
        assert "no finite next-token distribution" in finished[name].error
    assert finished["good-0"].outputs[0].token_ids == hf_greedy(prompts[0], 6)
    assert finished["good-1"].error is None and len(finished["good-1"].outputs[0].token_ids) == 6
    assert not engine.scheduler.has_unfinished()


def test_a_tiny_temperature_is_greedy(tiny_model, hf_greedy):
    """temperature 1e-300 used to overflow logits / T to inf and NaN; below 1e-5 a temperature is greedy."""
    llm = LLM(tiny_model, num_blocks=32, block_size=4)
    prompt = _prompts(1, seed=14)[0]
    for temperature in (1e-300, 5e-324, 1e-6):
        params = SamplingParams(temperature=temperature, seed=7, max_tokens=6, ignore_eos=True)
        assert not params.sampled
        assert llm.generate([prompt], params)[0].outputs[0].token_ids == hf_greedy(prompt, 6)


def test_an_orphan_sequence_is_finished_and_its_blocks_freed(tiny_model, hf_greedy):
    """Whatever leaves a sequence queued without its request, the next step gives its blocks back."""
    from tokenmill.engine.sequence import Sequence

    engine = LLMEngine(tiny_model, config=EngineConfig(num_blocks=32, block_size=4, enable_prefix_caching=False))
    engine.scheduler.add(Sequence("orphan", 0, [1, 2, 3], _greedy(4)))
    prompt = _prompts(1, seed=15)[0]
    engine.add_request("real", prompt, _greedy(5))
    assert _run_all(engine)["real"].outputs[0].token_ids == hf_greedy(prompt, 5)
    assert not engine.scheduler.has_unfinished() and engine.blocks.num_used_blocks == 0


@pytest.mark.parametrize("kwargs, message", [
    ({"stop": ["x"] * 17}, "at most 16 stop strings"),
    ({"stop": ["y" * 257]}, "at most 256 characters"),
    ({"stop_token_ids": list(range(257))}, "at most 256 stop token ids"),
    ({"logit_bias": {i % 96: 1.0 for i in range(96)} | {1000 + i: 0.0 for i in range(1000)}}, "logit_bias may have"),
])
def test_per_step_costs_are_capped_per_request(tiny_model, kwargs, message):
    engine = LLMEngine(tiny_model, config=EngineConfig(num_blocks=64, block_size=4))
    with pytest.raises(ValueError, match=message) as refused:
        engine.add_request("big", [1, 2, 3], SamplingParams(max_tokens=2, **kwargs))
    assert refused.value.param in ("stop", "stop_token_ids", "logit_bias")
    assert not engine.has_unfinished_requests()


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": float("inf")}, "temperature must be a finite number"),
    ({"temperature": float("nan")}, "temperature must be a finite number"),
    ({"temperature": 1e300}, "temperature must be at most"),
    ({"top_p": float("nan")}, "top_p must be a finite number"),
    ({"repetition_penalty": 1e-300}, "repetition_penalty must be >="),
    ({"repetition_penalty": float("inf")}, "repetition_penalty must be a finite number"),
    ({"presence_penalty": float("nan")}, "presence_penalty"),
    ({"logit_bias": {1: float("nan")}}, "logit_bias values must be finite"),
    ({"seed": 2**64}, "seed must be an integer in"),
    ({"seed": -2**63 - 1}, "seed must be an integer in"),
])
def test_out_of_range_numbers_are_refused_up_front(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)


# ---- the engine's own arithmetic and bookkeeping, checked by value (no oracle needed) ----

def test_the_default_kv_budget_is_a_fifth_of_available_memory_capped(monkeypatch):
    from tokenmill.engine import engine as engine_module

    budgets = {}
    for available in (5 << 30, 20 << 30, None):
        monkeypatch.setattr(engine_module, "available_memory", lambda value=available: value)
        budgets[available] = engine_module.default_kv_memory()
    assert budgets == {5 << 30: (5 << 30) // 5, 20 << 30: 2 << 30, None: (4 << 30) // 5}  # unknown: 4 GiB assumed


def test_pool_blocks_from_a_count_or_a_memory_budget(monkeypatch):
    from types import SimpleNamespace

    from tokenmill.engine import engine as engine_module

    model = SimpleNamespace(dtype=torch.float16, config=SimpleNamespace(
        num_hidden_layers=2, num_key_value_heads=3, head_dim=8))  # K and V: 2 x 2 x 3 x 8 x 2 bytes = 192 a token
    monkeypatch.setattr(engine_module, "available_memory", lambda: 192 * 16 * 50)
    assert engine_module.pool_blocks(model, EngineConfig(num_blocks=7, kv_cache_memory=10 ** 9)) == 7
    assert engine_module.pool_blocks(model, EngineConfig(block_size=16, kv_cache_memory=192 * 16 * 10 + 5)) == 10
    assert engine_module.pool_blocks(model, EngineConfig(block_size=16)) == 10  # a fifth of 50 blocks' worth
    assert engine_module.pool_blocks(model, EngineConfig(block_size=16, kv_cache_memory=1)) == 1  # never 0


def test_eos_ids_from_the_generation_config_model_config_and_tokenizer():
    from types import SimpleNamespace

    def model(generation, config):
        return SimpleNamespace(generation_config=None if generation is None else
                               SimpleNamespace(eos_token_id=generation), config=SimpleNamespace(eos_token_id=config))

    tokenizer = SimpleNamespace(eos_token_id=9)
    configured = model([2, 3], 4)
    assert LLMEngine._eos_ids(configured, tokenizer) == [2, 3, 9]  # the generation config wins over config
    assert configured.generation_config.eos_token_id == [2, 3]  # read, not extended in place
    assert LLMEngine._eos_ids(model((5,), 4), tokenizer) == [5, 9]
    assert LLMEngine._eos_ids(model((5,), 4), None) == [5]
    assert LLMEngine._eos_ids(model(None, 4), tokenizer) == [4, 9]  # no generation config: the model's
    assert LLMEngine._eos_ids(model(None, None), SimpleNamespace(eos_token_id=9)) == [9]
    assert LLMEngine._eos_ids(model(9, None), tokenizer) == [9]  # the tokenizer's already there: once
    assert LLMEngine._eos_ids(SimpleNamespace(config=SimpleNamespace(eos_token_id=None)), None) == []
    ids = LLMEngine._eos_ids(model(torch.tensor(6), None), None)
    assert ids == [6] and type(ids[0]) is int
    # configs without the attribute at all (not None): each source is optional
    bare = SimpleNamespace(generation_config=SimpleNamespace(), config=SimpleNamespace())
    assert LLMEngine._eos_ids(bare, SimpleNamespace()) == []
    assert LLMEngine._eos_ids(SimpleNamespace(generation_config=SimpleNamespace(), config=SimpleNamespace(
        eos_token_id=4)), None) == [4]


def test_the_not_finite_message_names_the_choice_and_its_parameters():
    from tokenmill.engine.engine import _not_finite_message
    from tokenmill.engine.sequence import Sequence

    seq = Sequence("r", 2, [1], SamplingParams(temperature=0.5, repetition_penalty=1.5, presence_penalty=0.25,
                                               frequency_penalty=-0.5))
    assert _not_finite_message(seq) == (
        "choice 2 has no finite next-token distribution (NaN or infinite logits): the model's logits or this "
        "request's own parameters (temperature=0.5, repetition_penalty=1.5, presence_penalty=0.25, "
        "frequency_penalty=-0.5) overflowed; only this request was stopped")


def test_stats_of_an_engine_mid_run(tiny_model):
    engine = LLMEngine(tiny_model, config=EngineConfig(num_blocks=32, block_size=4, max_num_seqs=1))
    assert engine.stats() == {"num_running": 0, "num_waiting": 0, "kv_blocks_used": 0, "kv_blocks_total": 32,
                              "prefix_cache_hit_rate": 0.0, "preemptions": 0, **engine.speculator.stats()}
    engine.add_request("a", list(range(1, 10)), _greedy(4))
    engine.add_request("b", list(range(1, 6)), _greedy(4))
    engine.step()  # one sequence at a time: "a" runs (9 tokens: 3 blocks), "b" waits
    assert engine.stats() == {"num_running": 1, "num_waiting": 1, "kv_blocks_used": 3, "kv_blocks_total": 32,
                              "prefix_cache_hit_rate": 0.0, "preemptions": 0, "spec_draft_tokens": 0,
                              "spec_accepted_tokens": 0, "spec_verify_steps": 0, "spec_acceptance_rate": 0.0,
                              "spec_tokens_per_step": 1.0}


def test_abort_all_ends_every_request_unreported_and_frees_every_block(tiny_model):
    from tokenmill.engine.sequence import Sequence

    engine = LLMEngine(tiny_model, config=EngineConfig(num_blocks=32, block_size=4, max_num_seqs=1))
    engine.add_request("a", list(range(1, 10)), _greedy(8))
    engine.add_request("b", list(range(1, 6)), _greedy(8))
    engine.step()
    orphan = Sequence("orphan", 0, [1, 2, 3], _greedy(4))  # queued with no request behind it
    engine.scheduler.add(orphan)
    assert engine.abort_all() == ["a", "b"]
    assert engine.step() == [] and not engine.has_unfinished_requests()
    assert not engine.scheduler.running and not engine.scheduler.waiting and engine.blocks.num_used_blocks == 0
    assert orphan.finish_reason == "abort"


def test_unfinished_requests_include_queued_ones_and_unreported_aborts(tiny_model):
    engine = LLMEngine(tiny_model, config=EngineConfig(num_blocks=32, block_size=4))
    assert not engine.has_unfinished_requests()
    engine.add_request("a", [1, 2, 3], _greedy(4))
    assert engine.has_unfinished_requests()  # queued, nothing reported yet
    engine.abort_request("a")
    assert engine.has_unfinished_requests()  # no request left, but its final output is still to be reported
    [output] = engine.step()
    assert output.finished and output.outputs[0].finish_reason == "abort"
    assert not engine.has_unfinished_requests()


def test_prompt_ids_are_checked_against_the_vocabulary_and_limits_can_be_narrowed(tiny_model):
    engine = LLMEngine(tiny_model, config=EngineConfig(num_blocks=64, block_size=4))
    assert engine.validate([0, 95], SamplingParams(max_tokens=3)) == 3  # both ends of [0, 96) are ids
    with pytest.raises(ValueError, match=r"\): \[96, 97, 98, 99, 100\]$"):  # the first five named
        engine.validate(list(range(96, 103)), SamplingParams(max_tokens=3))
    for bad in ([96], [-1]):
        with pytest.raises(ValueError, match=rf"^prompt token ids out of range \[0, 96\): \{bad}$"):
            engine.validate(bad, SamplingParams(max_tokens=3))
    narrow = engine.limits.narrowed(max_total_tokens=8)
    with pytest.raises(ValueError, match="exceeds the limit of 8 tokens"):
        engine.validate([1, 2, 3], SamplingParams(max_tokens=6), narrow)
    assert engine.validate([1, 2, 3], SamplingParams(max_tokens=6)) == 6  # the engine's own limits otherwise
