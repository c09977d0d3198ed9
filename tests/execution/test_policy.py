"""choose_policy: what each request gets on this machine, and the clear refusal of what cannot run."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tokenmill import kernels
from tokenmill.execution import policy as policy_module
from tokenmill.execution.ops import ExactOps, NativeOps, TorchOps
from tokenmill.execution.policy import (ExecutionPolicy, ExecutionPolicyError, choose_policy, dequantized_policy,
                                        moved_policy)

needs_kernels = pytest.mark.skipif(not kernels.available(), reason="the C kernels cannot be built here")
CPU, META = torch.device("cpu"), torch.device("meta")  # meta stands for any non-CPU device


@needs_kernels
@pytest.mark.parametrize("request_, expected", [
    # (device, dtype, gguf, keep_quantized, kernels, attn) -> (weight_format, kernels, attention)
    ((CPU, torch.float32, True, None, None, "sdpa"), ("gguf-blocks", "native", "native")),
    ((CPU, torch.float32, True, True, "native", "native"), ("gguf-blocks", "native", "native")),
    ((CPU, torch.float32, True, None, None, "eager"), ("gguf-blocks", "native", "eager")),
    ((CPU, torch.float32, True, False, None, "sdpa"), ("dense", "exact", "sdpa")),
    ((CPU, torch.float32, True, None, "exact", "sdpa"), ("dense", "exact", "sdpa")),
    ((CPU, torch.float32, True, None, "torch", None), ("dense", "torch", "sdpa")),
    ((CPU, torch.bfloat16, True, None, None, "sdpa"), ("dense", "torch", "sdpa")),
    ((META, torch.float32, True, None, None, "sdpa"), ("dense", "torch", "sdpa")),
    ((CPU, torch.float32, False, None, None, "sdpa"), ("dense", "exact", "sdpa")),
    ((CPU, torch.float32, False, False, "native", None), ("dense", "native", "native")),
    ((CPU, torch.float32, False, None, "native", "eager"), ("dense", "native", "eager")),
    ((CPU, torch.float16, False, None, None, "eager"), ("dense", "torch", "eager")),
    ((META, torch.bfloat16, False, None, "torch", "sdpa"), ("dense", "torch", "sdpa")),
])
def test_each_request_gets_its_policy(request_, expected):
    device, dtype, gguf, keep_quantized, kernel_set, attn = request_
    policy = choose_policy(device=device, dtype=dtype, gguf=gguf, keep_quantized=keep_quantized,
                           kernels=kernel_set, attn_implementation=attn)
    assert (policy.weight_format, policy.kernels, policy.attention) == expected
    assert (policy.device, policy.dtype, policy.parallel) == (device, dtype, "single")
    assert policy.threads == torch.get_num_threads()
    assert type(policy.ops) is {"native": NativeOps, "exact": ExactOps, "torch": TorchOps}[policy.kernels]
    assert policy.ops.native_attention == (policy.attention == "native")
    assert policy.attn_implementation == ("sdpa" if policy.attention == "native" else policy.attention)


@pytest.mark.parametrize("request_, message", [
    (dict(device=META, kernels="native"), "runs on the CPU in float32; got device meta"),
    (dict(dtype=torch.bfloat16, gguf=True, keep_quantized=True), "runs on the CPU in float32; got .* bfloat16"),
    (dict(dtype=torch.float16, attn_implementation="native"), "runs on the CPU in float32"),
    (dict(keep_quantized=True), "applies to GGUF checkpoints only"),
    (dict(kernels="cuda"), "kernels must be one of"),
    (dict(attn_implementation="flash_attention_3"), "attn_implementation must be one of"),
    (dict(kernels="triton"), "kernels='triton' needs a CUDA device"),
    (dict(kernels="torch", attn_implementation="native"), "needs kernels='native', not 'torch'"),
    (dict(gguf=True, keep_quantized=True, kernels="torch"), "keep_quantized=True needs the native kernels"),
    (dict(gguf=True, precision="int8"), "precision must be one of \\('exact', 'fast'\\), got 'int8'"),
    (dict(precision="fast"), "precision='fast' .* the checkpoint has float weights"),
    (dict(gguf=True, keep_quantized=False, precision="fast"), "precision='fast' .*keep_quantized=False"),
    (dict(gguf=True, dtype=torch.bfloat16, precision="fast"), "precision='fast' .* cpu bfloat16"),
])
def test_impossible_requests_are_refused(request_, message):
    with pytest.raises(ExecutionPolicyError, match=message):
        choose_policy(**request_)


def test_without_kernels_asking_for_them_is_refused_and_the_default_is_aten(monkeypatch):
    monkeypatch.setattr(policy_module.kernels, "available", lambda: False)
    assert choose_policy(gguf=True).kernels == "torch"
    assert choose_policy(gguf=True).weight_format == "dense"
    with pytest.raises(ExecutionPolicyError, match="C kernels are unavailable"):
        choose_policy(gguf=True, keep_quantized=True)
    with pytest.raises(ExecutionPolicyError, match="C kernels are unavailable"):
        choose_policy(kernels="exact")


@pytest.mark.parametrize("fields, message", [
    (dict(weight_format="gguf-blocks", kernels="exact"), "needs dense weights"),
    (dict(kernels="native", device="meta"), "needs device cpu and dtype float32"),
    (dict(kernels="exact", dtype=torch.bfloat16), "needs device cpu and dtype float32"),
    (dict(attention="native", kernels="torch"), "belongs to kernels='native'"),
    (dict(parallel="pipeline"), "parallel must be one of"),
    (dict(parallel="tensor"), "'tensor' needs 2 or more"),  # a tensor layout without its ranks' group
    (dict(weight_format="int4"), "weight_format must be one of"),
    (dict(threads=0), "threads must be at least 1"),
    (dict(precision="int8"), "precision must be one of"),
    (dict(precision="fast"), "precision='fast' .* needs block weights"),  # dense weights have no int8 kernel
])
def test_an_inconsistent_policy_cannot_be_built(fields, message):
    with pytest.raises(ExecutionPolicyError, match=message):
        ExecutionPolicy(**fields)


def test_describe_and_as_dict_name_every_field():
    policy = ExecutionPolicy(weight_format="gguf-blocks", kernels="native", attention="native", threads=3)
    assert policy.as_dict() == {"device": "cpu", "dtype": "float32", "weight_format": "gguf-blocks",
                                "kernels": "native", "attention": "native", "threads": 3, "precision": "exact",
                                "parallel": "single", "tp_rank": 0, "tp_size": 1}
    text = policy.describe()
    for part in ("cpu float32", "gguf-blocks weights", "native kernels", "native attention", "3 thread(s)",
                 "exact precision", "single device"):
        assert part in text
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.kernels = "torch"


def test_moving_and_dequantizing_rebuild_the_policy():
    blocks = ExecutionPolicy(weight_format="gguf-blocks", kernels="native", attention="native")
    assert moved_policy(blocks, CPU, None) == blocks
    off_cpu = moved_policy(blocks, META, None)
    assert (off_cpu.weight_format, off_cpu.kernels, off_cpu.attention, off_cpu.device) == (
        "dense", "torch", "sdpa", META)
    assert off_cpu.changes_from(blocks) == ["device: cpu → meta", "weight_format: gguf-blocks → dense",
                                            "kernels: native → torch", "attention: native → sdpa"]
    half = moved_policy(ExecutionPolicy(kernels="exact", attention="eager"), None, torch.bfloat16)
    assert (half.kernels, half.attention, half.dtype) == ("torch", "eager", torch.bfloat16)
    dense = dequantized_policy(blocks)
    assert (dense.weight_format, dense.kernels, dense.attention) == ("dense", "exact", "sdpa")
    native_dense = ExecutionPolicy(kernels="native")
    assert dequantized_policy(native_dense) is native_dense  # nothing to dequantize, nothing changes
    fast = blocks.with_precision("fast")  # dense weights have no integer kernel: exact again, and said so
    assert dequantized_policy(fast).precision == moved_policy(fast, META, None).precision == "exact"
    assert "precision: fast → exact" in moved_policy(fast, META, None).changes_from(fast)
    assert moved_policy(fast, CPU, None) == fast


@needs_kernels
def test_fast_precision_is_chosen_for_block_weights_only_when_asked():
    assert choose_policy(gguf=True).precision == "exact"  # the default: float32 arithmetic
    fast = choose_policy(gguf=True, precision="fast")
    assert (fast.precision, fast.weight_format) == ("fast", "gguf-blocks")
    assert fast.with_precision("exact").changes_from(fast) == ["precision: fast → exact"]
    assert "fast precision" in fast.describe()


def test_with_threads_changes_only_the_thread_count_and_apply_sets_torchs():
    policy = ExecutionPolicy(weight_format="gguf-blocks", kernels="native", attention="native", threads=3)
    assert policy.with_threads(1).changes_from(policy) == ["threads: 3 → 1"]
    with pytest.raises(ExecutionPolicyError, match="threads must be at least 1"):
        policy.with_threads(0)
    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    try:
        policy.with_threads(target).apply_threads()
        assert torch.get_num_threads() == target
    finally:
        torch.set_num_threads(before)


def test_flash_attention_2_is_sdpa_flash_backend():
    """transformers' attn_implementation="flash_attention_2" is accepted: SDPA, whose flash kernel serves it on
    CUDA (the flash-attn package is not needed)."""
    assert choose_policy(attn_implementation="flash_attention_2").attention == "sdpa"
