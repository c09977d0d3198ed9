"""Phi-3 against transformers: fused qkv/gate_up checkpoint, GQA, partial rotary, LongRoPE past the original
context, sliding window."""

from __future__ import annotations

import pytest
import torch
import transformers

from .parity import (PAD_ID, assert_cache_matches_recompute, assert_greedy_matches, assert_logits_match,
                     prompt_batch, save_tiny)


def tiny_config(**overrides) -> transformers.Phi3Config:
    values = dict(
        vocab_size=101, bos_token_id=1, eos_token_id=2, pad_token_id=0, hidden_size=48, intermediate_size=68,
        num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        original_max_position_embeddings=16, sliding_window=11,
        rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.5,
                         "short_factor": [1.0, 1.1, 1.3], "long_factor": [1.5, 2.0, 4.0]},
    )
    values.update(overrides)
    return transformers.Phi3Config(**values)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return save_tiny(tmp_path_factory, "phi3", transformers.Phi3ForCausalLM, tiny_config())


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_logits_match_oracle(pair, attn):
    assert_logits_match(pair, attn)


def test_cache_equals_recompute(pair):
    assert_cache_matches_recompute(pair)


def test_greedy_generation_matches(pair):
    assert_greedy_matches(pair)


def test_short_prompt_uses_short_factors_and_switches_when_decoding_past_the_original_context(pair):
    """A 10-token prompt (under original_max_position_embeddings=16) is rotated with the short factors; greedy
    decoding past position 16 switches to the long ones exactly where transformers does."""
    model = pair.load()
    ids, mask = prompt_batch(pair.vocab_size, length=10, pad_rows=((0, 3),))
    with torch.no_grad():
        pair.assert_within_bound(model(ids, attention_mask=mask).logits[mask.bool()], ids, mask.bool(), "short factors",
                                 attention_mask=mask)
    settings = dict(attention_mask=mask, do_sample=False, max_new_tokens=16, min_new_tokens=16, pad_token_id=PAD_ID)
    with torch.no_grad():
        assert model.generate(ids, **settings).tolist() == pair.oracle.generate(ids, **settings).tolist()
