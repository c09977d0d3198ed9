"""llama.cpp's mixed quantization types ("q4_k_m"): which block type each weight matrix takes, by its role.

llama.cpp's quantize tool (llama_tensor_get_type) starts every 2-D weight at the mixture's base type and then
raises the matrices whose rounding hurts most. For Q4_K_M, on a dense model without experts:
- the output head takes Q6_K; so do the token embeddings when they are the head too (tied weights), since one
  tensor serves both; untied token embeddings keep the base type;
- the value projection (attn_v) and the MLP's down projection (ffn_down) take Q6_K in the layers
  `more_bits` picks: the first eighth of the layers, the last eighth, and every third layer between (counted
  from the end of the first eighth: layers n/8 + 2, n/8 + 5, ...), with n/8 and 7n/8 in integer division;
- a fused q/k/v projection (attn_qkv) takes Q5_K in every layer;
- everything else takes Q4_K.
Then a type whose 256-value super-blocks do not tile a matrix's width falls back as for any k-quant (Q4_K →
Q5_0, Q6_K → Q8_0: assembly/quantize_k.py's FALLBACK), which quantize_weight applies. (llama.cpp's tool has
further rules for Falcon, 70B models and 8-expert models; those do not apply to the families made here.)

Roles are named by llama.cpp's tensor names (export) or by transformers' module names (quantizing at load).
"""

from __future__ import annotations

import re

from ..loading.gguf_arch import GGUF_TENSOR_NAME

MIXTURES = ("q4_k_m",)
BASE = {"q4_k_m": "q4_k"}

# the end of a transformers module name → its llama.cpp role
MODULE_ROLES = (("v_proj", "attn_v"), ("qkv_proj", "attn_qkv"), ("down_proj", "ffn_down"),
                ("embed_tokens", "token_embd"), ("lm_head", "output"))
LAYER_NUMBER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def more_bits(layer: int, layers: int) -> bool:
    """The layers whose attn_v / ffn_down take Q6_K under Q4_K_M (see the module docstring)."""
    return layer < layers // 8 or layer >= 7 * layers // 8 or (layer - layers // 8) % 3 == 2


def role_method(mixture: str, role: str, layer: int | None, layers: int, tied: bool) -> str:
    """The quantizer (an assembly/quantize.py QUANTIZERS key) for a matrix of `role` (a llama.cpp tensor
    role: "output", "token_embd", "attn_v", "attn_qkv", "ffn_down" or any other) in layer `layer` of
    `layers`; with `tied` embeddings the token embeddings are the head."""
    if mixture not in MIXTURES:
        raise ValueError(f"unknown mixture {mixture!r}; known: {', '.join(MIXTURES)}")
    if role == "output" or (role == "token_embd" and tied):
        return "q6_k"
    if role == "attn_qkv":
        return "q5_k"
    if role in ("attn_v", "ffn_down") and layer is not None and more_bits(layer, layers):
        return "q6_k"
    return BASE[mixture]


def module_role(module_name: str) -> tuple[str, int | None]:
    """(llama.cpp role, layer number or None) of a transformers module name such as
    "model.layers.3.self_attn.v_proj"; roles the mixture does not single out are "other"."""
    match = LAYER_NUMBER.search(module_name)
    layer = int(match[1]) if match else None
    leaf = module_name.rpartition(".")[2]
    role = next((role for end, role in MODULE_ROLES if leaf == end), "other")
    return role, layer


def module_method(mixture: str, module_name: str, layers: int, tied: bool) -> str:
    """The quantizer for the weight of transformers module `module_name` under `mixture`."""
    role, layer = module_role(module_name)
    return role_method(mixture, role, layer, layers, tied)


def tensor_method(mixture: str, gguf_name: str, layers: int, tied: bool) -> str:
    """The quantizer for llama.cpp tensor `gguf_name` (such as "blk.3.attn_v.weight") under `mixture`."""
    match = GGUF_TENSOR_NAME.match(gguf_name)
    if match is None:
        return role_method(mixture, "other", None, layers, tied)
    layer = match["layer"]
    return role_method(mixture, match["part"], None if layer is None else int(layer), layers, tied)
