"""Llama against transformers on tiny random checkpoints: logits, cache, padding, rope scalings, attention kinds."""

from __future__ import annotations

import pytest
import torch
import transformers

from tokenmill import AutoModelForCausalLM
from tokenmill.cache import DynamicCache

from numerics import assert_logits_within_bound, assert_matches_oracle, float64_twin, matmuls, reduction_len, \
    rounding_floor

ROPE_VARIANTS = {
    "default": None,
    "linear": {"rope_type": "linear", "factor": 2.0},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16},
}


def tiny_llama_config(rope=None, tied=False, bias=False) -> transformers.LlamaConfig:
    config = transformers.LlamaConfig(
        vocab_size=97, hidden_size=48, intermediate_size=76, num_hidden_layers=3, num_attention_heads=6,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=tied, attention_bias=bias,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    if rope is not None:
        config.rope_parameters = {**rope, "rope_theta": 10000.0}
    return config


def save_tiny(tmp_path_factory, name, config, **save_kwargs):
    torch.manual_seed(0)
    oracle = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # transformers starts norms at 1 and biases at 0: perturbed, a dropped one shows
        for parameter in oracle.parameters():
            if parameter.dim() == 1:
                parameter.add_(torch.randn_like(parameter) * 0.2)
    folder = tmp_path_factory.mktemp(name)
    oracle.save_pretrained(folder, **save_kwargs)
    return oracle, folder


@pytest.fixture(scope="module", params=sorted(ROPE_VARIANTS))
def llama_pair(request, tmp_path_factory):
    oracle, folder = save_tiny(tmp_path_factory, f"llama-{request.param}", tiny_llama_config(ROPE_VARIANTS[request.param]))
    return oracle, folder


def prompt_batch(length=40, batch=3, vocab=97, pad_rows=((0, 7), (2, 3))):
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (batch, length), generator=generator)
    mask = torch.ones_like(ids)
    for row, pad in pad_rows:
        ids[row, :pad] = 0
        mask[row, :pad] = 0
    return ids, mask


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_logits_match_oracle_with_left_padding(llama_pair, attn):
    oracle, folder = llama_pair
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation=attn)
    ids, mask = prompt_batch()
    with torch.no_grad():
        actual = model(ids, attention_mask=mask).logits
    real = mask.bool()
    assert_matches_oracle(actual[real], oracle, ids, real, attn, attention_mask=mask)


def test_incremental_decoding_equals_full_recompute(llama_pair):
    _, folder = llama_pair
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    ids, mask = prompt_batch()
    with torch.no_grad():
        full = model(ids, attention_mask=mask, use_cache=False).logits
        cache = DynamicCache()
        pieces = [model(ids[:, :25], attention_mask=mask[:, :25], past_key_values=cache).logits]
        for step in range(25, ids.shape[1]):
            pieces.append(model(ids[:, step:step + 1], attention_mask=mask[:, :step + 1], past_key_values=cache).logits)
    real = mask.bool()
    # both orders measured against the same float64 run: each within the bound, so within twice it of each other
    assert_matches_oracle(torch.cat(pieces, dim=1)[real], llama_pair[0], ids, real, "incremental", attention_mask=mask)
    assert_matches_oracle(full[real], llama_pair[0], ids, real, "recompute", attention_mask=mask)
    assert cache.get_seq_length() == ids.shape[1]


def test_logits_to_keep_and_position_ids(llama_pair):
    oracle, folder = llama_pair
    model = AutoModelForCausalLM.from_pretrained(folder)
    ids, _ = prompt_batch(pad_rows=())
    positions = torch.arange(5, 5 + ids.shape[1]).expand(ids.shape[0], -1)
    with torch.no_grad():
        actual = model(ids, position_ids=positions, logits_to_keep=3).logits
    assert_matches_oracle(actual, oracle, ids, (slice(None), slice(-3, None)), "logits_to_keep", position_ids=positions)


@pytest.mark.parametrize("tied,bias", [(True, False), (False, True)])
def test_tied_embeddings_and_attention_bias(tmp_path_factory, tied, bias):
    oracle, folder = save_tiny(tmp_path_factory, "llama-variant", tiny_llama_config(tied=tied, bias=bias))
    model = AutoModelForCausalLM.from_pretrained(folder)
    ids, mask = prompt_batch()
    with torch.no_grad():
        assert_matches_oracle(model(ids, attention_mask=mask).logits[mask.bool()], oracle, ids, mask.bool(),
                              attention_mask=mask)
    if tied:
        assert model.lm_head.weight is model.model.embed_tokens.weight


def test_sharded_checkpoint_loads_and_matches(tmp_path_factory):
    oracle, folder = save_tiny(tmp_path_factory, "llama-sharded", tiny_llama_config(), max_shard_size="30KB")
    assert (folder / "model.safetensors.index.json").is_file()
    assert len(list(folder.glob("model-*.safetensors"))) > 1
    model = AutoModelForCausalLM.from_pretrained(folder)
    ids, _ = prompt_batch(pad_rows=())
    with torch.no_grad():
        assert_matches_oracle(model(ids).logits, oracle, ids, label="sharded")


def test_bfloat16_load_keeps_dtype(llama_pair):
    oracle, folder = llama_pair
    model = AutoModelForCausalLM.from_pretrained(folder, dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    ids, _ = prompt_batch(pad_rows=())
    with torch.no_grad():
        logits = model(ids).logits
        expected = oracle(ids).logits
    assert logits.dtype == torch.bfloat16
    # bfloat16 storage with float32 accumulation: each product rounds its weights and its output once (u = 2**-8),
    # so the reduction length enters as 2, not K (tests/numerics.py's floor with K=2)
    allowed = rounding_floor(2, matmuls(oracle.config), logits.numel(), float(expected.abs().max()), torch.bfloat16)
    torch.testing.assert_close(logits.float(), expected, atol=allowed, rtol=0)


def test_dynamic_rope_past_the_context_length(tmp_path_factory):
    """Dynamic NTK scaling only acts beyond max_position_embeddings: a 60-token prompt on a 32-token context, and a
    cached decode that crosses the context length, as transformers computes them."""
    config = tiny_llama_config({"rope_type": "dynamic", "factor": 2.0})
    config.max_position_embeddings = 32
    oracle, folder = save_tiny(tmp_path_factory, "llama-dynamic-long", config)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    ids, mask = prompt_batch(length=60)
    with torch.no_grad():
        assert_matches_oracle(model(ids, attention_mask=mask).logits[mask.bool()], oracle, ids, mask.bool(),
                              "past the context", attention_mask=mask)
        short, short_mask = prompt_batch(length=24)
        settings = dict(attention_mask=short_mask, do_sample=False, max_new_tokens=12, min_new_tokens=12, pad_token_id=0,
                        return_dict_in_generate=True, output_logits=True)
        ours, theirs = model.generate(short, **settings), oracle.generate(short, **settings)
        exact = float64_twin(oracle).generate(short, **settings)
    assert ours.sequences.tolist() == theirs.sequences.tolist() == exact.sequences.tolist()
    assert_logits_within_bound(torch.stack(ours.logits), torch.stack(theirs.logits), torch.stack(exact.logits),
                               reduction_len(oracle.config, 36), matmuls(oracle.config), "dynamic rope decode")
    # a prompt longer than the context is what dynamic rope is for: generated (with a warning), as transformers does
    long_ids, long_mask = prompt_batch(length=40)
    settings = dict(attention_mask=long_mask, do_sample=False, max_new_tokens=6, min_new_tokens=6, pad_token_id=0)
    with pytest.warns(UserWarning, match="dynamic rope rescales"), torch.no_grad():
        ours = model.generate(long_ids, **settings)
    with torch.no_grad():
        assert ours.tolist() == oracle.generate(long_ids, **settings).tolist()


def test_mlp_bias(tmp_path_factory):
    config = tiny_llama_config(bias=True)
    config.mlp_bias = True
    oracle, folder = save_tiny(tmp_path_factory, "llama-mlp-bias", config)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.model.layers[0].mlp.up_proj.bias is not None
    ids, mask = prompt_batch()
    with torch.no_grad():
        assert_matches_oracle(model(ids, attention_mask=mask).logits[mask.bool()], oracle, ids, mask.bool(),
                              attention_mask=mask)


def test_per_row_position_ids_and_returned_cache(llama_pair):
    """Rows with their own position offsets; the output's past_key_values continues the sequence."""
    oracle, folder = llama_pair
    model = AutoModelForCausalLM.from_pretrained(folder)
    ids, _ = prompt_batch(pad_rows=())
    positions = torch.arange(ids.shape[1]) + torch.tensor([[0], [3], [11]])
    with torch.no_grad():
        out = model(ids[:, :-1], position_ids=positions[:, :-1])
        assert_matches_oracle(out.logits, oracle, ids[:, :-1], label="per-row positions",
                              position_ids=positions[:, :-1])
        assert out.past_key_values.get_seq_length() == ids.shape[1] - 1
        step = model(ids[:, -1:], position_ids=positions[:, -1:], past_key_values=out.past_key_values).logits
        assert_matches_oracle(step, oracle, ids, (slice(None), slice(-1, None)), "cached step", position_ids=positions)
