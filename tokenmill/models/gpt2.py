"""GPT-2: learned absolute positions, LayerNorm, GELU (tanh) MLP, biases everywhere, tied head.

Checkpoints keep GPT-2's names (`transformer.h.<i>.attn.c_attn`) and its Conv1D layout ([in, out], the
transpose of nn.Linear's), with q/k/v fused; `sanitize` maps them onto the shared layers and
`checkpoint_weights` writes them back.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from ..config import ModelConfig
from ..execution.ops import TORCH_OPS, TorchOps
from ..layers.attention import Attention
from ..layers.decoder import PreNormBlock
from ..layers.lora import NO_LORA, LoraBatch
from ..layers.mlp import activation
from ..layers.norm import LayerNorm
from ..loading.gguf_arch import ArchSpec, Metadata, special_ids, vocab_size
from .base import CausalLM, DecoderModel
from .family import Family

# checkpoint name (after the optional "transformer." prefix) → module name, and whether Conv1D-transposed
_TOP_NAMES = {"wte.weight": "model.embed_tokens.weight", "wpe.weight": "model.wpe.weight",
              "ln_f.weight": "model.norm.weight", "ln_f.bias": "model.norm.bias"}
_LAYER_NAMES = {"ln_1": ("input_layernorm", False), "ln_2": ("post_attention_layernorm", False),
                "attn.c_proj": ("self_attn.o_proj", True), "mlp.c_fc": ("mlp.c_fc", True),
                "mlp.c_proj": ("mlp.c_proj", True)}
_LAYER_PARAM = re.compile(r"^h\.(?P<layer>\d+)\.(?P<module>[\w.]+)\.(?P<kind>weight|bias)$")
_CAUSAL_BUFFERS = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$")  # old checkpoints saved the mask
# generic names tokenmill adds on reading; GPT-2's config spells them n_embd, n_layer, ... (see FIELD_ALIASES)
_GENERIC_ONLY = ("hidden_size", "num_hidden_layers", "num_attention_heads", "max_position_embeddings",
                 "intermediate_size", "num_key_value_heads", "head_dim", "rms_norm_eps", "hidden_act",
                 "rope_parameters", "attention_bias", "mlp_bias")


class GPT2MLP(nn.Module):
    lora_targets = ("c_fc", "c_proj")  # the projections forward() runs through `lora`
    tensor_parallel_pair = ("c_fc", "c_proj")  # column-parallel, then row-parallel (assembly/tensor_parallel.py)

    def __init__(self, hidden_size: int, inner_size: int, act: str):
        super().__init__()
        self.c_fc = nn.Linear(hidden_size, inner_size)
        self.c_proj = nn.Linear(inner_size, hidden_size)
        self.act = activation(act)

    def forward(self, x: torch.Tensor, ops: TorchOps = TORCH_OPS,
                lora: LoraBatch = NO_LORA) -> torch.Tensor:  # no kernel replaces it
        # tensor parallelism: c_proj holds this rank's inner columns, the ranks' sums add up
        return ops.all_reduce(lora.project(self.c_proj, self.act(lora.project(self.c_fc, x))))


class GPT2Decoder(DecoderModel):
    """DecoderModel plus a learned position embedding added to the token embeddings."""

    def __init__(self, embed_tokens: nn.Module, wpe: nn.Embedding, layers: list[nn.Module], norm: nn.Module):
        super().__init__(embed_tokens, layers, norm, rotaries={})
        self.wpe = wpe

    def forward(self, hidden, attention_mask, position_ids, cache, output_hidden_states=False,
                ops: TorchOps = TORCH_OPS, lora: LoraBatch = NO_LORA):
        if position_ids is None:
            past_length = cache.get_seq_length() if cache is not None else 0
            position_ids = torch.arange(past_length, past_length + hidden.shape[1], device=hidden.device)[None]
        hidden = hidden + self.wpe(position_ids)
        return super().forward(hidden, attention_mask, position_ids, cache, output_hidden_states, ops, lora)


class GPT2LMHeadModel(CausalLM):
    def __init__(self, config: ModelConfig, attn_implementation: str = "sdpa"):
        super().__init__(config)
        hidden, eps = config.hidden_size, config.get("layer_norm_epsilon", 1e-5)
        inner = config.get("n_inner") or 4 * hidden
        act = config.get("activation_function", "gelu_new")
        layers = [PreNormBlock(self.attention(config, i, attn_implementation), GPT2MLP(hidden, inner, act),
                               LayerNorm(hidden, eps), LayerNorm(hidden, eps))
                  for i in range(config.num_hidden_layers)]
        positions = nn.Embedding(config.max_position_embeddings, hidden)
        self.model = GPT2Decoder(nn.Embedding(config.vocab_size, hidden), positions, layers, LayerNorm(hidden, eps))
        self.lm_head = nn.Linear(hidden, config.vocab_size, bias=False)
        self.tie_weights()

    @staticmethod
    def attention(config: ModelConfig, layer_idx: int, attn_implementation: str) -> Attention:
        heads = config.num_attention_heads
        head_dim = config.hidden_size // heads
        scaling = head_dim**-0.5 if config.get("scale_attn_weights", True) else 1.0
        if config.get("scale_attn_by_inverse_layer_idx", False):
            scaling /= layer_idx + 1
        return Attention(config.hidden_size, heads, heads, head_dim, layer_idx, qkv_bias=True, out_bias=True,
                         scaling=scaling, attn_implementation=attn_implementation)

    @classmethod
    def sanitize(cls, config: ModelConfig, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for name, tensor in weights.items():
            short = name.removeprefix("transformer.")
            if _CAUSAL_BUFFERS.match(short):
                continue
            if short in _TOP_NAMES:
                out[_TOP_NAMES[short]] = tensor
            elif (match := _LAYER_PARAM.match(short)) and match["module"] == "attn.c_attn":
                pieces = (tensor.t() if match["kind"] == "weight" else tensor).chunk(3, dim=0)
                for part, piece in zip(("q_proj", "k_proj", "v_proj"), pieces):
                    out[f"model.layers.{match['layer']}.self_attn.{part}.{match['kind']}"] = piece.contiguous()
            elif match and match["module"] in _LAYER_NAMES:
                target, transposed = _LAYER_NAMES[match["module"]]
                if transposed and match["kind"] == "weight":
                    tensor = tensor.t().contiguous()
                out[f"model.layers.{match['layer']}.{target}.{match['kind']}"] = tensor
            else:
                out[name] = tensor  # lm_head, or a stray name the strict check reports
        return super().sanitize(config, out)

    @classmethod
    def checkpoint_weights(cls, config: ModelConfig, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        weights = super().checkpoint_weights(config, weights)
        top = {module: checkpoint for checkpoint, module in _TOP_NAMES.items()}
        layer = {module: (checkpoint, transposed) for checkpoint, (module, transposed) in _LAYER_NAMES.items()}
        out = {}
        for name, tensor in weights.items():
            if name in top:
                out[f"transformer.{top[name]}"] = tensor
                continue
            match = re.match(r"^model\.layers\.(\d+)\.([\w.]+)\.(weight|bias)$", name)
            if match is None:
                out[name] = tensor
                continue
            index, module, kind = match.groups()
            if module == "self_attn.q_proj":
                parts = [weights[f"model.layers.{index}.self_attn.{p}.{kind}"] for p in ("q_proj", "k_proj", "v_proj")]
                fused = torch.cat(parts, dim=0)
                out[f"transformer.h.{index}.attn.c_attn.{kind}"] = fused.t().contiguous() if kind == "weight" else fused
            elif module in layer:
                checkpoint, transposed = layer[module]
                tensor = tensor.t().contiguous() if transposed and kind == "weight" else tensor
                out[f"transformer.h.{index}.{checkpoint}.{kind}"] = tensor
        return out

    @classmethod
    def checkpoint_config(cls, config_dict: dict) -> dict:
        return {key: value for key, value in config_dict.items() if key not in _GENERIC_ONLY}


def gguf_config(m: Metadata, tensors: dict, read) -> dict:
    hidden, layers, heads = int(m("embedding_length")), int(m("block_count")), int(m("attention.head_count"))
    positions = int(m("context_length", tensors["position_embd.weight"].shape[0]))
    inner = m("feed_forward_length")
    eps = float(m("attention.layer_norm_epsilon", 1e-5))
    return {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": vocab_size(m, tensors),
        "n_embd": hidden, "n_layer": layers, "n_head": heads, "n_positions": positions, "n_ctx": positions,
        "n_inner": inner if inner and inner != 4 * hidden else None, "layer_norm_epsilon": eps,
        "activation_function": "gelu_new",
        # the same values under the generic names the rest of tokenmill reads
        "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": heads, "head_dim": hidden // heads, "intermediate_size": inner or 4 * hidden,
        "max_position_embeddings": positions, "hidden_act": "gelu_new",
        "tie_word_embeddings": "output.weight" not in tensors,
        **special_ids(m.metadata),
    }


GGUF_TOP = {"token_embd": "transformer.wte", "position_embd": "transformer.wpe",
            "output_norm": "transformer.ln_f", "output": "lm_head"}
GGUF_LAYER = {"attn_norm": "ln_1", "attn_qkv": "attn.c_attn", "attn_output": "attn.c_proj",
              "ffn_norm": "ln_2", "ffn_up": "mlp.c_fc", "ffn_down": "mlp.c_proj"}
# GPT-2's Conv1D keeps weights as (in, out); llama.cpp transposed them to (out, in)
GGUF = ArchSpec("gpt2", gguf_config, top_names=GGUF_TOP, layer_names=GGUF_LAYER, layer_prefix="transformer.h",
                transposed=frozenset({"attn_qkv", "attn_output", "ffn_up", "ffn_down"}))


FAMILY = Family("gpt2", GPT2LMHeadModel, gguf=GGUF)
