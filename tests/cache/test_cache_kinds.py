"""Every cache kind on a tiny random Llama: greedy tokens against the dynamic cache and transformers."""

from __future__ import annotations

import pytest
import torch
import transformers

from tokenmill import AutoModelForCausalLM
from tokenmill.cache import (Cache, DynamicCache, LayerCache, OffloadedCache, QuantizedCache, SinkCache, SlidingWindowCache,
                             StaticCache)
from tokenmill.cache import factory

from numerics import (agreement_tolerance, assert_logits_within_bound, assert_runs_agree, float64_twin, matmuls,
                      reduction_len)

GREEDY = dict(max_new_tokens=24, min_new_tokens=24, do_sample=False)


def tiny_config(**overrides) -> transformers.LlamaConfig:
    fields = dict(vocab_size=97, hidden_size=48, intermediate_size=76, num_hidden_layers=3, num_attention_heads=6,
                  num_key_value_heads=2, max_position_embeddings=128, bos_token_id=1, eos_token_id=2,
                  pad_token_id=0)
    return transformers.LlamaConfig(**{**fields, **overrides})


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    torch.manual_seed(0)
    oracle = transformers.LlamaForCausalLM(tiny_config()).eval()
    folder = tmp_path_factory.mktemp("tiny-llama-cache")
    oracle.save_pretrained(folder)
    return oracle, AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)


def padded_prompts(batch=3, length=12):
    ids = torch.randint(3, 97, (batch, length), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    ids[1, :4], mask[1, :4] = 0, 0  # one left-padded row
    return ids, mask


@pytest.fixture(scope="module")
def reference(pair):
    oracle, model = pair
    ids, mask = padded_prompts()
    expected = oracle.generate(ids, attention_mask=mask, **GREEDY)
    assert torch.equal(model.generate(ids, attention_mask=mask, **GREEDY), expected)
    return ids, mask, expected


EXACT_KINDS = {
    "static": None,
    "offloaded": None,
    "sliding_window": {"sliding_window": 64},  # 36 positions: within the window
    "sink": {"window_length": 64, "num_sink_tokens": 4},
}


@pytest.mark.parametrize("kind", sorted(EXACT_KINDS))
def test_exact_kind_by_name_matches_dynamic_and_transformers(pair, reference, kind):
    _, model = pair
    ids, mask, expected = reference
    out = model.generate(ids, attention_mask=mask, cache_implementation=kind, cache_config=EXACT_KINDS[kind],
                         **GREEDY)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("make", [
    lambda: StaticCache(max_cache_len=40), lambda: OffloadedCache(), lambda: SlidingWindowCache(sliding_window=40),
    lambda: SinkCache(window_length=40, num_sink_tokens=2), lambda: DynamicCache(),
], ids=["static", "offloaded", "sliding", "sink", "dynamic"])
def test_cache_objects_passed_in_like_transformers(pair, reference, make):
    _, model = pair
    ids, mask, expected = reference
    cache = make()
    out = model.generate(ids, attention_mask=mask, past_key_values=cache, return_dict_in_generate=True, **GREEDY)
    assert torch.equal(out.sequences, expected)
    assert out.past_key_values is cache and cache.get_seq_length() == expected.shape[1] - 1


def test_static_cache_matches_transformers_static_cache(pair, reference):
    oracle, model = pair
    ids, mask, _ = reference
    expected = oracle.generate(ids, attention_mask=mask, cache_implementation="static", **GREEDY)
    assert torch.equal(model.generate(ids, attention_mask=mask, cache_implementation="static", **GREEDY), expected)


def test_static_cache_logits_equal_dynamic_step_by_step(pair):
    _, model = pair
    ids, mask = padded_prompts()
    static, dynamic = StaticCache(max_cache_len=30), DynamicCache()
    with torch.no_grad():
        for cache in (static, dynamic):
            cache.logits = [model(ids, attention_mask=mask, past_key_values=cache).logits[:, -1]]
        for step in range(6):  # feed the same tokens to both
            token = torch.full((ids.shape[0], 1), 5 + step)
            mask = torch.cat([mask, torch.ones_like(token)], dim=1)
            for cache in (static, dynamic):
                cache.logits.append(model(token, attention_mask=mask, past_key_values=cache).logits[:, -1])
    shape = reduction_len(model.config, mask.shape[1]), matmuls(model.config)  # tests/numerics.py's agreement bound
    assert_runs_agree(torch.stack(static.logits), torch.stack(dynamic.logits), *shape, "static against dynamic cache")


def test_sliding_window_past_the_window_matches_transformers_mistral(pair):
    """A Llama + a sliding cache of W is a Mistral with sliding_window=W: compare past the window."""
    oracle, model = pair
    window = 10
    mistral = transformers.MistralForCausalLM(transformers.MistralConfig(**{
        **tiny_config().to_dict(), "model_type": "mistral", "sliding_window": window})).eval()
    mistral.load_state_dict(oracle.state_dict())
    ids = torch.randint(3, 97, (2, 16), generator=torch.Generator().manual_seed(5))  # prefill already > W
    kwargs = dict(GREEDY, output_logits=True, return_dict_in_generate=True)
    expected = mistral.generate(ids, **kwargs)
    exact = float64_twin(mistral).generate(ids, **kwargs)
    out = model.generate(ids, past_key_values=SlidingWindowCache(sliding_window=window), **kwargs)
    assert torch.equal(out.sequences, expected.sequences) and torch.equal(exact.sequences, expected.sequences)
    assert_logits_within_bound(torch.stack(out.logits), torch.stack(expected.logits), torch.stack(exact.logits),
                               reduction_len(mistral.config, out.sequences.shape[1]), matmuls(mistral.config),
                               "sliding window cache")
    assert out.past_key_values.layers[0].keys.shape[-2] == window - 1  # bounded memory


def attend(query, keys, values):
    return torch.nn.functional.scaled_dot_product_attention(query, keys, values)


@pytest.mark.parametrize("window,sinks", [(6, 0), (8, 3)])
def test_window_layer_attends_exactly_sinks_plus_recent(window, sinks):
    """Step by step, attention through the cache equals attention over the explicitly chosen positions."""
    cache = SinkCache(window_length=window, num_sink_tokens=sinks) if sinks else SlidingWindowCache(sliding_window=window)
    generator = torch.Generator().manual_seed(0)
    all_keys = torch.randn(1, 2, 30, 4, generator=generator)
    all_values = torch.randn(1, 2, 30, 4, generator=generator)
    queries = torch.randn(1, 2, 30, 4, generator=generator)
    layer = cache.layer(0)
    chunks = [(0, 9), (9, 10), (10, 14)] + [(p, p + 1) for p in range(14, 30)]  # a long prefill, then decode
    for start, stop in chunks:
        keys, values = layer.update(all_keys[:, :, start:stop], all_values[:, :, start:stop])
        allowed, is_causal = layer.visible_mask(None, stop - start > 1, stop - start)
        for offset, position in enumerate(range(start, stop)):
            row = allowed[..., offset:offset + 1, :] if allowed is not None else None
            got = torch.nn.functional.scaled_dot_product_attention(
                queries[:, :, position:position + 1], keys, values, attn_mask=row)
            chosen = [p for p in range(position + 1) if p < sinks or p > position - (window - sinks)]
            want = attend(queries[:, :, position:position + 1], all_keys[:, :, chosen], all_values[:, :, chosen])
            # the same keys, masked or gathered: q.k and p.v of length <= 30 summed in other orders (tests/numerics.py,
            # two products; an attention output is an average of values, so max|values| is its magnitude)
            atol = agreement_tolerance(30, 2, want.numel(), float(all_values.abs().max()))
            torch.testing.assert_close(got, want, atol=atol, rtol=0)
    assert layer.keys.shape[-2] == window - 1 and cache.get_seq_length() == 30


def test_sink_generation_keeps_going_past_the_window(pair):
    _, model = pair
    ids = torch.randint(3, 97, (1, 20), generator=torch.Generator().manual_seed(7))
    out = model.generate(ids, cache_implementation="sink", cache_config={"window_length": 16, "num_sink_tokens": 4},
                         max_new_tokens=60, min_new_tokens=60, do_sample=False, return_dict_in_generate=True,
                         output_logits=True)
    assert out.sequences.shape[1] == 80 and all(torch.isfinite(step).all() for step in out.logits)
    layer = out.past_key_values.layers[0]
    assert layer.keys.shape[-2] == 15 and layer.seen == 79


def test_resilient_generate_falls_back_to_offloaded_on_out_of_memory(pair, reference, monkeypatch):
    _, model = pair
    ids, mask, expected = reference

    class ExhaustedLayer(LayerCache):
        def update(self, keys, values):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setitem(factory.CACHE_KINDS, "exhausted", lambda *args: Cache(lambda index: ExhaustedLayer()))
    with pytest.warns(RuntimeWarning, match="offloaded"):
        out = model.generate(ids, attention_mask=mask, cache_implementation="exhausted", resilient=True,
                             return_dict_in_generate=True, **GREEDY)
    assert torch.equal(out.sequences, expected) and isinstance(out.past_key_values, OffloadedCache)
    with pytest.raises(torch.OutOfMemoryError):
        model.generate(ids, attention_mask=mask, cache_implementation="exhausted", **GREEDY)


def test_bad_cache_requests_raise_clear_errors(pair):
    _, model = pair
    ids = torch.randint(3, 97, (1, 8))
    with pytest.raises(ValueError, match="unknown cache_implementation 'bogus'"):
        model.generate(ids, cache_implementation="bogus", **GREEDY)
    with pytest.raises(ValueError, match="sliding_window"):
        model.generate(ids, cache_implementation="sliding_window", **GREEDY)
    with pytest.raises(ValueError, match="static cache is full"):
        model.generate(ids, past_key_values=StaticCache(max_cache_len=10), **GREEDY)
    with pytest.raises(ValueError, match="nbits"):
        QuantizedCache(nbits=3)
    with pytest.raises(ValueError, match="num_sink_tokens"):
        SinkCache(window_length=4, num_sink_tokens=4)


@pytest.mark.parametrize("kind", ["static", "offloaded", "sliding_window", "quantized"])
def test_beam_search_reorders_every_kind(pair, kind):
    """Beam search reorders rows through the cache; exact kinds (and int8 inside its residual) match dynamic."""
    _, model = pair
    ids = torch.randint(3, 97, (2, 10), generator=torch.Generator().manual_seed(0))
    kwargs = dict(max_new_tokens=12, min_new_tokens=12, do_sample=False, num_beams=3)
    options = {"sliding_window": {"sliding_window": 64}, "quantized": {"nbits": 8, "residual_length": 64}}
    expected = model.generate(ids, **kwargs)
    assert torch.equal(model.generate(ids, cache_implementation=kind, cache_config=options.get(kind), **kwargs),
                       expected)
