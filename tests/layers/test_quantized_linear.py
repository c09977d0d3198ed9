"""The block matmuls' switch to a dense GEMM, as the execution policy's GemmPlan sets it on SmolLM2 (Q4_1 / Q8_0):
which path each call takes, and that every path gives the block kernel's logits within tests/numerics.py's
agreement bound (two float32 runs of the same dequantized values, summed in different orders)."""

from __future__ import annotations

import json

import pytest
import torch

from numerics import assert_runs_agree, matmuls, reduction_len
from tokenmill import AutoModelForCausalLM
from tokenmill.execution.calibration import DEFAULT_RULE, GemmPlan, GemmRule, default_backend
from tokenmill.layers import quantized_linear
from tokenmill.layers.quantized_linear import DENSE_ABOVE_ROWS, QuantizedFusedProjection, gemm_runners

BLOCK_ONLY = GemmPlan("test: block", fallback=GemmRule(None, "onednn"))


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf):
    return AutoModelForCausalLM.from_pretrained(smollm2_gguf, progress=False, gemm_calibration=False)


def _layers(model):
    return [layer for layer, _, _ in quantized_linear._block_matmuls(model)]


def _logits(model, plan, ids):
    model.execution_policy = model.execution_policy.with_gemm(plan)
    with torch.no_grad():
        return model(ids).logits


def _dense_calls(monkeypatch) -> list[str]:
    calls, original = [], quantized_linear.dense_linear
    monkeypatch.setattr(quantized_linear, "dense_linear",
                        lambda x, w, b, backend: calls.append(backend) or original(x, w, b, backend))
    return calls


def test_calibration_off_is_the_constant_rule(smollm2, monkeypatch):
    """gemm_calibration=False: every block matmul dense above DENSE_ABOVE_ROWS, through oneDNN where torch has it."""
    policy = smollm2.execution_policy
    assert policy.gemm is not None and policy.gemm.source.startswith("off")
    assert all(layer.gemm_rule == DEFAULT_RULE == GemmRule(DENSE_ABOVE_ROWS, default_backend())
               for layer in _layers(smollm2))
    calls = _dense_calls(monkeypatch)
    with torch.no_grad():
        smollm2(torch.arange(3, 3 + DENSE_ABOVE_ROWS)[None])
        assert calls == []
        smollm2(torch.arange(3, 4 + DENSE_ABOVE_ROWS)[None])
    assert calls and set(calls) == {default_backend()}


def test_each_shape_gets_its_rule_and_the_fused_projections_theirs(smollm2):
    runners = gemm_runners(smollm2)
    # SmolLM2: fused q/k/v and gate/up, o and down per layer; the tied output head (Q8_0) last
    assert list(runners)[-1] == "49152x576:q8_0:f32"
    assert set(runners) == {"960x576:q4_1:f32", "3072x576:q4_1:f32", "576x576:q4_1:f32", "576x1536:q4_1:f32",
                            "49152x576:q8_0:f32"}
    gate_up = GemmRule(32, "torch")
    plan = GemmPlan("test", (("3072x576:q4_1:f32", gate_up),), fallback=GemmRule(None, "onednn"))
    smollm2.execution_policy = smollm2.execution_policy.with_gemm(plan)
    fused = [layer for layer in _layers(smollm2) if isinstance(layer, QuantizedFusedProjection)]
    assert len(fused) == 2 * smollm2.config.num_hidden_layers
    for layer in _layers(smollm2):
        expected = gate_up if layer.weight.shape[0] == 3072 else GemmRule(None, "onednn")
        assert layer.gemm_rule == expected
    smollm2.execution_policy = smollm2.execution_policy.with_gemm(None)
    assert all(layer.gemm_rule == DEFAULT_RULE for layer in _layers(smollm2))


@pytest.mark.parametrize("backend", ["onednn", "torch"])
def test_dense_at_every_row_count_stays_within_the_bound_of_the_block_kernel(smollm2, monkeypatch, backend):
    ids = torch.randint(3, 40000, (2, 40), generator=torch.Generator().manual_seed(7))
    expected = _logits(smollm2, BLOCK_ONLY, ids)
    calls = _dense_calls(monkeypatch)
    actual = _logits(smollm2, GemmPlan("test: dense", fallback=GemmRule(0, backend)), ids)
    assert calls and set(calls) == {backend}
    assert_runs_agree(actual, expected, reduction_len(smollm2.config, ids.shape[1]), matmuls(smollm2.config),
                      f"dense via {backend} against the block kernel")
    smollm2.execution_policy = smollm2.execution_policy.with_gemm(None)


def test_a_calibrated_load_measures_caches_and_stays_within_the_bound(smollm2_gguf, tmp_path, monkeypatch):
    """Calibration on (as outside the tests): whatever this machine's timings chose, each layer runs its plan's
    rule and the logits of a prompt past every threshold measured agree with the block kernel's."""
    monkeypatch.setenv("TOKENMILL_CACHE", str(tmp_path))
    monkeypatch.setenv("TOKENMILL_GEMM_CALIBRATION_BUDGET", "0")  # one row count of one shape: bounded test time
    model = AutoModelForCausalLM.from_pretrained(smollm2_gguf, progress=False, gemm_calibration=True)
    plan = model.execution_policy.gemm
    assert plan.source.startswith("calibrated") and list(tmp_path.glob("kernels/gemm-*.json"))
    for layer, weight, integer in quantized_linear._block_matmuls(model):
        assert layer.gemm_rule == plan.rule(quantized_linear._key(weight, integer))
    ids = torch.randint(3, 40000, (1, 140), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        calibrated = model(ids, logits_to_keep=0).logits
    block = _logits(model, BLOCK_ONLY, ids)
    assert_runs_agree(calibrated, block, reduction_len(model.config, ids.shape[1]), matmuls(model.config),
                      "calibrated dispatch against the block kernel")
    cache = next(tmp_path.glob("kernels/gemm-*.json"))
    first_shape = next(iter(gemm_runners(model)))
    timed = json.loads(cache.read_text())["shapes"][first_shape]["ms"]["512"]
    reloaded = AutoModelForCausalLM.from_pretrained(smollm2_gguf, progress=False, gemm_calibration=True)
    assert reloaded.execution_policy.gemm.rules[:len(plan.rules)] == plan.rules
    assert json.loads(cache.read_text())["shapes"][first_shape]["ms"]["512"] == timed  # read back, not re-timed
