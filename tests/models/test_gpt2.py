"""GPT-2 against transformers: learned positions, LayerNorm, Conv1D (transposed) fused c_attn, tied head."""

from __future__ import annotations

import pytest
import transformers

from .parity import assert_cache_matches_recompute, assert_greedy_matches, assert_logits_match, save_tiny


def tiny_config(**overrides) -> transformers.GPT2Config:
    values = dict(
        vocab_size=101, bos_token_id=1, eos_token_id=2, pad_token_id=0, n_embd=40, n_layer=3, n_head=5,
        n_positions=64, n_inner=68,
    )
    values.update(overrides)
    return transformers.GPT2Config(**values)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return save_tiny(tmp_path_factory, "gpt2", transformers.GPT2LMHeadModel, tiny_config())


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_logits_match_oracle(pair, attn):
    assert_logits_match(pair, attn)


def test_cache_equals_recompute(pair):
    assert_cache_matches_recompute(pair)


def test_greedy_generation_matches(pair):
    assert_greedy_matches(pair)
