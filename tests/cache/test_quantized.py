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


# ---- on tensors, no model (the mutation run of quantized.py selects these and the round trip) ----

from tokenmill.cache.quantized import DEFAULT_INT4_GROUP, QuantizedLayer, QuantizedTensor  # noqa: E402


def test_codes_scales_and_packing_by_hand():
    x = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    codes, scale, low = quantize(x, 8)
    assert codes.dtype == torch.uint8 and codes.tolist() == [[0, 85, 170, 255]]
    assert scale.flatten().tolist() == pytest.approx([3 / 255]) and low.flatten().tolist() == [0.0]
    codes, scale, low = quantize(x * 5, 4)  # codes 0, 5, 10, 15: two per byte, the first in the low nibble
    assert codes.tolist() == [[0 | 5 << 4, 10 | 15 << 4]] and scale.flatten().tolist() == pytest.approx([1.0])
    assert torch.equal(dequantize(codes, scale, low, 4), x * 5)
    codes, scale, low = quantize(torch.tensor([[0.0, 1.0, 10.0, 13.0]]), 8, group_size=2)
    assert scale.tolist()[0] == pytest.approx([1 / 255, 3 / 255]) and low.tolist() == [[0.0, 10.0]]
    assert codes.tolist() == [[0, 255, 0, 255]]


def test_a_constant_vector_is_exact_and_a_bad_group_is_named():
    codes, scale, low = quantize(torch.full((1, 4), 2.5), 8)
    assert codes.tolist() == [[0, 0, 0, 0]] and scale.item() > 0
    assert dequantize(codes, scale, low, 8).tolist() == [[2.5] * 4]
    with pytest.raises(ValueError) as error:
        quantize(torch.zeros(1, 2, 6), 8, group_size=4)
    assert str(error.value) == "head_dim 6 is not a multiple of the quantization group size 4"


# every vector below spans 3 (consecutive values): int8's half step is 3/255/2; the 1e-4 beside it covers
# float32 dequantization's rounding, 4u max|x| (test_round_trip_error_is_within_half_a_step) for |x| < 400
def _kv(length, start=0, batch=2, dim=4):
    keys = torch.arange(start, start + batch * length * dim, dtype=torch.float32).reshape(batch, 1, length, dim)
    return keys, -keys


def test_quantized_tensor_grows_selects_and_crops():
    store = QuantizedTensor(8)
    assert store.length() == 0 and store.dense() is None and store.tensors() == []
    store.select(torch.tensor([0]))
    store.crop(1)
    first, second = _kv(2)[0], _kv(1, start=50)[0]
    store.append(first)
    store.append(second)
    assert store.length() == 3 and len(store.tensors()) == 3
    expected = torch.cat([first, second], dim=2)
    assert (store.dense() - expected).abs().max() <= 3 / 255 / 2 + 1e-4  # half a step of the widest vector
    assert store.scale.shape == store.low.shape == (2, 1, 3, 1)
    store.select(torch.tensor([1]))
    store.crop(2)
    assert store.length() == 2 and (store.dense() - expected[[1], :, :2]).abs().max() <= 3 / 255 / 2 + 1e-4
    assert store.scale.shape == store.low.shape == (1, 1, 2, 1)


@pytest.mark.parametrize("kwargs, message", [
    ({"nbits": 3}, "quantized cache supports nbits in (4, 8), got 3"),
    ({"residual_length": -1}, "residual_length must be >= 0, got -1"),
])
def test_bad_settings_are_refused_by_name(kwargs, message):
    with pytest.raises(ValueError) as error:
        QuantizedLayer(**kwargs)
    assert str(error.value) == message
    with pytest.raises(ValueError):
        QuantizedCache(**kwargs)


def test_the_residual_stays_exact_and_older_entries_are_quantized():
    layer = QuantizedLayer(nbits=8, residual_length=2)
    assert layer.batch_size() == 0 and layer.seq_length() == 0 and layer.tensors() == []
    chunks = [_kv(3), _kv(1, start=100), _kv(1, start=200)]
    for count, (keys, values) in enumerate(chunks, 1):
        full_keys, full_values = layer.update(keys, values)
        expected_keys = torch.cat([k for k, _ in chunks[:count]], dim=2)
        expected_values = torch.cat([v for _, v in chunks[:count]], dim=2)
        assert full_keys.shape == expected_keys.shape and full_values.shape == expected_values.shape
        assert torch.equal(full_keys[..., -1:, :], keys[..., -1:, :])  # this step's own keys: exact
        assert (full_keys - expected_keys).abs().max() <= 3 / 255 / 2 + 1e-4
        assert (full_values - expected_values).abs().max() <= 3 / 255 / 2 + 1e-4
    assert layer.seq_length() == 5 and layer.quantized_keys.length() == 3 and layer.batch_size() == 2
    assert torch.equal(layer.keys, torch.cat([chunks[1][0], chunks[2][0]], dim=2))
    assert torch.equal(layer.values, torch.cat([chunks[1][1], chunks[2][1]], dim=2))
    assert len(layer.tensors()) == 2 + 3 + 3


def test_crop_and_reorder():
    layer = QuantizedLayer(nbits=8, residual_length=3)
    keys, values = _kv(5)
    layer.update(keys, values)  # 2 quantized, 3 exact
    with pytest.raises(ValueError) as error:
        layer.crop(1)
    assert str(error.value) == "cannot crop a quantized cache into its quantized part (2 positions)"
    layer.crop(4)
    assert layer.seq_length() == 4 and torch.equal(layer.keys, keys[..., 2:4, :])
    assert torch.equal(layer.values, values[..., 2:4, :])
    layer.reorder(torch.tensor([1, 1, 0]))
    assert layer.batch_size() == 3 and torch.equal(layer.keys, keys[[1, 1, 0], :, 2:4])
    assert torch.equal(layer.values, values[[1, 1, 0], :, 2:4])
    assert layer.quantized_keys.codes.shape[0] == layer.quantized_values.codes.shape[0] == 3
    assert (layer.quantized_values.dense() - values[[1, 1, 0], :, :2]).abs().max() <= 3 / 255 / 2 + 1e-4
    empty = QuantizedLayer()
    empty.reorder(torch.tensor([0]))
    empty.crop(0)
    assert empty.keys is None and empty.seq_length() == 0


def test_int4_groups_of_32_by_default_when_head_dim_allows():
    layer = QuantizedLayer(nbits=4, residual_length=0)
    layer.update(*_kv(1, dim=64))
    assert layer.quantized_keys.group_size == layer.quantized_values.group_size == DEFAULT_INT4_GROUP == 32
    assert layer.quantized_keys.scale.shape[-1] == 2
    layer = QuantizedLayer(nbits=4, residual_length=0)
    layer.update(*_kv(1, dim=16))
    assert layer.quantized_keys.group_size is None and layer.quantized_keys.scale.shape[-1] == 1
    layer = QuantizedLayer(nbits=4, residual_length=0, q_group_size=8)
    layer.update(*_kv(1, dim=64))
    assert layer.quantized_keys.group_size == 8
    layer = QuantizedLayer(nbits=8, residual_length=0)
    layer.update(*_kv(1, dim=64))
    assert layer.quantized_keys.group_size is None
    with pytest.raises(ValueError) as error:
        QuantizedLayer(nbits=4).update(*_kv(1, dim=5))
    assert str(error.value) == "int4 packing needs an even head_dim, got 5"


def test_quantized_cache_settings_reach_its_layers():
    assert (QuantizedCache().nbits, QuantizedCache().residual_length, QuantizedCache().q_group_size) == (8, 32, None)
    layer = QuantizedCache(backend="quanto", config=None, nbits=4, residual_length=7, q_group_size=16).layer(0)
    assert (layer.nbits, layer.residual_length, layer.q_group_size) == (4, 7, 16)
    assert QuantizedLayer().nbits == 8 and QuantizedLayer().residual_length == 32


def test_int4_store_dense_and_value_groups_and_no_empty_moves():
    store = QuantizedTensor(4)
    x = torch.tensor([[[[0.0, 5.0, 10.0, 15.0]]]])
    store.append(x)
    assert torch.equal(store.dense(), x)
    layer = QuantizedLayer(nbits=8, residual_length=0, q_group_size=2)
    layer.update(*_kv(1))
    assert layer.quantized_keys.scale.shape[-1] == layer.quantized_values.scale.shape[-1] == 2
    layer = QuantizedLayer(nbits=8, residual_length=2)
    layer.update(*_kv(2))  # exactly the residual: nothing is quantized
    assert layer.quantized_keys.codes is None and len(layer.tensors()) == 2
