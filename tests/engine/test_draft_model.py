"""Draft-model speculation in the engine (engine/draft_model.py): whatever the draft model proposes, greedy and
seeded outputs equal transformers' greedy continuation / the non-speculative engine; a draft that is the target
itself is accepted; the per-sequence draft cache follows rejections; requests for a draft model the engine lacks
are refused."""

from __future__ import annotations

import pytest
import torch

from tokenmill.engine import LLM, SamplingParams
from tokenmill.engine.draft_model import DraftModelError, DraftModelProposer, check_draft_model
from tokenmill.engine.sequence import Sequence

DRAFT = {"method": "draft_model", "num_speculative_tokens": 3}


@pytest.fixture(scope="module")
def other_draft(tmp_path_factory):
    """A different random tiny Llama with the engine test model's 96-id vocabulary: its drafts are mostly wrong."""
    import transformers

    from tokenmill.auto import AutoModelForCausalLM

    torch.manual_seed(1)
    config = transformers.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                                      eos_token_id=None, bos_token_id=None, pad_token_id=None)
    folder = tmp_path_factory.mktemp("tiny-draft")
    transformers.LlamaForCausalLM(config).eval().save_pretrained(folder)
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, progress=False), folder


def _prompts(count, seed=11):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 96, (n,), generator=generator).tolist() for n in range(4, 4 + 3 * count, 3)]


def _greedy(max_tokens, speculative=None):
    return SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True, speculative=speculative)


def _ids(outputs):
    return [output.outputs[0].token_ids for output in outputs]


def test_a_wrong_draft_model_leaves_greedy_outputs_unchanged(tiny_model, other_draft, hf_greedy):
    prompts = _prompts(4)
    llm = LLM(tiny_model, num_blocks=96, block_size=4, draft_model=other_draft[0], speculative_step_tokens=64)
    got = llm.generate(prompts, [_greedy(12, DRAFT) for _ in prompts])
    assert _ids(got) == [hf_greedy(prompt, 12) for prompt in prompts]
    stats = llm.engine.stats()
    assert stats["spec_draft_tokens"] > stats["spec_accepted_tokens"]  # rejections happened and were rolled back
    assert llm.engine.blocks.num_used_blocks == 0


def test_the_target_as_its_own_draft_is_accepted(tiny_model, hf_greedy):
    """The draft model's greedy token equals the target's wherever the two float32 runs order the top two logits
    alike, so acceptance is high; outputs stay exact either way."""
    prompts = _prompts(2, seed=3)
    llm = LLM(tiny_model, num_blocks=64, block_size=4, speculative_config={"model": tiny_model,
                                                                           "num_speculative_tokens": 3})
    got = llm.generate(prompts, [_greedy(12) for _ in prompts])  # the engine default speculates with the draft
    assert _ids(got) == [hf_greedy(prompt, 12) for prompt in prompts]
    stats = llm.engine.stats()
    assert stats["spec_accepted_tokens"] > stats["spec_draft_tokens"] / 2 > 0
    assert stats["spec_tokens_per_step"] > 1


def test_seeded_sampling_is_the_same_with_a_draft_model(tiny_model, other_draft):
    prompts = _prompts(2, seed=5)
    settings = dict(temperature=0.8, top_k=30, seed=9, n=2, ignore_eos=True, max_tokens=16)
    llm = LLM(tiny_model, num_blocks=64, block_size=4, draft_model=other_draft[0])
    plain = llm.generate(prompts, SamplingParams(**settings))
    spec = llm.generate(prompts, SamplingParams(speculative=DRAFT, **settings))
    assert [[c.token_ids for c in o.outputs] for o in spec] == [[c.token_ids for c in o.outputs] for o in plain]
    assert llm.engine.stats()["spec_draft_tokens"] > 0


def test_a_draft_model_given_as_a_folder_is_loaded_like_the_target(tiny_model, other_draft):
    llm = LLM(tiny_model, num_blocks=32, block_size=4, speculative_config={"model": str(other_draft[1]),
                                                                           "num_speculative_tokens": 2})
    proposer = llm.engine.speculator.draft_model
    assert proposer.model.config.hidden_size == 32 and proposer.model.dtype == tiny_model.dtype


def test_the_draft_cache_is_cut_back_to_the_verified_tokens(other_draft):
    model = other_draft[0]
    proposer = DraftModelProposer(model)
    seq = Sequence("r", 0, [5, 9, 2, 40, 7], SamplingParams(max_tokens=8))
    drafts = proposer.propose(seq, 3)
    assert len(drafts) == 3
    state = proposer._states[("r", 0)]
    assert state.seen[0].tolist() == [5, 9, 2, 40, 7, drafts[0], drafts[1]]  # the last draft is not fed yet
    seq.output_token_ids = [drafts[0], (drafts[1] + 1) % 96]  # the first draft accepted, the second rejected
    again = proposer.propose(seq, 2)
    fed = state.seen[0].tolist()
    assert fed[:6] == seq.all_token_ids[:6] and fed[6] == seq.all_token_ids[6]
    assert again == DraftModelProposer(model).propose(seq, 2)  # as if the draft model read the tokens afresh


def test_finished_sequences_drop_their_draft_caches(other_draft):
    proposer = DraftModelProposer(other_draft[0])
    first, second = (Sequence(rid, 0, [1, 2, 3], SamplingParams(max_tokens=4)) for rid in ("a", "b"))
    proposer.propose(first, 1)
    proposer.propose(second, 1)
    proposer.keep_only([second])
    assert list(proposer._states) == [("b", 0)]


def test_no_drafts_past_the_draft_models_context(other_draft):
    proposer = DraftModelProposer(other_draft[0])
    seq = Sequence("r", 0, list(range(3)) * 42 + [1], SamplingParams(max_tokens=8))  # 127 of 128 positions
    assert len(proposer.propose(seq, 4)) == 1


def test_requests_for_a_missing_draft_model_and_mismatched_vocabularies_are_refused(tiny_model, other_draft):
    llm = LLM(tiny_model, num_blocks=16, block_size=4)
    with pytest.raises(ValueError, match="needs a draft model"):
        llm.generate([[1, 2, 3]], _greedy(2, DRAFT))
    assert not llm.engine.has_unfinished_requests()
    with pytest.raises(ValueError, match="needs a draft model"):
        LLM(tiny_model, num_blocks=16, block_size=4, speculative={"method": "draft_model",
                                                                   "num_speculative_tokens": 2})
    bigger = type("Model", (), {"config": type("Config", (), {"vocab_size": 97})()})()
    with pytest.raises(DraftModelError, match="larger than the target"):
        check_draft_model(bigger, tiny_model)
    with pytest.raises(ValueError, match="must be a dict"):
        LLM(tiny_model, num_blocks=16, block_size=4, speculative_config=3)
