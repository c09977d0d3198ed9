"""Gemma 3 against transformers: 5 local : 1 global over 7 layers, separate RoPE per layer type (linear scaling
on global), q/k norms."""

from __future__ import annotations

import pytest
import transformers

from .parity import assert_cache_matches_recompute, assert_greedy_matches, assert_logits_match, save_tiny


def tiny_config(**overrides) -> transformers.Gemma3TextConfig:
    values = dict(
        vocab_size=101, bos_token_id=1, eos_token_id=2, pad_token_id=0, max_position_embeddings=128,
        hidden_size=40, intermediate_size=68, num_hidden_layers=7, num_attention_heads=4,
        num_key_value_heads=2, head_dim=12, query_pre_attn_scalar=10, sliding_window=7,
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 100.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}},
    )
    values.update(overrides)
    return transformers.Gemma3TextConfig(**values)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return save_tiny(tmp_path_factory, "gemma3", transformers.Gemma3ForCausalLM, tiny_config())


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_logits_match_oracle(pair, attn):
    assert_logits_match(pair, attn)


def test_cache_equals_recompute(pair):
    assert_cache_matches_recompute(pair)


def test_greedy_generation_matches(pair):
    assert_greedy_matches(pair)
