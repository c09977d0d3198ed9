"""The fast decode step: fused q/k/v and gate/up projections keep names, memory and transformers parity."""

from __future__ import annotations

import pytest
import torch
import transformers

from tokenmill import AutoModelForCausalLM
from tokenmill.layers.attention import Attention
from tokenmill.layers.mlp import GatedMLP

from numerics import (assert_logits_within_bound, assert_matches_oracle, assert_runs_agree, float64_twin, matmuls,
                      reduction_len)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=97, hidden_size=48, intermediate_size=76, num_hidden_layers=2,
                                      num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64,
                                      attention_bias=True)
    oracle = transformers.LlamaForCausalLM(config).eval()
    folder = tmp_path_factory.mktemp("tiny-llama-fused")
    oracle.save_pretrained(folder)
    return oracle, folder


def fused_modules(model):
    return [m for m in model.modules() if isinstance(m, (Attention, GatedMLP))]


def test_projections_are_fused_views_with_unchanged_names(pair):
    oracle, folder = pair
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert set(model.state_dict()) == set(oracle.state_dict())
    attention = model.model.layers[0].self_attn
    fused = attention._qkv
    assert fused is not None and fused.is_current()
    assert attention.q_proj.weight.untyped_storage().data_ptr() == fused.weight.untyped_storage().data_ptr()
    assert attention.v_proj.bias.untyped_storage().data_ptr() == fused.bias.untyped_storage().data_ptr()
    assert model.model.layers[0].mlp._gate_up.is_current()
    for name, tensor in model.state_dict().items():  # the same values as the checkpoint: views, not copies
        torch.testing.assert_close(tensor, oracle.state_dict()[name], atol=0, rtol=0)


def test_fused_step_equals_separate_projections_and_transformers(pair):
    oracle, folder = pair
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    ids = torch.randint(0, 97, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fused = model(ids).logits
        for layer in model.model.layers:  # back to three / two matmuls
            layer.self_attn._qkv, layer.mlp._gate_up = None, None
        separate = model(ids).logits
    # one fused GEMM or three: the same dot products summed in other orders (tests/numerics.py)
    assert_runs_agree(fused, separate, reduction_len(model.config, ids.shape[1]), matmuls(model.config), "fused")
    assert_matches_oracle(fused, oracle, ids, label="fused")


def test_replaced_parameters_fall_back_to_separate_projections(pair):
    oracle, folder = pair
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).double()
    assert not any(m._qkv.is_current() for m in fused_modules(model) if isinstance(m, Attention))
    ids = torch.randint(0, 97, (1, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        # float64 both sides: tests/numerics.py's agreement bound with float64's unit roundoff
        assert_runs_agree(model(ids).logits, oracle.double()(ids).logits, reduction_len(model.config, ids.shape[1]),
                          matmuls(model.config), "float64 separate projections")
    oracle.float()


@pytest.mark.parametrize("batch", [1, 3])  # one row: fused gate/up too; several rows: fused q/k/v only
def test_greedy_generation_matches_transformers(pair, batch):
    oracle, folder = pair
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    ids = torch.randint(3, 97, (batch, 10), generator=torch.Generator().manual_seed(3))
    kwargs = dict(max_new_tokens=20, min_new_tokens=20, do_sample=False, output_logits=True,
                  return_dict_in_generate=True)
    out, expected = model.generate(ids, **kwargs), oracle.generate(ids, **kwargs)
    exact = float64_twin(oracle).generate(ids, **kwargs)
    assert torch.equal(out.sequences, expected.sequences) and torch.equal(exact.sequences, expected.sequences)
    assert_logits_within_bound(torch.stack(out.logits), torch.stack(expected.logits), torch.stack(exact.logits),
                               reduction_len(model.config, out.sequences.shape[1]), matmuls(model.config),
                               f"fused decode, batch {batch}")
