"""Decode attention in Triton (CUDA; on the CPU only under TRITON_INTERPRET=1, for the tests).

The same contract as the C kernel (kernels.attention): q [batch, heads, queries, dim] with a few queries per row
(decode steps, speculative verification), keys/values either [batch, kv_heads, columns, dim] (the dynamic and
static caches) or the paged pool [slots, kv_heads, dim] read in place through `slots` [batch, columns] (the
engine's block tables, no gathered copy). One program per (row, kv head, context split): it loads each key and
value block once for all the query heads of that kv head (grouped-query attention), keeps a running softmax
(max, sum, weighted values) over its split, and the splits (flash-decoding: long contexts spread over more
programs) are merged in float32 afterwards.
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # the `triton` extra; CUDA attention then runs SDPA
    triton = None

MAX_QUERIES = 8  # more query rows (a prefill) go to SDPA's flash / memory-efficient kernels
SPLIT_COLUMNS = 512  # context columns per program: a long context runs as several programs per (row, kv head)


def available() -> bool:
    return triton is not None


def applies(q: torch.Tensor, keys: torch.Tensor, softcap: float | None) -> bool:
    """Whether `attention` serves this call: Triton present, a CUDA tensor (or the interpreter), no softcap,
    a few queries, a head_dim of at least 16."""
    on_device = q.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"
    return (triton is not None and on_device and softcap is None and q.shape[2] <= MAX_QUERIES
            and q.shape[-1] >= 16 and q.dtype in (torch.float32, torch.float16, torch.bfloat16))


if triton is not None:
    @triton.jit
    def _attend_split(q_ptr, k_ptr, v_ptr, slots_ptr, allowed_ptr, acc_ptr, max_ptr, sum_ptr,
                      columns, queries, scale,
                      sq_b, sq_h, sq_q, sk_b, sk_s, sk_h, sv_b, sv_s, sv_h, ss_b, sa_b, sa_q,
                      GROUP: tl.constexpr, DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
                      BLOCK_N: tl.constexpr, SPLIT: tl.constexpr, HAS_ALLOWED: tl.constexpr,
                      CAUSAL: tl.constexpr):
        row, kv_head, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        splits = tl.num_programs(2)
        m = tl.arange(0, BLOCK_M)  # (query, head in the group) pairs: query = m // GROUP
        d = tl.arange(0, BLOCK_D)
        query, head = m // GROUP, kv_head * GROUP + m % GROUP
        m_valid = query < queries
        d_valid = d < DIM
        q = tl.load(q_ptr + row * sq_b + head[:, None] * sq_h + query[:, None] * sq_q + d[None, :],
                    mask=m_valid[:, None] & d_valid[None, :], other=0.0).to(tl.float32)
        running_max = tl.full((BLOCK_M,), -1.0e30, tl.float32)
        running_sum = tl.zeros((BLOCK_M,), tl.float32)
        acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
        begin = split * SPLIT
        end = tl.minimum(begin + SPLIT, columns)
        for offset in range(0, SPLIT, BLOCK_N):
            n = begin + offset + tl.arange(0, BLOCK_N)
            n_valid = n < end
            slot = tl.load(slots_ptr + row * ss_b + n, mask=n_valid, other=0)
            kv_mask = n_valid[:, None] & d_valid[None, :]
            k = tl.load(k_ptr + row * sk_b + slot[:, None] * sk_s + kv_head * sk_h + d[None, :], mask=kv_mask,
                        other=0.0).to(tl.float32)
            v = tl.load(v_ptr + row * sv_b + slot[:, None] * sv_s + kv_head * sv_h + d[None, :], mask=kv_mask,
                        other=0.0).to(tl.float32)
            scores = tl.dot(q, tl.trans(k), input_precision="ieee") * scale
            visible = m_valid[:, None] & n_valid[None, :]
            if HAS_ALLOWED:
                allowed = tl.load(allowed_ptr + row * sa_b + query[:, None] * sa_q + n[None, :],
                                  mask=visible, other=0)
                visible = visible & (allowed != 0)
            if CAUSAL:  # right-aligned: the row's queries are its last `queries` columns
                visible = visible & (n[None, :] <= columns - queries + query[:, None])
            scores = tl.where(visible, scores, float("-inf"))
            new_max = tl.maximum(running_max, tl.max(scores, 1))
            rescale = tl.exp(running_max - new_max)
            weights = tl.exp(scores - new_max[:, None])
            running_sum = running_sum * rescale + tl.sum(weights, 1)
            acc = acc * rescale[:, None] + tl.dot(weights, v, input_precision="ieee")
            running_max = new_max
        out = (row * tl.num_programs(1) + kv_head) * splits + split
        tl.store(acc_ptr + (out * BLOCK_M + m[:, None]) * BLOCK_D + d[None, :], acc)
        tl.store(max_ptr + out * BLOCK_M + m, running_max)
        tl.store(sum_ptr + out * BLOCK_M + m, running_sum)


def attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, allowed: torch.Tensor | None,
              is_causal: bool, scale: float, slots: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(scale * q k^T) v as [batch, queries, heads * dim], in q's dtype (see the module docstring).
    allowed: bool broadcastable to [batch, 1, queries, columns], or None (all visible, or causal if is_causal)."""
    batch, heads, queries, dim = q.shape
    if slots is None:  # [batch, kv_heads, columns, dim]: column j of row b is "slot" j of that row's own tensor
        kv_heads, columns = keys.shape[1], keys.shape[2]
        slots = torch.arange(columns, device=q.device).expand(batch, columns)
        k_strides = (keys.stride(0), keys.stride(2), keys.stride(1))
        v_strides = (values.stride(0), values.stride(2), values.stride(1))
    else:  # the pool [slots, kv_heads, dim], shared by every row
        kv_heads, columns = keys.shape[1], slots.shape[1]
        k_strides = (0, keys.stride(0), keys.stride(1))
        v_strides = (0, values.stride(0), values.stride(1))
    if keys.stride(-1) != 1 or values.stride(-1) != 1:
        raise ValueError("the Triton attention reads keys and values with a unit stride along head_dim")
    group = heads // kv_heads
    slots = slots.to(torch.int64).contiguous()
    if allowed is not None:
        allowed = allowed.expand(batch, 1, queries, columns).reshape(batch, queries, columns).to(torch.int8)
        allowed = allowed.contiguous()
    block_m = max(16, triton.next_power_of_2(queries * group))
    block_d = max(16, triton.next_power_of_2(dim))
    block_n = 16 if q.device.type == "cpu" else 64
    # a power of two (few compiled variants), at most SPLIT_COLUMNS: short contexts run one short program
    split_columns = max(block_n, min(SPLIT_COLUMNS, triton.next_power_of_2(columns)))
    splits = -(-columns // split_columns)
    partial = torch.empty((batch, kv_heads, splits, block_m, block_d), dtype=torch.float32, device=q.device)
    maxima = torch.empty((batch, kv_heads, splits, block_m), dtype=torch.float32, device=q.device)
    sums = torch.empty_like(maxima)
    _attend_split[(batch, kv_heads, splits)](
        q, keys, values, slots, allowed if allowed is not None else slots, partial, maxima, sums,
        columns, queries, scale,
        q.stride(0), q.stride(1), q.stride(2), *k_strides, *v_strides, slots.stride(0),
        allowed.stride(0) if allowed is not None else 0, allowed.stride(1) if allowed is not None else 0,
        GROUP=group, DIM=dim, BLOCK_M=block_m, BLOCK_D=block_d, BLOCK_N=block_n, SPLIT=split_columns,
        HAS_ALLOWED=allowed is not None, CAUSAL=allowed is None and is_causal)
    top = maxima.max(dim=2, keepdim=True).values
    weight = torch.exp(maxima - top)  # each split's share, on the common maximum
    total = (sums * weight).sum(dim=2)
    merged = (partial * weight[..., None]).sum(dim=2) / total.clamp_min(torch.finfo(torch.float32).tiny)[..., None]
    rows = merged[:, :, :queries * group, :dim].reshape(batch, kv_heads, queries, group, dim)
    return rows.permute(0, 2, 1, 3, 4).reshape(batch, queries, heads * dim).to(q.dtype)
