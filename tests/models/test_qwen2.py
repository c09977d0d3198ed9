"""Qwen2 against transformers: q/k/v bias, GQA, and sliding-window layers above max_window_layers."""

from __future__ import annotations

import pytest
import transformers

from .parity import assert_cache_matches_recompute, assert_greedy_matches, assert_logits_match, save_tiny


def tiny_config(**overrides) -> transformers.Qwen2Config:
    values = dict(vocab_size=101, hidden_size=40, intermediate_size=68, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128, use_sliding_window=True, sliding_window=9,
                  max_window_layers=1, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    values.update(overrides)
    return transformers.Qwen2Config(**values)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    config = tiny_config()
    assert config.layer_types == ["full_attention", "sliding_attention", "sliding_attention"]
    return save_tiny(tmp_path_factory, "qwen2", transformers.Qwen2ForCausalLM, config)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_logits_match_oracle(pair, attn):
    assert_logits_match(pair, attn)


def test_cache_equals_recompute(pair):
    assert_cache_matches_recompute(pair)


def test_greedy_generation_matches(pair):
    assert_greedy_matches(pair)


def test_tied_embeddings_without_window(tmp_path_factory):
    pair = save_tiny(tmp_path_factory, "qwen2-tied", transformers.Qwen2ForCausalLM,
                     tiny_config(tie_word_embeddings=True, use_sliding_window=False))
    assert_logits_match(pair, "sdpa")
