"""Mixture of experts: a top-k softmax router, experts stored as stacked tensors, an optional shared expert.

Checkpoints keep one Linear per expert (`experts.<e>.<name>.weight`); the module keeps them stacked
(`experts.gate_up_proj` [E, 2*I, H], `experts.down_proj` [E, H, I]) as transformers v5 and the GGUF
loader do. `fuse_expert_weights` / `split_expert_weights` convert between the two layouts.

LoRA reaches the stacked experts and the router's weight as bare parameters (`lora_parameters`, in the order
the modules register them, as transformers' do: peft nests its wrappers in that order), through
`LoraBatch.project_parameter`; the batch's row selection is flattened to token rows by the block.
"""

from __future__ import annotations

import re

import torch
from torch import nn
from torch.nn import functional as F

from ..execution.ops import TORCH_OPS, TorchOps
from .lora import NO_LORA, LoraBatch
from .mlp import activation

_PER_EXPERT = re.compile(r"^(?P<prefix>.+\.experts)\.(?P<expert>\d+)\.(?P<proj>\w+)\.weight$")


class TopKRouter(nn.Module):
    """Softmax over every expert in float32, keep the k largest; `normalize` rescales them to sum to 1."""

    lora_parameters = ("weight",)

    def __init__(self, hidden_size: int, num_experts: int, top_k: int, normalize: bool):
        super().__init__()
        if not 0 < top_k <= num_experts:
            raise ValueError(f"num_experts_per_tok ({top_k}) must be in 1..num_experts ({num_experts})")
        self.weight = nn.Parameter(torch.empty(num_experts, hidden_size))
        self.top_k = top_k
        self.normalize = normalize

    def forward(self, tokens: torch.Tensor, lora: LoraBatch = NO_LORA) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens [n, hidden] → (routing weights [n, k] in the activation dtype, expert ids [n, k]); `lora`'s
        rows are token rows."""
        probs = torch.softmax(lora.project_parameter(self, "weight", tokens).float(), dim=-1)
        top_weights, top_ids = torch.topk(probs, self.top_k, dim=-1)
        if self.normalize:
            top_weights = top_weights / top_weights.sum(dim=-1, keepdim=True)
        return top_weights.to(tokens.dtype), top_ids


class Experts(nn.Module):
    """E gated MLPs; each token runs only through the experts the router picked for it."""

    lora_parameters = ("gate_up_proj", "down_proj")

    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int, act: str = "silu"):
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.empty(num_experts, 2 * intermediate_size, hidden_size))
        self.down_proj = nn.Parameter(torch.empty(num_experts, hidden_size, intermediate_size))
        self.act = activation(act)

    def forward(self, tokens: torch.Tensor, expert_ids: torch.Tensor, weights: torch.Tensor,
                lora: LoraBatch = NO_LORA) -> torch.Tensor:
        """`lora`'s rows are token rows."""
        out = torch.zeros_like(tokens)
        for expert in expert_ids.unique().tolist():
            token_rows, slots = torch.where(expert_ids == expert)
            gate, up = lora.project_parameter(self, "gate_up_proj", tokens[token_rows], expert,
                                              token_rows).chunk(2, dim=-1)
            expert_out = lora.project_parameter(self, "down_proj", self.act(gate) * up, expert, token_rows)
            out.index_add_(0, token_rows, expert_out * weights[token_rows, slots, None])
        return out


class SparseMoeBlock(nn.Module):
    """Routed experts, plus (Qwen2-MoE) a shared expert scaled by sigmoid(shared_expert_gate(x))."""

    lora_targets = ("shared_expert_gate",)  # the shared expert's own projections are its GatedMLP's

    def __init__(self, gate: TopKRouter, experts: Experts, shared_expert: nn.Module | None = None,
                 shared_expert_gate: nn.Module | None = None):
        super().__init__()
        self.gate = gate
        self.experts = experts
        self.shared_expert = shared_expert
        self.shared_expert_gate = shared_expert_gate

    def forward(self, hidden: torch.Tensor, ops: TorchOps = TORCH_OPS, lora: LoraBatch = NO_LORA) -> torch.Tensor:
        shape = hidden.shape
        tokens = hidden.reshape(-1, shape[-1])
        token_lora = lora.flattened(shape[1])  # rows of `tokens` are (batch row, position) pairs
        weights, expert_ids = self.gate(tokens, token_lora)
        # tensor parallelism: each rank's experts hold a slice of every expert's intermediate width
        out = ops.all_reduce(self.experts(tokens, expert_ids, weights, token_lora))
        if self.shared_expert is not None:
            shared = self.shared_expert(tokens, ops, token_lora)
            if self.shared_expert_gate is not None:
                shared = torch.sigmoid(token_lora.project(self.shared_expert_gate, tokens)) * shared
            out = out + shared
        return out.reshape(shape)


def fuse_expert_weights(weights: dict[str, torch.Tensor], gate: str, up: str, down: str) -> dict[str, torch.Tensor]:
    """`…experts.<e>.{gate,up,down}.weight` → `…experts.gate_up_proj` / `…experts.down_proj` (stacked)."""
    groups: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
    out = {}
    for name, tensor in weights.items():
        match = _PER_EXPERT.match(name)
        if match is None or match["proj"] not in (gate, up, down):
            out[name] = tensor
            continue
        groups.setdefault(match["prefix"], {}).setdefault(int(match["expert"]), {})[match["proj"]] = tensor
    for prefix, experts in groups.items():
        count = len(experts)
        if sorted(experts) != list(range(count)) or any(len(parts) != 3 for parts in experts.values()):
            raise ValueError(f"{prefix}: expert weights are incomplete (need {gate}, {up}, {down} for 0..{count - 1})")
        ordered = [experts[e] for e in range(count)]
        out[f"{prefix}.gate_up_proj"] = torch.stack([torch.cat([p[gate], p[up]], dim=0) for p in ordered])
        out[f"{prefix}.down_proj"] = torch.stack([p[down] for p in ordered])
    return out


def split_expert_weights(weights: dict[str, torch.Tensor], gate: str, up: str, down: str) -> dict[str, torch.Tensor]:
    """The inverse of fuse_expert_weights: one Linear weight per expert, as checkpoints store them."""
    out = {}
    for name, tensor in weights.items():
        if name.endswith(".experts.gate_up_proj"):
            prefix = name[: -len(".gate_up_proj")]
            for expert, fused in enumerate(tensor):
                gate_rows, up_rows = fused.chunk(2, dim=0)
                out[f"{prefix}.{expert}.{gate}.weight"] = gate_rows.contiguous()
                out[f"{prefix}.{expert}.{up}.weight"] = up_rows.contiguous()
        elif name.endswith(".experts.down_proj"):
            prefix = name[: -len(".down_proj")]
            for expert, matrix in enumerate(tensor):
                out[f"{prefix}.{expert}.{down}.weight"] = matrix.contiguous()
        else:
            out[name] = tensor
    return out
