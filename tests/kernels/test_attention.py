"""The attention kernel equals SDPA (torch's reference) for every layout the caches hand it: strided
[batch, kv_heads, columns, dim] views with spare columns, paged pools read by slot, padding and window masks,
grouped heads, several head sizes; each row is computed alone (batch invariance); and it declines what it
does not take."""

import pytest
import torch
from torch.nn import functional as F

from tokenmill import kernels

from numerics import agreement_tolerance

pytestmark = pytest.mark.skipif(not kernels.available(), reason="needs the compiled kernels (a C compiler)")



def tolerance(got: torch.Tensor, values: torch.Tensor, columns: int) -> float:
    """Two float32 attentions (the kernel's blocks, SDPA's): q.k over dim and p.v over columns summed in other
    orders, tests/numerics.py's agreement bound for two products; an output is an average of values, so max|values|
    scales it."""
    return agreement_tolerance(max(columns, got.shape[-1]), 2, got.numel(), float(values.abs().max()))


def reference(q, keys, values, allowed, is_causal):
    batch, heads, queries, dim = q.shape
    out = F.scaled_dot_product_attention(q, keys, values, attn_mask=allowed, is_causal=is_causal,
                                         scale=dim ** -0.5, enable_gqa=keys.shape[1] != heads)
    return out.transpose(1, 2).reshape(batch, queries, heads * dim)


def cache_like(batch, kv_heads, columns, dim, generator, spare=7):
    """Keys/values as the dynamic cache returns them: the first `columns` of a buffer with spare ones."""
    buffers = [torch.randn(batch, kv_heads, columns + spare, dim, generator=generator) for _ in range(2)]
    return [buffer[:, :, :columns] for buffer in buffers]


@pytest.mark.parametrize("batch,heads,kv_heads,queries,columns,dim", [
    (1, 9, 3, 1, 70, 64),    # SmolLM2 decode
    (8, 9, 3, 1, 333, 64),   # a batch, columns not a multiple of 16
    (3, 4, 1, 3, 33, 256),   # Gemma 3 270M's head size, a few queries (speculative verification)
    (2, 8, 8, 8, 17, 128),   # no grouping
    (2, 9, 3, 40, 40, 64),   # a prefill: several blocks of queries
    (1, 4, 2, 300, 300, 128),  # a longer prefill, blocks smaller than the default
    (2, 6, 2, 37, 90, 64),   # more columns than queries
])
@pytest.mark.parametrize("mask", ["none", "padding", "causal"])
def test_equals_sdpa(batch, heads, kv_heads, queries, columns, dim, mask):
    generator = torch.Generator().manual_seed(columns + dim)
    q = torch.randn(batch, heads, queries, dim, generator=generator)
    keys, values = cache_like(batch, kv_heads, columns, dim, generator)
    allowed, is_causal = None, False
    if mask == "padding":  # left padding per row, broadcast over queries as the mask builder makes it
        present = torch.arange(columns)[None, :] >= torch.randint(0, columns // 2, (batch, 1), generator=generator)
        allowed = present[:, None, None, :].expand(batch, 1, queries, columns)
    elif mask == "causal":
        is_causal = True
    got = kernels.attention(q, keys, values, allowed, is_causal, dim ** -0.5)
    expected = reference(q, keys, values, allowed, is_causal)
    torch.testing.assert_close(got, expected, atol=tolerance(got, values, columns), rtol=0)


def test_a_prefill_row_equals_the_row_attended_alone():
    """Rows attended in blocks of queries (a prefill) equal each query attended on its own, bit for bit, with
    a left-padded causal mask as the model builds it for a batch."""
    generator = torch.Generator().manual_seed(3)
    batch, heads, kv_heads, length, dim = 2, 9, 3, 45, 64
    q = torch.randn(batch, heads, length, dim, generator=generator)
    keys, values = cache_like(batch, kv_heads, length, dim, generator)
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    present = torch.arange(length)[None, :] >= torch.tensor([[0], [11]])
    allowed = (causal[None] & present[:, None, :])[:, None]
    together = kernels.attention(q, keys, values, allowed, False, 0.125)
    for position in (0, 5, 11, 30, length - 1):
        alone = kernels.attention(q[:, :, position:position + 1], keys, values,
                                  allowed[:, :, position:position + 1], False, 0.125)
        assert torch.equal(alone[:, 0], together[:, position])
    torch.testing.assert_close(together[1:, 11:], reference(q[1:, :, 11:], keys[1:, :, 11:], values[1:, :, 11:],
                                                            None, True)[:, :],
                               atol=tolerance(together, values, length), rtol=0)


def test_paged_pool_rows_read_by_slot_equal_the_gathered_context():
    generator = torch.Generator().manual_seed(5)
    batch, heads, kv_heads, columns, dim = 4, 9, 3, 50, 64
    pool_keys, pool_values = (torch.randn(300, kv_heads, dim, generator=generator) for _ in range(2))
    slots = torch.randint(0, 300, (batch, columns), generator=generator)
    q = torch.randn(batch, heads, 1, dim, generator=generator)
    allowed = (torch.arange(columns) >= torch.tensor([[0], [3], [10], [49]]))[:, None, None, :]

    def gathered(pool):
        return pool.index_select(0, slots.reshape(-1)).view(batch, columns, kv_heads, dim).transpose(1, 2)

    got = kernels.attention(q, pool_keys, pool_values, allowed, False, dim ** -0.5, slots=slots)
    expected = reference(q, gathered(pool_keys), gathered(pool_values), allowed, False)
    torch.testing.assert_close(got, expected, atol=tolerance(got, pool_values, columns), rtol=0)


def test_a_row_does_not_depend_on_its_batch():
    generator = torch.Generator().manual_seed(11)
    q = torch.randn(6, 9, 1, 64, generator=generator)
    keys, values = cache_like(6, 3, 200, 64, generator)
    together = kernels.attention(q, keys, values, None, False, 0.125)
    for row in range(6):
        alone = kernels.attention(q[row:row + 1], keys[row:row + 1], values[row:row + 1], None, False, 0.125)
        assert torch.equal(alone[0], together[row])


def test_masked_keys_carry_no_weight_even_when_huge():
    generator = torch.Generator().manual_seed(2)
    q = torch.randn(1, 2, 1, 16, generator=generator)
    keys, values = cache_like(1, 2, 40, 16, generator)
    allowed = torch.ones(1, 1, 1, 40, dtype=torch.bool)
    allowed[..., :10] = False
    keys[..., :10, :] = 1e4  # would dominate the softmax if read
    values[..., :10, :] = float("nan")
    got = kernels.attention(q, keys, values, allowed, False, 0.25)
    torch.testing.assert_close(got, reference(q, keys[..., 10:, :], values[..., 10:, :], None, False),
                               atol=tolerance(got, values[..., 10:, :], 40), rtol=0)


def test_declines_what_it_does_not_take():
    q, keys = torch.randn(1, 4, 1, 64), torch.randn(1, 2, 10, 64)
    assert kernels.attention_applies(q, keys, softcap=None)
    assert not kernels.attention_applies(q, keys, softcap=50.0)  # Gemma 2's soft-capping: the eager path
    assert not kernels.attention_applies(torch.randn(1, 4, 1, 40), torch.randn(1, 2, 10, 40), None)  # dim % 16
    assert not kernels.attention_applies(q.double(), keys.double(), None)
