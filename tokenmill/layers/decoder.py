"""Decoder blocks: where the norms sit around attention and the feed-forward part.

Both expose `sliding_window` and `rope_key`, which DecoderModel reads to pick the layer's mask and
rotary table; the attention, MLP and norm modules are built by the architecture file.
"""

from __future__ import annotations

from torch import nn

from ..execution.ops import TorchOps
from .lora import NO_LORA, LoraBatch


class PreNormBlock(nn.Module):
    """x + attn(norm(x)), then x + mlp(norm(x)): Llama, Mistral, Qwen, Phi-3, Mixtral, GPT-2."""

    def __init__(self, self_attn: nn.Module, mlp: nn.Module, input_layernorm: nn.Module,
                 post_attention_layernorm: nn.Module, sliding_window: int | None = None, rope_key: str = "default"):
        super().__init__()
        self.self_attn = self_attn
        self.mlp = mlp
        self.input_layernorm = input_layernorm
        self.post_attention_layernorm = post_attention_layernorm
        self.sliding_window = sliding_window
        self.rope_key = rope_key

    def forward(self, hidden, rope, mask, cache, ops: TorchOps, lora: LoraBatch = NO_LORA):
        hidden = hidden + self.self_attn(self.input_layernorm(hidden, ops), rope, mask, cache, ops, lora)
        return hidden + self.mlp(self.post_attention_layernorm(hidden, ops), ops, lora)


class SandwichBlock(nn.Module):
    """Gemma 2/3: each sub-layer's output is normalised again before it joins the residual stream."""

    def __init__(self, self_attn: nn.Module, mlp: nn.Module, input_layernorm: nn.Module,
                 post_attention_layernorm: nn.Module, pre_feedforward_layernorm: nn.Module,
                 post_feedforward_layernorm: nn.Module, sliding_window: int | None = None,
                 rope_key: str = "default"):
        super().__init__()
        self.self_attn = self_attn
        self.mlp = mlp
        self.input_layernorm = input_layernorm
        self.post_attention_layernorm = post_attention_layernorm
        self.pre_feedforward_layernorm = pre_feedforward_layernorm
        self.post_feedforward_layernorm = post_feedforward_layernorm
        self.sliding_window = sliding_window
        self.rope_key = rope_key

    def forward(self, hidden, rope, mask, cache, ops: TorchOps, lora: LoraBatch = NO_LORA):
        attended = self.self_attn(self.input_layernorm(hidden, ops), rope, mask, cache, ops, lora)
        hidden = hidden + self.post_attention_layernorm(attended, ops)
        fed = self.mlp(self.pre_feedforward_layernorm(hidden, ops), ops, lora)
        return hidden + self.post_feedforward_layernorm(fed, ops)


def layer_types(config, sliding_pattern: int | None = None) -> list[str]:
    """transformers' per-layer `layer_types`; absent, every `sliding_pattern`-th layer is global and the rest
    local (Gemma 2/3 configs written before the field existed), or, without a pattern, every layer is global."""
    kinds = config.get("layer_types")
    if kinds is None:
        kinds = ["sliding_attention" if sliding_pattern and (i + 1) % sliding_pattern else "full_attention"
                 for i in range(config.num_hidden_layers)]
    if len(kinds) != config.num_hidden_layers:
        raise ValueError(f"layer_types has {len(kinds)} entries for {config.num_hidden_layers} layers")
    unknown = set(kinds) - {"full_attention", "sliding_attention"}
    if unknown:
        raise ValueError(f"unsupported layer_types {sorted(unknown)}; supported: full_attention, sliding_attention")
    return list(kinds)


def layer_windows(config, sliding_pattern: int | None = None) -> list[int | None]:
    """Per-layer sliding window: config.sliding_window on "sliding_attention" layers, None elsewhere."""
    window = config.get("sliding_window")
    return [window if kind == "sliding_attention" and window else None
            for kind in layer_types(config, sliding_pattern)]
