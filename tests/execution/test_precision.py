"""The execution policy's precision: "exact" (float32 arithmetic on the dequantized blocks, the default) and "fast"
(int8 activations in the block types with an integer kernel).

Fast mode's quality bound, as docs/performance.md states it: over the teacher-forced positions of a ~460-token
text, SmolLM2-135M Q4_1's logits in fast mode keep a cosine of at least 0.999 with exact mode's at every position
and the same top-1 token at 99% of positions or more (llama.cpp's own logits on this model reach a cosine of 0.998
against transformers'). Every chunk fed is at most DENSE_ABOVE_ROWS tokens, so every block matmul takes the
integer kernel rather than the dense float32 GEMM a long prefill runs in either precision.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tokenmill import AutoModelForCausalLM, AutoTokenizer, kernels
from tokenmill.cache.dynamic import DynamicCache
from tokenmill.kernels.gguf_types import BY_NAME, INT8_KERNEL_TYPES, TYPES, has_int8_kernel
from tokenmill.layers.quantized_linear import DENSE_ABOVE_ROWS, QuantizedLinear, QuantizedWeight

TEXT = Path(__file__).resolve().parent.parent / "data" / "pride_and_prejudice_ch1-2.txt"
POSITIONS = 462  # the text's first 462 tokens (its chapter 1): the "400-token text" and a bit more
COSINE_FLOOR = 0.999  # per position, the bound
TOP1_FLOOR = 0.99
# chunks of the teacher-forced text: a prefill chunk the integer kernel still takes, then decode-sized steps
CHUNK = 48
SINGLE_STEPS = 8


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf):
    model = AutoModelForCausalLM.from_pretrained(smollm2_gguf, progress=False)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_gguf)
    ids = tokenizer(TEXT.read_text(), return_tensors="pt")["input_ids"][:, :POSITIONS]
    return model, ids


def teacher_forced_logits(model, ids: torch.Tensor) -> torch.Tensor:
    """Logits [positions, vocab] of `ids` fed in chunks of CHUNK tokens through a cache, the last SINGLE_STEPS
    one token at a time (decode steps)."""
    assert CHUNK <= DENSE_ABOVE_ROWS  # else the chunk's matmuls would run the dense GEMM in both precisions
    length = ids.shape[1]
    starts = list(range(0, length - SINGLE_STEPS, CHUNK)) + list(range(length - SINGLE_STEPS, length))
    ends = starts[1:] + [length]
    cache, logits = DynamicCache(), []
    with torch.inference_mode():
        for start, end in zip(starts, ends):
            logits.append(model(ids[:, start:end], past_key_values=cache, use_cache=True).logits[0])
    return torch.cat(logits)


def test_fast_mode_keeps_the_stated_quality_bound(smollm2):
    model, ids = smollm2
    assert ids.shape[1] >= 400
    exact_policy = model.execution_policy
    assert exact_policy.precision == "exact"  # from_pretrained's default
    exact = teacher_forced_logits(model, ids).double()
    try:
        model.execution_policy = exact_policy.with_precision("fast")
        switched = [module for module in model.modules()
                    if isinstance(module, QuantizedLinear) and module.integer_activations]
        # SmolLM2 Q4_1: every projection is Q4_1 and the tied head Q8_0, all with an integer kernel
        assert len(switched) == sum(isinstance(module, QuantizedLinear) for module in model.modules()) == 211
        fast = teacher_forced_logits(model, ids).double()
    finally:
        model.execution_policy = exact_policy
    assert not torch.equal(fast, exact)  # the integer kernels ran
    cosine = torch.nn.functional.cosine_similarity(fast, exact, dim=-1)
    top1 = (fast.argmax(-1) == exact.argmax(-1)).double().mean().item()
    assert cosine.min().item() >= COSINE_FLOOR, f"lowest cosine {cosine.min().item():.6f}"
    assert top1 >= TOP1_FLOOR, f"top-1 agreement {top1:.4f}"


def test_fast_mode_keeps_the_bound_on_k_quants(smollm2_folder, smollm2):
    # SmolLM2 quantized at load to llama.cpp's Q4_K_M mixture: its 1536-wide down projections become Q4_K and
    # Q6_K (the 576-wide rows fit no 256-value super-block: Q5_0 and Q8_0), so the K-quant kernels face the bound
    _, ids = smollm2
    model = AutoModelForCausalLM.from_pretrained(smollm2_folder, progress=False, quantization_config="q4_k_m")
    exact = teacher_forced_logits(model, ids).double()
    model.execution_policy = model.execution_policy.with_precision("fast")
    switched = {TYPES[module.ggml_type].name for module in model.modules()
                if isinstance(module, QuantizedLinear) and module.integer_activations}
    packed_build = kernels.int8_packs(BY_NAME["Q4_K"].type_id)
    assert switched == ({"Q4_K", "Q6_K", "Q8_0"} if packed_build else {"Q8_0"})
    fast = teacher_forced_logits(model, ids).double()
    cosine = torch.nn.functional.cosine_similarity(fast, exact, dim=-1)
    top1 = (fast.argmax(-1) == exact.argmax(-1)).double().mean().item()
    assert cosine.min().item() >= COSINE_FLOOR, f"lowest cosine {cosine.min().item():.6f}"
    assert top1 >= TOP1_FLOOR, f"top-1 agreement {top1:.4f}"


def test_exact_mode_is_unchanged_by_a_trip_through_fast(smollm2):
    model, ids = smollm2
    prompt = ids[:, :40]
    with torch.inference_mode():
        before = model(prompt).logits
        policy = model.execution_policy
        model.execution_policy = policy.with_precision("fast")
        model.execution_policy = policy
        after = model(prompt).logits
    assert not any(module.integer_activations for module in model.modules() if isinstance(module, QuantizedLinear))
    assert torch.equal(before, after)


def test_the_setter_switches_only_types_with_an_integer_kernel():
    def layer(type_name: str) -> QuantizedLinear:
        block_type = BY_NAME[type_name]
        blocks = torch.zeros(4, 256 // block_type.block_elements * block_type.block_bytes, dtype=torch.uint8)
        return QuantizedLinear(QuantizedWeight(blocks, block_type.type_id, 256))

    for type_name in ("Q4_0", "Q4_1", "Q8_0"):
        assert layer(type_name).set_precision("fast") is True
    for type_name in ("Q4_K", "Q6_K"):  # only the packed kernel (AVX-512 VNNI builds) takes them
        assert layer(type_name).set_precision("fast") is kernels.int8_packs(BY_NAME[type_name].type_id)
    for type_name in ("Q5_K", "Q5_0", "IQ4_NL"):  # no integer kernel (yet): they stay exact
        assert layer(type_name).set_precision("fast") is False
    switched = layer("Q4_1")
    switched.set_precision("fast")
    with torch.inference_mode():
        switched(torch.randn(1, 256))
    # the packed layout (where the build has one) is made by the first fast forward, dropped by exact mode
    assert (switched.int8_packing.packed is not None) == kernels.int8_packs(BY_NAME["Q4_1"].type_id)
    assert switched.set_precision("exact") is False and not switched.integer_activations
    assert switched.int8_packing.packed is None
    assert "int8 activations" in repr(switched.set_precision("fast") and switched)
    with pytest.raises(ValueError, match="precision must be one of"):
        layer("Q4_0").set_precision("int8")


def test_the_registry_lists_only_types_the_integer_kernel_serves():
    assert INT8_KERNEL_TYPES  # fast mode switches something
    for type_id, block_type in TYPES.items():
        if has_int8_kernel(type_id):
            # Q4_K and Q6_K: only where the build has the packed kernel; the others in every build
            assert kernels.int8_supports(type_id) or (block_type.name in ("Q4_K", "Q6_K")
                                                      and not kernels.int8_packs(type_id)), block_type.name


def test_dequantizing_returns_to_exact(smollm2_gguf):
    model = AutoModelForCausalLM.from_pretrained(smollm2_gguf, progress=False, precision="fast")
    assert model.execution_policy.precision == "fast"
    assert all(module.integer_activations for module in model.modules() if isinstance(module, QuantizedLinear))
    model.dequantize()
    assert model.execution_policy.precision == "exact" and not model.is_quantized()
