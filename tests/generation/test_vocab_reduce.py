"""argmax (the C pass and the block-maxima fallback) and block-maxima top-k equal torch's, including ties, NaN,
-inf rows and vocabularies that do not divide into blocks."""

import pytest
import torch

from tokenmill import kernels
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
@pytest.mark.parametrize("native", [True, False], ids=["kernel", "blocks"])
def test_argmax_rows_equals_torch(vocab, kind, native, monkeypatch):
    assert kernels.available()
    if not native:
        monkeypatch.setattr(kernels, "argmax_applies", lambda rows: False)
    generator = torch.Generator().manual_seed(vocab)
    for _ in range(5):
        rows = _rows(vocab, kind, generator)
        assert torch.equal(argmax_rows(rows), rows.argmax(-1))


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
