"""generate() against transformers' generate() on one tiny random Llama, option by option: lengths, eos lists that
really fire, every processor the config drives, seeded sampling (same seed, same tokens), num_return_sequences,
return_dict_in_generate with scores and logits, user processors and criteria written for transformers, and the
checkpoint's generation_config.json as the default."""

from __future__ import annotations

import pytest
import torch
import transformers

from tokenmill import GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from numerics import assert_runs_agree, matmuls, reduction_len

from .parity import PAD_ID, prompt_batch, save_tiny
from .test_llama import tiny_llama_config

SEED = 7

CASES = {
    "greedy": dict(do_sample=False, max_new_tokens=16),
    "max_length": dict(do_sample=False, max_length=30),
    "min_new_tokens": dict(do_sample=False, max_new_tokens=16, min_new_tokens=10, eos_token_id=[5, 17, 33]),
    "penalties_and_bans": dict(do_sample=False, max_new_tokens=16, repetition_penalty=1.4, no_repeat_ngram_size=2,
                               bad_words_ids=[[7], [8, 9]], sequence_bias=[[[10], 3.0]], suppress_tokens=[11, 12]),
    "top_k_top_p_temperature": dict(do_sample=True, max_new_tokens=16, temperature=0.7, top_k=20, top_p=0.9),
    "min_p": dict(do_sample=True, max_new_tokens=16, min_p=0.1),
    "typical_p": dict(do_sample=True, max_new_tokens=16, typical_p=0.8),
    "epsilon_cutoff": dict(do_sample=True, max_new_tokens=16, epsilon_cutoff=3e-3),
    "eta_cutoff": dict(do_sample=True, max_new_tokens=16, eta_cutoff=3e-3),
    "num_return_sequences": dict(do_sample=True, max_new_tokens=10, num_return_sequences=3, top_k=0),
}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return save_tiny(tmp_path_factory, "llama-generate", transformers.LlamaForCausalLM, tiny_llama_config())


@pytest.fixture(scope="module")
def model(pair):
    return pair.load()


@pytest.fixture(scope="module")
def prompts():
    return prompt_batch(97, length=20)


def run_both(pair, model, prompts, **settings):
    """Each library's generate() with the same arguments, each after torch.manual_seed(SEED)."""
    ids, mask = prompts
    settings = dict(attention_mask=mask, pad_token_id=PAD_ID, **settings)
    torch.manual_seed(SEED)
    theirs = pair.oracle.generate(ids, **settings)
    torch.manual_seed(SEED)
    ours = model.generate(ids, **settings)
    return ours, theirs


@pytest.mark.parametrize("case", sorted(CASES))
def test_tokens_match_transformers(pair, model, prompts, case):
    ours, theirs = run_both(pair, model, prompts, **CASES[case])
    assert ours.tolist() == theirs.tolist()


def test_eos_list_stops_rows_and_pads_them(pair, model, prompts):
    """eos ids taken from the greedy continuation itself, so rows do stop early, at different steps."""
    ids, _ = prompts
    greedy, _ = run_both(pair, model, prompts, do_sample=False, max_new_tokens=16)
    new = greedy[:, ids.shape[1]:]
    eos = [int(new[0, 3]), int(new[1, 6])]
    ours, theirs = run_both(pair, model, prompts, do_sample=False, max_new_tokens=16, eos_token_id=eos)
    assert ours.tolist() == theirs.tolist()
    assert ours.shape[1] < greedy.shape[1] or (ours[:, ids.shape[1]:] == PAD_ID).any()


@pytest.mark.parametrize("do_sample", [False, True])
def test_return_dict_with_scores_and_logits(pair, model, prompts, do_sample):
    ours, theirs = run_both(pair, model, prompts, do_sample=do_sample, max_new_tokens=10, repetition_penalty=1.3,
                            top_k=10, return_dict_in_generate=True, output_scores=True, output_logits=True)
    assert type(ours).__name__ == type(theirs).__name__ == "GenerateDecoderOnlyOutput"
    assert ours.sequences.tolist() == theirs.sequences.tolist()
    assert len(ours.scores) == len(theirs.scores) == len(ours.logits) == len(theirs.logits) == 10
    for mine, expected in [*zip(ours.scores, theirs.scores), *zip(ours.logits, theirs.logits)]:
        assert torch.equal(torch.isinf(mine), torch.isinf(expected))
        finite = torch.isfinite(expected)
        # transformers' float32 and ours, same weights; the penalty scales a value and its error alike
        assert_runs_agree(mine[finite], expected[finite], reduction_len(model.config, ours.sequences.shape[1]),
                          matmuls(model.config), "scores and logits")
    assert ours.past_key_values.get_seq_length() == ours.sequences.shape[1] - 1


def make_processor(base):
    class BanEvenIdsAfterStep3(base):
        """A user processor written against transformers' interface: (input_ids, scores) -> scores."""

        def __init__(self, prompt_length: int):
            self.prompt_length = prompt_length

        def __call__(self, input_ids, scores):
            if input_ids.shape[1] - self.prompt_length >= 3:
                scores = scores.clone()
                scores[:, ::2] = -float("inf")
            return scores

    return BanEvenIdsAfterStep3


def make_criteria(base):
    class StopAfterId41(base):
        def __call__(self, input_ids, scores, **kwargs):
            return input_ids[:, -1] == 41

    return StopAfterId41


def test_user_processors_and_criteria_port_by_changing_the_import(pair, model, prompts):
    ids, mask = prompts
    results = []
    for generator, processor_base, processor_list, criteria_base, criteria_list in (
            (pair.oracle, transformers.LogitsProcessor, transformers.LogitsProcessorList,
             transformers.StoppingCriteria, transformers.StoppingCriteriaList),
            (model, LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList)):
        torch.manual_seed(SEED)
        results.append(generator.generate(
            ids, attention_mask=mask, pad_token_id=PAD_ID, do_sample=True, max_new_tokens=14,
            logits_processor=processor_list([make_processor(processor_base)(ids.shape[1])]),
            stopping_criteria=criteria_list([make_criteria(criteria_base)()])).tolist())
    assert results[0] == results[1]
    assert all(token % 2 == 1 for row in results[1] for token in row[ids.shape[1] + 3:] if token != PAD_ID)


def test_generation_config_object_and_per_call_overrides(pair, model, prompts):
    ours_config = GenerationConfig(do_sample=True, top_k=5, temperature=1.3, max_new_tokens=9)
    theirs_config = transformers.GenerationConfig(do_sample=True, top_k=5, temperature=1.3, max_new_tokens=9)
    ids, mask = prompts
    torch.manual_seed(SEED)
    theirs = pair.oracle.generate(ids, generation_config=theirs_config, attention_mask=mask, pad_token_id=PAD_ID,
                                  top_k=3)
    torch.manual_seed(SEED)
    ours = model.generate(ids, generation_config=ours_config, attention_mask=mask, pad_token_id=PAD_ID, top_k=3)
    assert ours.tolist() == theirs.tolist() and ours.shape[1] == ids.shape[1] + 9
    assert ours_config.top_k == 5  # the call's override does not leak into the object


def test_generation_config_json_is_the_default(tmp_path_factory, prompts):
    """Both libraries load generation_config.json from the folder and generate() follows it with no arguments."""
    pair = save_tiny(tmp_path_factory, "llama-gen-config", transformers.LlamaForCausalLM, tiny_llama_config())
    transformers.GenerationConfig(do_sample=True, top_k=4, max_new_tokens=6, bos_token_id=1, eos_token_id=[2, 50],
                                  pad_token_id=PAD_ID).save_pretrained(pair.folder)
    oracle = transformers.AutoModelForCausalLM.from_pretrained(pair.folder, dtype=torch.float32).eval()
    model = pair.load()
    assert model.generation_config.top_k == 4 and model.generation_config.eos_token_id == [2, 50]
    ids, mask = prompts
    torch.manual_seed(SEED)
    theirs = oracle.generate(ids, attention_mask=mask)
    torch.manual_seed(SEED)
    ours = model.generate(ids, attention_mask=mask)
    assert ours.tolist() == theirs.tolist() and ours.shape[1] <= ids.shape[1] + 6
