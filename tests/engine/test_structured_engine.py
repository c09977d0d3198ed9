"""Structured output in the engine: constrained and free requests share batches; the free ones stay exactly
transformers' greedy, the constrained ones match their grammar and (greedy) transformers' greedy under the
same mask; n > 1 choices and preemption by recompute keep each choice's grammar state right."""

import json
import re

import pytest
import torch

from tokenmill.engine.engine import EngineConfig, LLMEngine
from tokenmill.engine.sampling_params import SamplingParams
from tokenmill.generation.constrained import StructuredOutputProcessor

from engine_steps import run_to_completion

EOS = 95  # the char_tokenizer fixture's eos (tests/engine/conftest.py)
REGEX = r"[0-9]{2,4}-[a-f]{1,3}"  # at most 8 characters: ends well within max_tokens
SCHEMA = {"type": "object", "properties": {"id": {"type": "integer", "minimum": 0, "maximum": 99},
                                           "ok": {"type": "boolean"}},
          "required": ["id", "ok"], "additionalProperties": False}


def _prompt(char_tokenizer, text: str) -> list[int]:
    return list(char_tokenizer.encode(text, add_special_tokens=False))


def _hf_constrained_greedy(hf_tiny, char_tokenizer, prompt, spec, new_tokens) -> list[int]:
    """transformers' greedy with the same grammar mask as a logits processor (the oracle for the model part)."""
    processor = StructuredOutputProcessor.from_spec(*spec, char_tokenizer, 96, [EOS])
    with torch.no_grad():
        out = hf_tiny.generate(torch.tensor([prompt]), max_new_tokens=new_tokens, do_sample=False,
                               logits_processor=[processor], eos_token_id=EOS, pad_token_id=EOS)
    return out[0, len(prompt):].tolist()


def _text(char_tokenizer, token_ids: list[int]) -> str:
    return char_tokenizer.decode([t for t in token_ids if t != EOS])


def test_constrained_and_free_requests_share_a_batch(tiny_model, hf_tiny, hf_greedy, char_tokenizer):
    engine = LLMEngine(tiny_model, char_tokenizer, EngineConfig(num_blocks=64, block_size=4), eos_token_ids=[EOS])
    free = {f"free{i}": _prompt(char_tokenizer, text) for i, text in enumerate(["hello there", "abc", "x = 1;"])}
    regex_prompt = _prompt(char_tokenizer, "code: ")
    json_prompt = _prompt(char_tokenizer, "json: ")
    requests = {name: (prompt, SamplingParams(max_tokens=12, temperature=0, ignore_eos=True))
                for name, prompt in free.items()}
    requests["regex"] = (regex_prompt, SamplingParams(max_tokens=12, temperature=0,
                                                      structured_output=("regex", REGEX)))
    requests["json"] = (json_prompt, SamplingParams(max_tokens=40, temperature=1.0, seed=3, n=3,
                                                    structured_output=("json_schema", SCHEMA)))
    finished = run_to_completion(engine, requests)

    for name, prompt in free.items():  # a neighbour's grammar must not touch a free row
        assert finished[name].outputs[0].token_ids == hf_greedy(prompt, 12), name
    regex_ids = finished["regex"].outputs[0].token_ids
    assert regex_ids == _hf_constrained_greedy(hf_tiny, char_tokenizer, regex_prompt, ("regex", REGEX), 12)
    assert finished["regex"].outputs[0].finish_reason == "stop" and regex_ids[-1] == EOS
    assert re.fullmatch(REGEX, _text(char_tokenizer, regex_ids))
    texts = []
    for choice in finished["json"].outputs:
        assert choice.finish_reason == "stop" and choice.token_ids[-1] == EOS
        value = json.loads(_text(char_tokenizer, choice.token_ids))
        assert set(value) == {"id", "ok"} and isinstance(value["ok"], bool)
        assert isinstance(value["id"], int) and 0 <= value["id"] <= 99
        texts.append(choice.token_ids)
    assert len({tuple(t) for t in texts}) > 1, "each choice samples on its own (different seeds)"
    assert engine.blocks.num_used_blocks == 0


def test_constrained_choices_survive_preemption(tiny_model, char_tokenizer):
    """A pool too small for every request: preempted sequences re-prefill prompt + output, and their grammar
    state follows (same outputs as with a roomy pool)."""
    prompts = [_prompt(char_tokenizer, f"item {i}: ") for i in range(6)]

    def requests():
        return {str(i): (prompt, SamplingParams(max_tokens=14, temperature=0.9, seed=i, n=2,
                                                structured_output=("regex", REGEX)))
                for i, prompt in enumerate(prompts)}

    roomy = run_to_completion(LLMEngine(tiny_model, char_tokenizer, EngineConfig(num_blocks=128, block_size=4),
                           eos_token_ids=[EOS]), requests())
    tight_engine = LLMEngine(tiny_model, char_tokenizer, EngineConfig(num_blocks=12, block_size=4, max_num_seqs=8,
                                                                      enable_prefix_caching=False),
                             eos_token_ids=[EOS])
    tight = run_to_completion(tight_engine, requests())
    assert tight_engine.scheduler.num_preemptions > 0, "the pool was meant to force preemption"
    for request_id, output in roomy.items():
        for roomy_choice, tight_choice in zip(output.outputs, tight[request_id].outputs):
            assert tight_choice.token_ids == roomy_choice.token_ids
            assert roomy_choice.finish_reason == "stop"
            assert re.fullmatch(REGEX, _text(char_tokenizer, roomy_choice.token_ids))


def test_bad_specs_fail_up_front(tiny_model, char_tokenizer):
    for spec, fragment in [(("json_schema", {"type": "nope"}), "Invalid type"), (("regex", "[a-"), "invalid regex"),
                           (("choice", []), "at least one"), (("yaml", "x"), "unknown structured-output kind")]:
        with pytest.raises(ValueError, match=fragment):
            SamplingParams(structured_output=spec)
    engine = LLMEngine(tiny_model, config=EngineConfig(num_blocks=16, block_size=4), eos_token_ids=[EOS])
    with pytest.raises(ValueError, match="needs the engine to have a tokenizer"):
        engine.add_request("x", [1, 2], SamplingParams(structured_output=("regex", REGEX)))


def test_finished_grammar_outranks_min_tokens(tiny_model, char_tokenizer):
    """min_tokens blocks eos, but a grammar that is complete allows nothing else: it ends instead of crashing."""
    engine = LLMEngine(tiny_model, char_tokenizer, EngineConfig(num_blocks=16, block_size=4), eos_token_ids=[EOS])
    for temperature in (0.0, 1.0):
        params = SamplingParams(max_tokens=10, min_tokens=8, temperature=temperature, seed=0,
                                structured_output=("regex", "[0-9]{2}"))
        output = run_to_completion(engine, {f"t{temperature}": (_prompt(char_tokenizer, "n: "), params)})[f"t{temperature}"]
        choice = output.outputs[0]
        assert choice.finish_reason == "stop" and len(choice.token_ids) == 3 and choice.token_ids[-1] == EOS
        assert re.fullmatch("[0-9]{2}", _text(char_tokenizer, choice.token_ids))


def test_constrained_requests_that_draft_match_the_plain_engine(tiny_model, char_tokenizer):
    """Drafted rows pick their tokens under the request's grammar, one position at a time: greedy and seeded
    choices equal the engine's without drafts, and drafts did run (a prompt full of the grammar's characters
    gives prompt lookup its matches)."""
    spec = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 2, "prompt_lookup_min": 1}
    prompt = _prompt(char_tokenizer, "12-ab 34-cd 12-ab 34-cd 1")

    def requests(speculative):
        return {"greedy": (prompt, SamplingParams(max_tokens=12, temperature=0, structured_output=("regex", REGEX),
                                                  speculative=speculative)),
                "seeded": (prompt, SamplingParams(max_tokens=12, temperature=0.8, seed=4, n=2,
                                                  structured_output=("regex", REGEX), speculative=speculative))}

    def engine():
        return LLMEngine(tiny_model, char_tokenizer, EngineConfig(num_blocks=64, block_size=4,
                                                                  speculative_step_tokens=12), eos_token_ids=[EOS])

    plain = run_to_completion(engine(), requests(None))
    drafting = engine()
    drafted = run_to_completion(drafting, requests(spec))
    assert drafting.stats()["spec_draft_tokens"] > 0
    for name, output in plain.items():
        for plain_choice, drafted_choice in zip(output.outputs, drafted[name].outputs):
            assert drafted_choice.token_ids == plain_choice.token_ids, name
            assert plain_choice.finish_reason == "stop" and drafted[name].error is None
            assert re.fullmatch(REGEX, _text(char_tokenizer, plain_choice.token_ids))
