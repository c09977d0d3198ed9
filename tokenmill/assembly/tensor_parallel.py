"""A loaded model cut into one rank's share of a tensor-parallel group (Megatron's layout).

q/k/v and gate/up are split by output rows (column-parallel: each rank computes its heads / its slice of the
intermediate width), o_proj and down_proj by input columns (row-parallel: each rank's partial sums, added by one
all-reduce, `ops.all_reduce`), MoE experts by their intermediate width, the embedding and LM head by vocabulary
rows. Attention is split along key/value-head groups: with at least as many KV heads as ranks each rank takes a
contiguous range of KV heads and their query heads (uneven when the count does not divide, e.g. SmolLM2's 3 KV
heads over 2 ranks); with fewer, each KV head is replicated on size/kv ranks, which split its query heads.
GGUF blocks are split by whole rows, and by columns only on block boundaries (else a clear refusal).
Each rank keeps copies of its slices only; the full tensors it was loaded from are freed.
"""

from __future__ import annotations

import torch
from torch import nn

from ..execution.parallel import Collectives, TensorParallelError, check_tp_size, shard_range
from ..kernels.gguf_types import TYPES
from ..layers.attention import Attention
from ..layers.mlp import GatedMLP
from ..layers.moe import Experts, SparseMoeBlock
from ..layers.parallel import VocabParallelEmbedding, VocabParallelHead
from ..layers.permuted_linear import PermutedLinear
from ..layers.quantized_linear import QuantizedEmbedding, QuantizedLinear, QuantizedWeight, dense_copy


def shard_model(model: nn.Module, collectives: Collectives) -> nn.Module:
    """Cut `model` (a CausalLM, loaded whole) into rank `collectives.rank`'s share, in place, and make its
    execution policy tensor-parallel over `collectives`; a group of one leaves it unchanged."""
    if collectives.size == 1:
        return model
    config = model.config
    heads = config.num_attention_heads
    kv_heads = config.get("num_key_value_heads") or heads
    check_tp_size(collectives.size, heads, kv_heads)
    _check_supported(model)
    rank, size = collectives.rank, collectives.size
    for module in list(model.modules()):
        if isinstance(module, Attention):
            _shard_attention(module, rank, size)
        elif isinstance(module, GatedMLP):
            _shard_mlp(module, rank, size)
        elif isinstance(module, Experts):
            _shard_experts(module, rank, size)
        elif hasattr(module, "tensor_parallel_pair"):
            _shard_pair(module, rank, size)
    _shard_vocabulary(model, collectives)
    model.fuse_projections()
    model.execution_policy = model.execution_policy.with_collectives(collectives)
    return model


def _check_supported(model: nn.Module) -> None:
    if model.lora_adapters.names():
        raise TensorParallelError("LoRA adapters are not supported with tensor parallelism yet; load without them")
    for index, layer in enumerate(model.model.layers):
        attention, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        mlp_splits = isinstance(mlp, (GatedMLP, SparseMoeBlock)) or hasattr(mlp, "tensor_parallel_pair")
        if not isinstance(attention, Attention) or not mlp_splits:
            raise TensorParallelError(
                f"tensor parallelism supports decoders built from the shared attention and gated/MoE MLP layers "
                f"(every family tokenmill runs); {type(model).__name__} layer {index} has "
                f"{type(attention).__name__} / {type(mlp).__name__}")


def _head_ranges(heads: int, kv_heads: int, rank: int, size: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(query heads, key/value heads) [start, end) of this rank."""
    group = heads // kv_heads
    if size <= kv_heads:
        kv_start, kv_end = shard_range(kv_heads, rank, size)
        return (kv_start * group, kv_end * group), (kv_start, kv_end)
    per_rank = heads // size
    kv_index = rank // (size // kv_heads)
    return (rank * per_rank, (rank + 1) * per_rank), (kv_index, kv_index + 1)


def _shard_attention(attention: Attention, rank: int, size: int) -> None:
    (q_start, q_end), (kv_start, kv_end) = _head_ranges(attention.num_heads, attention.num_kv_heads, rank, size)
    dim = attention.head_dim
    attention.q_proj = _rows(attention.q_proj, q_start * dim, q_end * dim)
    attention.k_proj = _rows(attention.k_proj, kv_start * dim, kv_end * dim)
    attention.v_proj = _rows(attention.v_proj, kv_start * dim, kv_end * dim)
    attention.o_proj = _columns(attention.o_proj, q_start * dim, q_end * dim, keep_bias=rank == 0)
    attention.num_heads, attention.num_kv_heads = q_end - q_start, kv_end - kv_start
    attention._qkv = None


def _shard_mlp(mlp: GatedMLP, rank: int, size: int) -> None:
    start, end = _block_aligned_range(mlp.down_proj, rank, size)
    mlp.gate_proj = _rows(mlp.gate_proj, start, end)
    mlp.up_proj = _rows(mlp.up_proj, start, end)
    mlp.down_proj = _columns(mlp.down_proj, start, end, keep_bias=rank == 0)
    mlp._gate_up = None


def _shard_experts(experts: Experts, rank: int, size: int) -> None:
    width = experts.down_proj.shape[-1]
    start, end = shard_range(width, rank, size)
    gate, up = experts.gate_up_proj.detach().split(width, dim=1)
    experts.gate_up_proj = nn.Parameter(torch.cat([gate[:, start:end], up[:, start:end]], dim=1).clone(),
                                        requires_grad=False)
    experts.down_proj = nn.Parameter(experts.down_proj.detach()[..., start:end].clone(), requires_grad=False)


def _shard_pair(mlp: nn.Module, rank: int, size: int) -> None:
    """An MLP of two projections (GPT-2's c_fc, c_proj): the first split by rows, the second by columns."""
    first, second = mlp.tensor_parallel_pair
    start, end = _block_aligned_range(getattr(mlp, second), rank, size)
    setattr(mlp, first, _rows(getattr(mlp, first), start, end))
    setattr(mlp, second, _columns(getattr(mlp, second), start, end, keep_bias=rank == 0))


def _block_aligned_range(module: nn.Module, rank: int, size: int) -> tuple[int, int]:
    """This rank's share of `module`'s input columns, in whole GGUF blocks when it holds blocks."""
    blocks = isinstance(module, QuantizedLinear) and not isinstance(module, PermutedLinear)
    unit = TYPES[module.ggml_type].block_elements if blocks else 1
    start, end = shard_range(module.in_features // unit, rank, size)
    return start * unit, end * unit


def _rows(module: nn.Module, start: int, end: int) -> nn.Module:
    """A copy of the output rows [start, end) of a Linear or QuantizedLinear."""
    if isinstance(module, PermutedLinear):
        return module.rows(start, end)
    if isinstance(module, QuantizedLinear):
        shard = QuantizedLinear(QuantizedWeight(module.blocks[start:end].clone(), module.ggml_type,
                                                module.in_features), bias=module.bias is not None)
        if module.bias is not None:
            shard.bias = nn.Parameter(module.bias.detach()[start:end].clone(), requires_grad=False)
        return shard
    return _linear(module.weight.detach()[start:end], None if module.bias is None else module.bias.detach()[start:end])


def _columns(module: nn.Module, start: int, end: int, keep_bias: bool) -> nn.Module:
    """A copy of the input columns [start, end) of a Linear or QuantizedLinear; the bias on one rank only, as
    the ranks' outputs are summed. A PermutedLinear's columns are scattered over its blocks: its shard is float."""
    if isinstance(module, PermutedLinear):
        module = dense_copy(module)
    bias = module.bias.detach().clone() if module.bias is not None and keep_bias else None
    if module.bias is not None and not keep_bias:
        bias = torch.zeros_like(module.bias.detach())
    if isinstance(module, QuantizedLinear):
        block = TYPES[module.ggml_type]
        if start % block.block_elements or end % block.block_elements:
            raise TensorParallelError(
                f"cannot split a {block.name} weight's {module.in_features} input columns at [{start}, {end}): "
                f"{block.name} blocks hold {block.block_elements} columns and a split must fall between blocks; "
                f"choose another tensor_parallel_size, or load with keep_quantized=False")
        first, last = start // block.block_elements * block.block_bytes, end // block.block_elements * block.block_bytes
        shard = QuantizedLinear(QuantizedWeight(module.blocks[:, first:last].clone(), module.ggml_type, end - start),
                                bias=bias is not None)
        if bias is not None:
            shard.bias = nn.Parameter(bias, requires_grad=False)
        return shard
    return _linear(module.weight.detach()[:, start:end], bias)


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    linear.weight = nn.Parameter(weight.clone(), requires_grad=False)
    if bias is not None:
        linear.bias = nn.Parameter(bias.clone(), requires_grad=False)
    return linear


def _shard_vocabulary(model: nn.Module, collectives: Collectives) -> None:
    """Each rank's range of vocabulary rows in the embedding and the head (tied: one shared shard)."""
    rank, size = collectives.rank, collectives.size
    embed = model.model.embed_tokens
    vocab = embed.num_embeddings
    widths = [end - start for start, end in (shard_range(vocab, r, size) for r in range(size))]
    start, end = shard_range(vocab, rank, size)
    if isinstance(embed, QuantizedEmbedding):
        local = QuantizedEmbedding(QuantizedWeight(embed.blocks[start:end].clone(), embed.ggml_type,
                                                   embed.embedding_dim))
    else:
        local = nn.Embedding.from_pretrained(embed.weight.detach()[start:end].clone(), freeze=True)
    model.model.embed_tokens = VocabParallelEmbedding(local, start, end, vocab, collectives)
    if model.config.tie_word_embeddings:
        head = local.as_linear() if isinstance(local, QuantizedEmbedding) else _tied_linear(local)
    else:
        head = _rows(model.lm_head, *shard_range(model.lm_head.out_features, rank, size))
    model.lm_head = VocabParallelHead(head, widths, collectives)


def _tied_linear(embedding: nn.Embedding) -> nn.Linear:
    linear = nn.Linear(embedding.embedding_dim, embedding.num_embeddings, bias=False, device="meta")
    linear.weight = embedding.weight
    return linear
