"""What the engine counts and reports as it runs (on the tiny Llama): prompt tokens taken in, tokens generated,
the tokens each step computed (the thread tuner's per-step work), each sequence's first-token time and each
choice's seed."""

from types import SimpleNamespace

from tokenmill.engine import EngineConfig, LLMEngine, SamplingParams
from tokenmill.engine import engine as engine_module

from engine_steps import run_to_completion


def _greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)


def test_token_counts_per_step_and_in_total(tiny_model):
    engine = LLMEngine(tiny_model, config=EngineConfig(num_blocks=32, block_size=4, enable_prefix_caching=False))
    assert (engine.tokens_in, engine.tokens_out, engine.last_step_tokens) == (0, 0, 0)
    engine.add_request("a", list(range(1, 10)), _greedy(3))
    engine.add_request("b", list(range(20, 25)), SamplingParams(temperature=0, max_tokens=2, ignore_eos=True, n=2))
    assert engine.tokens_in == 9 + 5  # a request's prompt counts once, whatever its n
    per_step = []
    while engine.has_unfinished_requests():
        engine.step()
        per_step.append((engine.last_step_tokens, engine.tokens_out))
    # step 1: both prompts (b's two choices each read theirs) and a first token each; then one token a sequence
    assert per_step == [(9 + 5 + 5, 3), (3, 6), (1, 7)]
    assert engine.tokens_out == 3 + 2 * 2


def test_the_first_token_time_is_the_clock_at_the_first_token(tiny_model, monkeypatch):
    ticks = iter(range(100, 200))
    monkeypatch.setattr(engine_module, "time", SimpleNamespace(monotonic=lambda: next(ticks)))  # the engine's clock
    engine = LLMEngine(tiny_model, config=EngineConfig(num_blocks=32, block_size=4))
    engine.add_request("a", [1, 2, 3], _greedy(3))
    [seq] = engine._requests["a"].seqs
    assert seq.first_token_time is None
    engine.step()
    first = seq.first_token_time
    assert first == 100
    while engine.has_unfinished_requests():
        engine.step()
    assert seq.first_token_time == 100 and len(seq.output_token_ids) == 3


def test_each_choice_reports_the_seed_that_reproduces_it(tiny_model):
    from tokenmill.engine.sampler import choice_seed

    engine = LLMEngine(tiny_model, config=EngineConfig(num_blocks=64, block_size=4))
    engine.add_request("seeded", [1, 2, 3], SamplingParams(temperature=1.0, seed=11, n=2, max_tokens=5,
                                                           ignore_eos=True))
    engine.add_request("random", [1, 2, 3], SamplingParams(temperature=1.0, max_tokens=5, ignore_eos=True))
    engine.add_request("greedy", [1, 2, 3], _greedy(2))
    finished = run_to_completion(engine)
    assert [c.seed for c in finished["seeded"].outputs] == [choice_seed(11, 0), choice_seed(11, 1)]
    assert finished["greedy"].outputs[0].seed is None
    # no tokenizer, no text: every text field is empty
    assert {(c.text, c.delta_text) for o in finished.values() for c in o.outputs} == {("", "")}
    drawn = finished["random"].outputs[0]
    assert isinstance(drawn.seed, int)
    # the reported seed of an unseeded choice is its generator's: the same stream again gives the same tokens
    again = LLMEngine(tiny_model, config=EngineConfig(num_blocks=64, block_size=4))
    params = SamplingParams(temperature=1.0, max_tokens=5, ignore_eos=True)
    again.add_request("replay", [1, 2, 3], params)
    [seq] = again._requests["replay"].seqs
    seq.generator.manual_seed(drawn.seed)
    assert run_to_completion(again)["replay"].outputs[0].token_ids == drawn.token_ids

