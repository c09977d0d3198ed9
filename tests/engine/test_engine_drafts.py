"""The engine's rows that ran drafts (LLMEngine._verify_drafts) on the tiny Llama: a drafted row whose logits are
not finite, whose tokens fail to append, or whose request is gone ends only its own request, with the same
errors as a plain row, and every other request keeps transformers' greedy tokens."""

import torch

from tokenmill.engine import EngineConfig, LLMEngine, SamplingParams
from tokenmill.engine.sequence import SequenceStatus

from engine_steps import run_to_completion

SPEC = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 2, "prompt_lookup_min": 1}


def _prompt(seed: int, length: int = 9) -> list[int]:
    # a short repeating pattern: prompt lookup finds a match after every token, so the request drafts each step
    base = torch.randint(0, 96, (3,), generator=torch.Generator().manual_seed(seed)).tolist()
    return (base * length)[:length]


def _greedy(max_tokens: int, speculative=SPEC) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True, speculative=speculative)


def _engine(tiny_model) -> LLMEngine:
    # room for two drafting sequences in one step: 2 x (1 + 3 drafts) positions
    return LLMEngine(tiny_model, config=EngineConfig(num_blocks=64, block_size=4, speculative_step_tokens=8))



def _wrap_run(engine: LLMEngine, before=None, poison=None):
    """Replace the runner's step: `before(chunks)` runs first, `poison(i, chunk, every_position)` may edit a
    drafted row's logits; returns the number of drafted chunks seen per request id."""
    run = engine.runner.run
    drafted: dict[str, int] = {}

    def wrapped(chunks, all_rows):
        if before is not None:
            before(chunks)
        last_logits, every_position = run(chunks, all_rows)
        for i, chunk in enumerate(chunks):
            if chunk.seq.draft_token_ids:
                drafted[chunk.seq.request_id] = drafted.get(chunk.seq.request_id, 0) + 1
                if poison is not None:
                    every_position = poison(i, chunk, every_position)
        return last_logits, every_position

    engine.runner.run = wrapped
    return drafted


def test_a_drafted_row_with_non_finite_logits_fails_alone(tiny_model, hf_greedy):
    engine = _engine(tiny_model)

    def poison(i, chunk, every_position):
        if chunk.seq.request_id != "bad":
            return every_position
        return {**every_position, i: torch.full_like(every_position[i], float("nan"))}

    drafted = _wrap_run(engine, poison=poison)
    engine.add_request("good", _prompt(1), _greedy(10))
    engine.add_request("bad", _prompt(2), _greedy(10))
    finished = run_to_completion(engine)
    assert drafted["bad"] == 1 and drafted["good"] > 0  # the bad request ended at its first drafted row
    bad = finished["bad"].outputs[0]
    assert bad.finish_reason == "error" and bad.token_ids == hf_greedy(_prompt(2), len(bad.token_ids))
    assert finished["bad"].error.startswith("choice 0 has no finite next-token distribution (NaN or infinite")
    assert finished["good"].error is None
    assert finished["good"].outputs[0].token_ids == hf_greedy(_prompt(1), 10)
    assert not engine.has_unfinished_requests() and engine.blocks.num_used_blocks == 0


def test_a_drafted_row_whose_tokens_fail_to_append_fails_alone(tiny_model, hf_greedy):
    engine = _engine(tiny_model)
    verify = engine.speculator.verify

    def failing_for_bad(chunk, logits, choose, append, scheduler, constrained):
        def raising(token):
            raise RuntimeError("boom")

        return verify(chunk, logits, choose, raising if chunk.seq.request_id == "bad" else append, scheduler,
                      constrained)

    engine.speculator.verify = failing_for_bad
    engine.add_request("good", _prompt(3), _greedy(10))
    engine.add_request("bad", _prompt(4), _greedy(10))
    finished = run_to_completion(engine)
    assert finished["bad"].error == "generation failed for this request: RuntimeError('boom')"
    bad = finished["bad"].outputs[0]
    assert bad.finish_reason == "error" and bad.token_ids == hf_greedy(_prompt(4), len(bad.token_ids)) and \
        len(bad.token_ids) < 10  # the plain steps' tokens, then the failed drafted row
    assert finished["good"].error is None
    assert finished["good"].outputs[0].token_ids == hf_greedy(_prompt(3), 10)
    assert engine.stats()["spec_draft_tokens"] > 0 and engine.blocks.num_used_blocks == 0


def test_a_drafted_sequence_whose_request_is_gone_is_finished_and_its_blocks_freed(tiny_model, hf_greedy):
    """Whatever removes a request while its drafted row is in the step, the row is dropped, its drafts cleared
    and its blocks given back; the other request's tokens are untouched."""
    engine = _engine(tiny_model)
    engine.add_request("kept", _prompt(5), _greedy(10))
    engine.add_request("gone", _prompt(6), _greedy(10))
    [gone] = engine._requests["gone"].seqs

    def drop_gone(chunks):
        if any(chunk.seq is gone and chunk.seq.draft_token_ids for chunk in chunks):
            engine._requests.pop("gone", None)

    drafted = _wrap_run(engine, before=drop_gone)
    finished = run_to_completion(engine)
    assert drafted["gone"] == 1 and "gone" not in finished
    assert gone.status is SequenceStatus.FINISHED and gone.finish_reason == "abort"
    assert gone.draft_token_ids == [] and gone.block_table == []
    assert gone not in engine.scheduler.running
    assert finished["kept"].outputs[0].token_ids == hf_greedy(_prompt(5), 10)
    assert not engine.scheduler.has_unfinished() and engine.blocks.num_used_blocks == 0


def test_a_plain_row_whose_token_fails_to_append_fails_alone(tiny_model, hf_greedy):
    """The same rule without drafts: the failing request ends with the error, the others in its step go on."""
    engine = _engine(tiny_model)
    append = engine._append_token

    def failing_for_bad(seq, token):
        if seq.request_id == "bad" and seq.output_token_ids:
            raise RuntimeError("boom")
        append(seq, token)

    engine._append_token = failing_for_bad
    for name, seed in (("before", 7), ("bad", 8), ("after", 9)):  # rows on both sides of the failing one
        engine.add_request(name, _prompt(seed), _greedy(6, speculative=None))
    finished = run_to_completion(engine)
    assert finished["bad"].error == "generation failed for this request: RuntimeError('boom')"
    assert finished["bad"].outputs[0].token_ids == hf_greedy(_prompt(8), 1)
    for name, seed in (("before", 7), ("after", 9)):
        assert finished[name].error is None and finished[name].outputs[0].token_ids == hf_greedy(_prompt(seed), 6)
    assert engine.blocks.num_used_blocks == 0


def test_a_draft_model_given_as_a_path_loads_quietly_in_the_targets_dtype(tiny_llama_dir, capfd):
    from pathlib import Path

    from tokenmill.auto import AutoModelForCausalLM
    from tokenmill.engine.engine import draft_proposer

    target = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.bfloat16, progress=False)
    capfd.readouterr()
    proposer = draft_proposer(Path(tiny_llama_dir), target)  # a path object, not only a string, is a source
    assert proposer.model is not target and proposer.model.dtype == torch.bfloat16
    assert proposer.model.device == target.device
    assert capfd.readouterr().err == ""  # no progress bar for the draft model's load
    assert draft_proposer(None, target) is None


def test_drafted_rows_hold_eos_back_until_min_tokens(tiny_model, hf_greedy):
    """Drafted rows pick tokens with the engine's eos ids like plain rows: eos is blocked before min_tokens."""
    prompt = _prompt(10)
    eos = hf_greedy(prompt, 3)[2]  # a token greedy decoding reaches early

    def run(speculative):
        engine = LLMEngine(tiny_model, config=EngineConfig(num_blocks=64, block_size=4), eos_token_ids=[eos])
        engine.add_request("r", prompt, SamplingParams(temperature=0, max_tokens=12, min_tokens=8,
                                                       speculative=speculative))
        return run_to_completion(engine)["r"].outputs[0], engine.stats()["spec_draft_tokens"]

    (plain, _), (drafted, drafts) = run(None), run(SPEC)
    assert drafts > 0 and drafted.token_ids == plain.token_ids
    assert eos not in plain.token_ids[:7]
