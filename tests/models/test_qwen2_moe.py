"""Qwen2-MoE against transformers: top-3 of 6 experts without renormalisation, sigmoid-gated shared expert, a
dense (mlp_only) layer, q/k/v bias."""

from __future__ import annotations

import pytest
import transformers

from .parity import assert_cache_matches_recompute, assert_greedy_matches, assert_logits_match, save_tiny


def tiny_config(**overrides) -> transformers.Qwen2MoeConfig:
    values = dict(
        vocab_size=101, bos_token_id=1, eos_token_id=2, pad_token_id=0, max_position_embeddings=128,
        hidden_size=40, intermediate_size=52, moe_intermediate_size=20, shared_expert_intermediate_size=44,
        num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, num_experts=6,
        num_experts_per_tok=3, norm_topk_prob=False, mlp_only_layers=[1],
    )
    values.update(overrides)
    return transformers.Qwen2MoeConfig(**values)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return save_tiny(tmp_path_factory, "qwen2_moe", transformers.Qwen2MoeForCausalLM, tiny_config())


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_logits_match_oracle(pair, attn):
    assert_logits_match(pair, attn)


def test_cache_equals_recompute(pair):
    assert_cache_matches_recompute(pair)


def test_greedy_generation_matches(pair):
    assert_greedy_matches(pair)


def test_stacked_expert_weights_load_as_transformers_holds_them(pair):
    """transformers v5 (and the GGUF loader) keep experts stacked: `experts.gate_up_proj` [E, 2I, H]."""
    import torch

    from tokenmill.config import ModelConfig
    from tokenmill.assembly.weights import build_model

    state = dict(pair.oracle.state_dict())
    assert "model.layers.0.mlp.experts.gate_up_proj" in state
    config = ModelConfig.from_json_file(pair.folder / "config.json")
    model = build_model(config, state, source=pair.folder)
    ids = torch.randint(3, pair.vocab_size, (2, 17), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        pair.assert_within_bound(model(ids).logits, ids, label="fused experts")


def test_renormalised_top_k_and_sparse_step(tmp_path_factory):
    """norm_topk_prob=True rescales the kept router weights; decoder_sparse_step=2 makes every other layer dense."""
    pair = save_tiny(tmp_path_factory, "qwen2_moe-norm", transformers.Qwen2MoeForCausalLM,
                     tiny_config(norm_topk_prob=True, mlp_only_layers=[], decoder_sparse_step=2, num_hidden_layers=4))
    assert_logits_match(pair, "sdpa")
    assert_greedy_matches(pair)
