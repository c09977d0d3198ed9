"""The quantized cache: exact inside the residual window, a measured and bounded logit error past it, and the
memory it saves. Quantized entries cost (d * bits/8 + 2 floats per group) per d dense floats: with head_dim 32
in float32 int8 keeps 31% and int4 19% of the bytes; with the 16-token residual of 119 positions the totals
are 40%/30%. (On SmolLM2, 200 positions, residual 32: int8 39.7% of the bytes, max |Δlogit| 0.31 of ±37.7;
int4 with 32-value groups 31.8%, max |Δlogit| 2.7, mean 0.42; top-1 unchanged at every position.)"""

from __future__ import annotations

import pytest
import torch
import transformers

from tokenmill import AutoModelForCausalLM
from tokenmill.cache import DynamicCache, QuantizedCache
from tokenmill.cache.quantized import dequantize, quantize

from numerics import UNIT_ROUNDOFF

# measured on this model: int8 max |Δlogit| = 5.5e-4, int4 = 9.1e-3 (logits span ±0.71); bounds ~5x that
LOGIT_ERROR_BOUND = {8: 3e-3, 4: 5e-2}
MEMORY_RATIO_BOUND = {8: 0.41, 4: 0.30}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256)
    folder = tmp_path_factory.mktemp("tiny-llama-hd32")
    transformers.LlamaForCausalLM(config).eval().save_pretrained(folder)
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)


def teacher_forced_logits(model, tokens: torch.Tensor, prompt: int, cache) -> torch.Tensor:
    """Logits for every position after the prompt, feeding the given tokens one at a time."""
    steps = [model(tokens[:, :prompt], past_key_values=cache).logits[:, -1]]
    for position in range(prompt, tokens.shape[1] - 1):
        steps.append(model(tokens[:, position:position + 1], past_key_values=cache).logits[:, -1])
    return torch.stack(steps, dim=1)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("group", [None, 16])
def test_round_trip_error_is_within_half_a_step(bits, group):
    x = torch.randn(2, 3, 5, 64, generator=torch.Generator().manual_seed(0))
    codes, scale, low = quantize(x, bits, group)
    assert codes.dtype == torch.uint8 and codes.shape[-1] == 64 * bits // 8
    assert scale.shape[-1] == 64 // (group or 64)
    error = (dequantize(codes, scale, low, bits) - x).abs()
    # half a step, plus float32 dequantization's two roundings (codes*scale, + low), each at most u times a value
    # of at most 2 max|x|: 4u max|x|
    rounding = 4 * UNIT_ROUNDOFF[torch.float32] * float(x.abs().max())
    assert bool((error <= scale.repeat_interleave(group or 64, dim=-1) / 2 + rounding).all())


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_logits_error_is_bounded_and_memory_is_saved(model, bits):
    tokens = torch.randint(0, 97, (2, 120), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        dense_cache, quantized_cache = DynamicCache(), QuantizedCache(nbits=bits, residual_length=16)
        dense = teacher_forced_logits(model, tokens, 40, dense_cache)
        lossy = teacher_forced_logits(model, tokens, 40, quantized_cache)
    error = (lossy - dense).abs().max().item()
    assert 0 < error < LOGIT_ERROR_BOUND[bits]
    if bits == 8:  # a random model's logits are near-ties; int4 may flip one, int8 does not
        assert torch.equal(lossy.argmax(-1), dense.argmax(-1))
    ratio = quantized_cache.nbytes() / dense_cache.nbytes()
    assert ratio < MEMORY_RATIO_BOUND[bits]
    assert quantized_cache.layers[0].keys.shape[-2] == 16 and quantized_cache.get_seq_length() == 119


def test_within_the_residual_window_it_is_exact(model):
    tokens = torch.randint(0, 97, (1, 30), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        dense = teacher_forced_logits(model, tokens, 10, DynamicCache())
        lossy = teacher_forced_logits(model, tokens, 10, QuantizedCache(nbits=4, residual_length=32))
    assert torch.equal(lossy, dense)


def test_generate_by_name_with_cache_config(model):
    ids = torch.randint(3, 97, (1, 30), generator=torch.Generator().manual_seed(4))
    out = model.generate(ids, cache_implementation="quantized", cache_config={"nbits": 4, "residual_length": 8},
                         max_new_tokens=10, min_new_tokens=10, do_sample=False, return_dict_in_generate=True)
    cache = out.past_key_values
    assert isinstance(cache, QuantizedCache) and cache.nbits == 4
    assert cache.layers[0].quantized_keys.length() == 39 - 8
