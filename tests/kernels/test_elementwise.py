"""The row-wise C kernels (elementwise.c) against torch and float64, and the conditions under which they serve."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from tokenmill import kernels
from tokenmill.execution.ops import NativeOps
from tokenmill.layers.norm import RMSNorm

from numerics import agreement_tolerance


def float64_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, unit_offset: bool) -> torch.Tensor:
    x64 = x.double()
    scale = (1.0 + weight.double()) if unit_offset else weight.double()
    return x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + eps) * scale


@pytest.mark.parametrize("shape", [(1, 1, 576), (8, 1, 576), (1, 300, 640), (3, 7, 64), (2, 5, 19)])
@pytest.mark.parametrize("unit_offset", [False, True])
def test_rms_norm_matches_torch_and_float64(shape, unit_offset):
    generator = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=generator) * 3
    weight = torch.randn(shape[-1], generator=generator)
    ours = kernels.rms_norm(x, weight, 1e-6, unit_offset)
    torch_weight = 1.0 + weight if unit_offset else weight
    # torch sums the squares in float32, the kernel in double: one reduction of length K scaling x*w, so
    # tests/numerics.py's agreement bound for two runs of one product
    scale = float((x.abs() * torch_weight.abs()).max())
    torch.testing.assert_close(ours, F.rms_norm(x, (shape[-1],), torch_weight, 1e-6),
                               atol=agreement_tolerance(shape[-1], 1, ours.numel(), scale), rtol=0)
    error = (ours.double() - float64_rms_norm(x, weight, 1e-6, unit_offset)).abs()
    assert float(error.max()) <= 2 * float(torch.finfo(torch.float32).eps * (x.abs() * torch_weight.abs()).max())


def test_rms_norm_rows_do_not_depend_on_the_batch():
    x = torch.randn(16, 576)
    weight = torch.randn(576)
    together = kernels.rms_norm(x, weight, 1e-5)
    alone = torch.cat([kernels.rms_norm(x[i:i + 1], weight, 1e-5) for i in range(16)])
    assert torch.equal(together, alone)


def test_rms_norm_applies_only_to_float32_cpu_inference():
    weight = torch.ones(8)
    assert kernels.rms_norm_applies(torch.randn(2, 8), weight)
    assert not kernels.rms_norm_applies(torch.randn(2, 8, dtype=torch.float64), weight.double())
    assert not kernels.rms_norm_applies(torch.randn(2, 8, dtype=torch.bfloat16), weight)
    assert not kernels.rms_norm_applies(torch.randn(8, 2).t(), weight)  # not contiguous
    assert not kernels.rms_norm_applies(torch.randn(2, 8, requires_grad=True), weight)
    with torch.no_grad():
        assert kernels.rms_norm_applies(torch.randn(2, 8, requires_grad=True), weight)


def test_rms_norm_module_uses_the_kernel_only_when_asked(monkeypatch):
    norm = RMSNorm(8, eps=1e-6).requires_grad_(False)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(8))
    calls = []
    real = kernels.rms_norm
    monkeypatch.setattr(kernels, "rms_norm", lambda *args: calls.append(args) or real(*args))
    x = torch.randn(4, 8)
    assert torch.equal(norm(x), F.rms_norm(x, (8,), norm.weight, 1e-6)) and not calls  # default: torch's bits
    native = NativeOps()
    scale = float((x.abs() * norm.weight.abs()).max())  # one length-8 reduction, two orders: tests/numerics.py
    atol = agreement_tolerance(8, 1, x.numel(), scale)
    torch.testing.assert_close(norm(x, native), F.rms_norm(x, (8,), norm.weight, 1e-6), atol=atol, rtol=0)
    assert len(calls) == 1
    strided = torch.randn(8, 4).t()
    assert torch.equal(norm(strided, native), F.rms_norm(strided, (8,), norm.weight, 1e-6))  # torch's own op on the same input
    assert len(calls) == 1  # not contiguous: torch's path
    trainable = RMSNorm(8, eps=1e-6)
    x = torch.randn(4, 8, requires_grad=True)
    trainable(x, native).sum().backward()  # autograd: torch's differentiable path
    assert x.grad is not None and len(calls) == 1
