"""argmax (the C pass of the kernel sets that have it, the block-maxima path of kernels="torch") and block-maxima top-k equal torch's, including ties, NaN,
-inf rows and vocabularies that do not divide into blocks."""

import pytest
import torch

from tokenmill import kernels
from tokenmill.execution.ops import TORCH_OPS, ExactOps, NativeOps
from tokenmill.execution.policy import ExecutionPolicy
from tokenmill.generation.vocab_reduce import argmax_rows, topk_rows


def _rows(vocab, kind, generator):
    rows = torch.randn(5, vocab, generator=generator)
    if kind == "ties":
        rows = (rows * 2).round()  # many equal maxima: the first one must win
    elif kind == "nan":
        rows[1, vocab // 2] = rows[1, -1] = float("nan")
    elif kind == "-inf":
        rows[2] = float("-inf")
    return rows


@pytest.mark.parametrize("vocab", [49152, 50001, 151936, 4100, 96])
@pytest.mark.parametrize("kind", ["plain", "ties", "nan", "-inf"])
@pytest.mark.parametrize("ops", [NativeOps(), ExactOps(), TORCH_OPS], ids=["native", "exact", "torch"])
def test_argmax_rows_equals_torch(vocab, kind, ops):
    assert kernels.available()
    generator = torch.Generator().manual_seed(vocab)
    for _ in range(5):
        rows = _rows(vocab, kind, generator)
        assert torch.equal(argmax_rows(rows, ops), rows.argmax(-1))
        assert torch.equal(ops.argmax(rows), rows.argmax(-1))


def test_the_kernel_sets_with_c_kernels_take_the_c_argmax(monkeypatch):
    rows = torch.randn(3, 5000)
    calls = []
    monkeypatch.setattr(kernels, "argmax", lambda scores: calls.append(scores) or scores.argmax(-1))
    for ops in (NativeOps(), ExactOps()):
        assert torch.equal(argmax_rows(rows, ops), rows.argmax(-1))
    assert len(calls) == 2


def test_torch_kernels_never_touch_the_c_library(monkeypatch):
    """kernels="torch" means ATen only: greedy decoding must not build or load the C kernels."""
    def refuse(*args, **kwargs):
        raise AssertionError("the C kernels were used under kernels='torch'")

    for name in ("library", "argmax", "argmax_applies", "available"):
        monkeypatch.setattr(kernels, name, refuse)
    for vocab in (96, 50001):
        rows = torch.randn(4, vocab)
        assert torch.equal(argmax_rows(rows, TORCH_OPS), rows.argmax(-1))
        assert torch.equal(ExecutionPolicy(kernels="torch").ops.argmax(rows), rows.argmax(-1))


@pytest.mark.parametrize("vocab", [49152, 50001, 4100, 96])
@pytest.mark.parametrize("kind", ["plain", "ties", "-inf"])
@pytest.mark.parametrize("k", [1, 2, 5, 20])
def test_topk_rows_values_equal_torch_and_ids_point_at_them(vocab, kind, k):
    generator = torch.Generator().manual_seed(vocab + k)
    rows = _rows(vocab, kind, generator)
    values, ids = topk_rows(rows, k)
    assert torch.equal(values, rows.topk(k).values)
    assert torch.equal(rows.gather(1, ids), values)
    assert all(len(set(row)) == k for row in ids.tolist())  # no column twice (the clamped tail block)
