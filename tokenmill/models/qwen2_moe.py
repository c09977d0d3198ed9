"""Qwen2-MoE (Qwen1.5-MoE): Qwen2's attention; sparse layers route each token to top-k experts (weights
renormalised only when norm_topk_prob) and add a shared expert gated by sigmoid(shared_expert_gate(x))."""

from __future__ import annotations

import torch

from ..config import ModelConfig
from ..layers.mlp import GatedMLP
from ..layers.moe import Experts, SparseMoeBlock, TopKRouter, fuse_expert_weights, split_expert_weights
from ..loading.gguf_arch import DECODER_LAYER, ROUTED_EXPERTS, ArchSpec, Metadata, decoder_config
from .family import Family, RMSPreNormLM

EXPERT_NAMES = ("gate_proj", "up_proj", "down_proj")


def is_sparse_layer(config: ModelConfig, layer_idx: int) -> bool:
    step = config.get("decoder_sparse_step", 1) or 1
    return (layer_idx not in (config.get("mlp_only_layers") or []) and config.get("num_experts", 0) > 0
            and (layer_idx + 1) % step == 0)


class Qwen2MoeForCausalLM(RMSPreNormLM):
    @staticmethod
    def attention_options(config: ModelConfig) -> dict:
        return {"qkv_bias": bool(config.get("qkv_bias", True))}

    @staticmethod
    def feed_forward(config: ModelConfig, layer_idx: int):
        hidden, act = config.hidden_size, config.hidden_act
        if not is_sparse_layer(config, layer_idx):
            return GatedMLP(hidden, config.intermediate_size, act)
        experts = config.get("num_experts")
        shared_size = config.get("shared_expert_intermediate_size") or 0
        return SparseMoeBlock(
            TopKRouter(hidden, experts, config.get("num_experts_per_tok"),
                       normalize=bool(config.get("norm_topk_prob"))),
            Experts(experts, hidden, config.get("moe_intermediate_size"), act),
            shared_expert=GatedMLP(hidden, shared_size, act) if shared_size else None,
            shared_expert_gate=torch.nn.Linear(hidden, 1, bias=False) if shared_size else None,
        )

    @classmethod
    def sanitize(cls, config: ModelConfig, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return super().sanitize(config, fuse_expert_weights(weights, *EXPERT_NAMES))

    @classmethod
    def checkpoint_weights(cls, config: ModelConfig, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return split_expert_weights(super().checkpoint_weights(config, weights), *EXPERT_NAMES)


def gguf_config(m: Metadata, tensors: dict, read) -> dict:
    config = decoder_config(m, tensors, "qwen2_moe", "Qwen2MoeForCausalLM")
    config.update(
        num_experts=int(m("expert_count")),
        num_experts_per_tok=int(m("expert_used_count")),
        moe_intermediate_size=int(m("expert_feed_forward_length", tensors["blk.0.ffn_gate_exps.weight"].shape[1])),
        shared_expert_intermediate_size=int(m(
            "expert_shared_feed_forward_length", tensors["blk.0.ffn_gate_shexp.weight"].shape[0])),
        decoder_sparse_step=1,
        mlp_only_layers=[],
        norm_topk_prob=False,
    )
    if config["intermediate_size"] is None:
        config["intermediate_size"] = config["moe_intermediate_size"]
    return config


GGUF_LAYER = DECODER_LAYER | ROUTED_EXPERTS | {
    "ffn_gate_inp_shexp": "mlp.shared_expert_gate",
    "ffn_gate_shexp": "mlp.shared_expert.gate_proj",
    "ffn_up_shexp": "mlp.shared_expert.up_proj",
    "ffn_down_shexp": "mlp.shared_expert.down_proj",
}
GGUF = ArchSpec("qwen2moe", gguf_config, layer_names=GGUF_LAYER)


FAMILY = Family("qwen2_moe", Qwen2MoeForCausalLM, gguf=GGUF)
