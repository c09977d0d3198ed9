"""Tiny GGUF files with block-quantized tensors, loaded with the weights kept as blocks (float32 kernels) and
dequantized at load, and by transformers: same logits, same greedy tokens, for every architecture."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
import transformers
from torch.nn import functional as F
from gguf import GGMLQuantizationType, GGUFWriter, quants

import test_gguf  # the tiny-model GGUF writer of the loading tests (same folder)
from tokenmill import AutoModelForCausalLM, kernels
from tokenmill.execution.ops import ExactOps, NativeOps
from tokenmill.layers.attention import Attention
from tokenmill.layers.mlp import GatedMLP
from tokenmill.layers import quantized_linear
from tokenmill.layers.quantized_linear import QuantizedEmbedding, QuantizedLinear
from tokenmill.layers.norm import RMSNorm

from numerics import agreement_tolerance, assert_runs_agree, matmuls, reduction_len

# rotated across tensors so that every 32-element type the writer can quantize is exercised in each file
TYPES = [GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q4_1, GGMLQuantizationType.Q5_0,
         GGMLQuantizationType.Q5_1, GGMLQuantizationType.Q8_0]


def assert_logits_close(actual: torch.Tensor, expected: torch.Tensor, model, length: int | None = None) -> None:
    """Two float32 runs of the same dequantized values (blocks summed by the kernels, or dense BLAS, or transformers):
    tests/numerics.py's agreement bound for `model`'s widths, depth and the prompt's length."""
    length = actual.shape[-2] if length is None else length
    assert_runs_agree(actual, expected, reduction_len(model.config, length), matmuls(model.config),
                      "quantized blocks")


class QuantizingWriter(GGUFWriter):
    """Writes every 2-D weight whose rows are whole 32-element blocks in one of TYPES (others stay float)."""

    count = 0

    def add_tensor(self, name, tensor, raw_shape=None, raw_dtype=None, **kwargs):
        if tensor.ndim == 2 and tensor.shape[1] % 32 == 0 and name.endswith(".weight") and raw_dtype is None:
            kind = TYPES[QuantizingWriter.count % len(TYPES)]
            QuantizingWriter.count += 1
            tensor, raw_dtype = quants.quantize(np.ascontiguousarray(tensor, dtype=np.float32), kind), kind
        return super().add_tensor(name, tensor, raw_shape=raw_shape, raw_dtype=raw_dtype, **kwargs)


@pytest.fixture
def write_quantized(monkeypatch, tmp_path):
    monkeypatch.setattr(test_gguf, "GGUFWriter", QuantizingWriter)

    def write(arch: str):
        QuantizingWriter.count = 0  # the same types for the same tensors, whatever ran before
        model = test_gguf.tiny_model(arch)
        test_gguf.write_tiny_gguf(tmp_path / "tiny.gguf", arch, model)
        return tmp_path / "tiny.gguf"

    return write


def load_both(path):
    kept = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, progress=False, keep_quantized=True)
    dense = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, progress=False, keep_quantized=False)
    return kept, dense


PROMPT = torch.tensor([[1, 5, 17, 33, 60, 2, 9, 41, 77, 12, 3, 90]])


@pytest.mark.parametrize("arch", test_gguf.ORACLE_LOADABLE + ["qwen2moe", "gemma"])
def test_kept_blocks_match_dequantized_weights(write_quantized, arch):
    kept, dense = load_both(write_quantized(arch))
    quantized = [m for m in kept.modules() if isinstance(m, (QuantizedLinear, QuantizedEmbedding))]
    assert quantized or arch == "gpt2"  # gpt2's transposed weights are dequantized; the rest keep blocks
    assert not dense.is_quantized()
    assert kept.num_parameters() == dense.num_parameters()
    with torch.no_grad():
        assert_logits_close(kept(PROMPT).logits, dense(PROMPT).logits, kept)
        greedy = dict(max_new_tokens=10, min_new_tokens=10, do_sample=False)
        assert kept.generate(PROMPT, **greedy).tolist() == dense.generate(PROMPT, **greedy).tolist()
    dense_state = dense.state_dict()  # state_dict() of kept blocks is the dequantized float weights
    for name, tensor in kept.state_dict().items():
        assert torch.equal(tensor, dense_state[name]), name


# not gemma2/3 here: their tiny models keep transformers' default query_pre_attn_scalar (256) beside head_dim 16,
# which a GGUF cannot express (tokenmill, like llama.cpp, scales by head_dim); the real Gemma 3 test covers it
@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "phi3"])
def test_kept_blocks_match_transformers(write_quantized, arch):
    path = write_quantized(arch)
    oracle = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                               dtype=torch.float32).eval()
    kept = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, progress=False)
    assert kept.is_quantized()  # the default on the CPU in float32
    with torch.no_grad():
        assert_logits_close(kept(PROMPT).logits, oracle(PROMPT).logits, kept)


def test_dequantize_resize_and_move(write_quantized):
    kept, dense = load_both(write_quantized("llama"))
    with torch.no_grad():
        before = kept(PROMPT).logits
    kept.resize_token_embeddings(kept.config.vocab_size + 3)  # the quantized table becomes float first
    assert not kept.is_quantized()
    with torch.no_grad():
        assert_logits_close(kept(PROMPT).logits[..., :-3], before, kept)
    again, _ = load_both(write_quantized("llama"))
    assert again.to("cpu").is_quantized()  # staying on the CPU keeps the blocks
    with pytest.warns(RuntimeWarning, match="weight_format: gguf-blocks → dense; kernels: native → torch"):
        assert not again.to("meta").is_quantized()  # any other device gets float weights, and says so
    assert again.execution_policy.kernels == "torch" and again.execution_policy.device.type == "meta"


def kernel_set(model) -> tuple[str, str, type]:
    policy = model.execution_policy
    return policy.kernels, policy.attention, type(policy.ops)


def test_native_norms_attention_and_swiglu_go_with_the_kernels(write_quantized):
    kept, dense = load_both(write_quantized("llama"))
    assert kernel_set(kept) == ("native", "native", NativeOps)  # C RMSNorm and attention beside the GGUF kernels
    assert kept.execution_policy.weight_format == "gguf-blocks"
    assert kernel_set(dense) == ("exact", "sdpa", ExactOps)  # dense float32: transformers' arithmetic bit for bit
    assert dense.execution_policy.weight_format == "dense"
    assert kernel_set(kept.dequantize()) == ("exact", "sdpa", ExactOps)
    layers = [module for module in kept.modules() if isinstance(module, (RMSNorm, Attention, GatedMLP))]
    assert layers and not any(hasattr(module, "native_kernel") for module in layers)  # no mode hung on modules


def sdpa_twin(model):
    """The same quantized model attending through SDPA: only the attention kernel differs."""
    twin = copy.deepcopy(model)
    twin.set_execution_policy(dataclasses.replace(model.execution_policy, attention="sdpa"))
    assert twin.execution_policy.ops.native_attention is False
    return twin


@pytest.fixture
def kernel_calls(monkeypatch):
    """A list that grows by one per call of the attention kernel."""
    calls, original = [], kernels.attention
    monkeypatch.setattr(kernels, "attention", lambda *args, **kwargs: calls.append(1) or original(*args, **kwargs))
    return calls


WINDOWED = {"sliding_window": {"sliding_window": 6}, "sink": {"window_length": 7, "num_sink_tokens": 2}}


@pytest.mark.parametrize("kind", ["dynamic", "static", "offloaded", "quantized", "sliding_window", "sink"])
def test_native_attention_equals_sdpa_for_every_cache_kind(write_quantized, kind, kernel_calls):
    # qwen3's tiny model: head_dim 128 (the kernel takes multiples of 16), grouped kv heads, q/k norms
    kept = AutoModelForCausalLM.from_pretrained(write_quantized("qwen3"), dtype=torch.float32, progress=False)
    twin = sdpa_twin(kept)
    options = dict(max_new_tokens=10, min_new_tokens=10, do_sample=False, output_logits=True,
                   return_dict_in_generate=True, cache_implementation=kind, cache_config=WINDOWED.get(kind))
    with torch.no_grad():
        native = kept.generate(PROMPT, **options)
        assert kernel_calls, "the decode steps did not go through the kernel"
        kernel_calls.clear()
        reference = twin.generate(PROMPT, **options)
        assert not kernel_calls
    assert native.sequences.tolist() == reference.sequences.tolist()
    for got, expected in zip(native.logits, reference.logits):
        assert_logits_close(got, expected, kept, native.sequences.shape[1])


def test_native_attention_left_padded_batch_equals_rows_alone(write_quantized, kernel_calls):
    kept = AutoModelForCausalLM.from_pretrained(write_quantized("gemma"), dtype=torch.float32, progress=False)
    rows = [PROMPT[0], PROMPT[0, 5:], PROMPT[0, 9:]]
    width = max(len(row) for row in rows)
    input_ids = torch.stack([torch.cat([torch.zeros(width - len(row), dtype=torch.long), row]) for row in rows])
    attention_mask = torch.stack([(torch.arange(width) >= width - len(row)).long() for row in rows])
    greedy = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False)
    with torch.no_grad():
        together = kept.generate(input_ids, attention_mask=attention_mask, **greedy)[:, width:]
        for index, row in enumerate(rows):
            alone = kept.generate(row[None], **greedy)[0, len(row):]
            assert together[index].tolist() == alone.tolist(), f"row {index}"
    assert kernel_calls


def test_save_pretrained_of_kept_blocks_loads_in_transformers(write_quantized, tmp_path):
    kept, dense = load_both(write_quantized("qwen2"))
    kept.save_pretrained(tmp_path / "saved")
    oracle = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "saved", dtype=torch.float32).eval()
    with torch.no_grad():
        assert_logits_close(oracle(PROMPT).logits, dense(PROMPT).logits, dense)


def test_a_long_prefill_goes_through_onednn_and_equals_the_dense_model(write_quantized, monkeypatch):
    """More than DENSE_ABOVE_ROWS rows: weights dequantized into the reused buffer, multiplied by oneDNN."""
    calls, original = [], quantized_linear.dense_linear
    monkeypatch.setattr(quantized_linear, "dense_linear", lambda *args: calls.append(1) or original(*args))
    kept, dense = load_both(write_quantized("llama"))
    prompt = torch.randint(3, 90, (1, quantized_linear.DENSE_ABOVE_ROWS + 4), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert_logits_close(kept(prompt).logits, dense(prompt).logits, kept)
    assert calls and quantized_linear.ONEDNN_LINEAR == torch.backends.mkldnn.is_available()


def test_dense_linear_equals_f_linear_and_falls_back_under_autograd():
    generator = torch.Generator().manual_seed(1)
    x, weight, bias = (torch.randn(*shape, generator=generator) for shape in ((2, 130, 64), (48, 64), (48,)))
    with torch.no_grad():
        expected = F.linear(x, weight, bias)  # one product of length 64 in two GEMMs: tests/numerics.py, two runs
        assert_runs_agree(quantized_linear.dense_linear(x, weight, bias), expected, 64, 1, "oneDNN linear")
    weight.requires_grad_(True)
    out = quantized_linear.dense_linear(x, weight, None)  # oneDNN's op has no backward here: F.linear serves
    out.sum().backward()
    # sums of 260 float32 values in two orders: tests/numerics.py's agreement bound for one reduction of length 260,
    # scaled by the sum of |terms| (what every partial sum's rounding is bounded by)
    terms = x.reshape(-1, 64)
    atol = agreement_tolerance(terms.shape[0], 1, weight.grad.numel(), float(terms.abs().sum(0).max()))
    torch.testing.assert_close(weight.grad, terms.sum(0).expand(48, 64), atol=atol, rtol=0)
