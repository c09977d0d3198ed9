"""The Triton decode attention under TRITON_INTERPRET=1 (the CPU standing in for the GPU) against a float64
torch reference of the same softmax(scale q k^T) v: grouped kv heads, the paged pool read through slot tables,
the dynamic cache's [batch, kv_heads, columns, dim] tensors, padding masks, causal query rows, several context
splits. Bound (`_assert_within_rounding`): tests/numerics.py's float32 rounding floor for two chained sums (q.k over
head_dim, p.v over the columns), scaled by the largest |v| times (1 + the largest |score|), since exp turns a
score's absolute error into a relative error of its weight; a bf16 result adds bf16's rounding of the output."""

from __future__ import annotations

import pytest
import torch
from numerics import UNIT_ROUNDOFF, rounding_floor

import triton  # noqa: E402,F401  (the test extra; on the CPU through its interpreter: tests/conftest.py)
from tokenmill.kernels import triton_attention  # noqa: E402

pytestmark = pytest.mark.triton


def _assert_within_rounding(got, expected, q, keys, values, scale):
    """got (the kernel) against expected (float64) within the bound of the module docstring."""
    columns, dim = keys.shape[-2] if keys.dim() == 4 else keys.shape[0], q.shape[-1]
    largest_score = scale * q.abs().max().item() * keys.abs().max().item() * dim
    magnitude = values.abs().max().item() * (1.0 + largest_score)
    allowed = rounding_floor(max(dim, columns), 2, got.numel(), magnitude)
    allowed += UNIT_ROUNDOFF[got.dtype] * expected.abs().max().item() if got.dtype != torch.float32 else 0.0
    error = (got.double() - expected).abs().max().item()
    assert error <= allowed, (error, allowed)


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
    _assert_within_rounding(got, _reference(q, gathered_k, gathered_v, allowed, True, scale), q, pool_k, pool_v,
                            scale)


def test_dynamic_cache_tensors_causal_and_half_precision():
    torch.manual_seed(1)
    q, keys, values = torch.randn(3, 8, 2, 32), torch.randn(3, 2, 50, 32), torch.randn(3, 2, 50, 32)
    got = triton_attention.attention(q, keys, values, None, True, 0.2)
    _assert_within_rounding(got, _reference(q, keys, values, None, True, 0.2), q, keys, values, 0.2)
    half = triton_attention.attention(q.bfloat16(), keys.bfloat16(), values.bfloat16(), None, True, 0.2)
    assert half.dtype == torch.bfloat16  # bf16 in and out, float32 inside: the reference reads the same bf16 inputs
    q, keys, values = q.bfloat16(), keys.bfloat16(), values.bfloat16()
    _assert_within_rounding(half, _reference(q, keys, values, None, True, 0.2), q, keys, values, 0.2)


def test_what_it_serves():
    q = torch.randn(1, 4, 1, 16)
    assert triton_attention.applies(q, q, None)
    assert not triton_attention.applies(q, q, 50.0)  # softcap: SDPA / eager
    assert not triton_attention.applies(torch.randn(1, 4, 9, 16), q, None)  # a prefill: SDPA's kernels
