"""The Triton decode attention under TRITON_INTERPRET=1 (the CPU standing in for the GPU) against a float64
torch reference of the same softmax(scale q k^T) v: grouped kv heads, the paged pool read through slot tables,
the dynamic cache's [batch, kv_heads, columns, dim] tensors, padding masks, causal query rows, several context
splits. Bound: float32 accumulation over at most `columns` terms of |q||k| scale products, so the outputs agree
to a few float32 ulps of the values' magnitude (2e-5 relative here, on unit-scale data)."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported: it reads the variable once
pytest.importorskip("triton")
triton_attention = pytest.importorskip("tokenmill.kernels.triton_attention")

pytestmark = pytest.mark.triton


def _reference(q, keys, values, allowed, is_causal, scale):
    """q [b, h, q, d], keys/values [b, kvh, c, d] in float64; allowed [b, 1, q, c] bool or None."""
    batch, heads, queries, dim = q.shape
    group = heads // keys.shape[1]
    k = keys.double().repeat_interleave(group, 1)
    v = values.double().repeat_interleave(group, 1)
    scores = torch.einsum("bhqd,bhcd->bhqc", q.double(), k) * scale
    columns = k.shape[2]
    if allowed is None and is_causal:
        allowed = (torch.arange(columns)[None, :] <= columns - queries + torch.arange(queries)[:, None])[None, None]
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    out = torch.softmax(scores, -1).nan_to_num(0.0) @ v
    return out.transpose(1, 2).reshape(batch, queries, heads * dim)


@pytest.mark.parametrize("heads, kv_heads, queries, columns, dim", [
    (4, 2, 1, 37, 16), (8, 1, 3, 70, 32), (6, 6, 1, 1100, 16), (4, 2, 8, 20, 64)])
def test_paged_pool_through_slot_tables(heads, kv_heads, queries, columns, dim):
    torch.manual_seed(heads * columns)
    batch, slots_total = 2, 2 * columns + 16
    pool_k, pool_v = torch.randn(slots_total, kv_heads, dim), torch.randn(slots_total, kv_heads, dim)
    slots = torch.stack([torch.randperm(slots_total)[:columns] for _ in range(batch)])
    q = torch.randn(batch, heads, queries, dim)
    allowed = torch.ones(batch, 1, queries, columns, dtype=torch.bool)
    allowed[1, :, :, :5] = False  # the second row is left-padded
    allowed &= torch.arange(columns)[None, None, None, :] <= columns - queries + torch.arange(queries)[None, None, :, None]
    scale = dim ** -0.5
    got = triton_attention.attention(q, pool_k, pool_v, allowed, True, scale, slots)
    gathered_k = pool_k[slots].permute(0, 2, 1, 3)  # [b, kvh, c, d]
    gathered_v = pool_v[slots].permute(0, 2, 1, 3)
    torch.testing.assert_close(got.double(), _reference(q, gathered_k, gathered_v, allowed, True, scale),
                               rtol=2e-5, atol=2e-5)


def test_dynamic_cache_tensors_causal_and_half_precision():
    torch.manual_seed(1)
    q, keys, values = torch.randn(3, 8, 2, 32), torch.randn(3, 2, 50, 32), torch.randn(3, 2, 50, 32)
    got = triton_attention.attention(q, keys, values, None, True, 0.2)
    torch.testing.assert_close(got.double(), _reference(q, keys, values, None, True, 0.2), rtol=2e-5, atol=2e-5)
    half = triton_attention.attention(q.bfloat16(), keys.bfloat16(), values.bfloat16(), None, True, 0.2)
    assert half.dtype == torch.bfloat16  # bf16 in and out, float32 inside: within bf16's rounding of the inputs
    torch.testing.assert_close(half.double(), _reference(q.bfloat16(), keys.bfloat16(), values.bfloat16(), None,
                                                         True, 0.2), rtol=1e-2, atol=1e-2)


def test_what_it_serves():
    q = torch.randn(1, 4, 1, 16)
    assert triton_attention.applies(q, q, None)
    assert not triton_attention.applies(q, q, 50.0)  # softcap: SDPA / eager
    assert not triton_attention.applies(torch.randn(1, 4, 9, 16), q, None)  # a prefill: SDPA's kernels
