"""Mistral against transformers: every layer windowed (window 9 < 40-token prompts), in prefill and cached
decode."""

from __future__ import annotations

import pytest
import transformers

from .parity import assert_cache_matches_recompute, assert_greedy_matches, assert_logits_match, save_tiny


def tiny_config(**overrides) -> transformers.MistralConfig:
    values = dict(
        vocab_size=101, bos_token_id=1, eos_token_id=2, pad_token_id=0, max_position_embeddings=128,
        hidden_size=40, intermediate_size=68, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=12, sliding_window=9,
    )
    values.update(overrides)
    return transformers.MistralConfig(**values)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return save_tiny(tmp_path_factory, "mistral", transformers.MistralForCausalLM, tiny_config())


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_logits_match_oracle(pair, attn):
    assert_logits_match(pair, attn)


def test_cache_equals_recompute(pair):
    assert_cache_matches_recompute(pair)


def test_greedy_generation_matches(pair):
    assert_greedy_matches(pair)
