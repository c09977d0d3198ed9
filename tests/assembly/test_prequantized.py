"""GPTQ and AWQ folders: built here to the published layouts by a packer written from the format description
(independent of the loader's unpacker), loaded into block types where they are exact and dense otherwise; the
logits match transformers running the dequantized weights, within the float32 rounding bound, and greedy
decoding gives the same tokens."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from tokenmill import AutoModelForCausalLM
from tokenmill.assembly.quantization_config import QuantizationConfigError
from tokenmill.errors import CheckpointError
from tokenmill.kernels.gguf_types import BY_NAME
from tokenmill.layers.permuted_linear import PermutedLinear
from tokenmill.layers.quantized_linear import DENSE_ABOVE_ROWS, QuantizedLinear

from numerics import assert_matches_oracle

AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]  # AutoAWQ's GEMM layout: word position i holds output feature AWQ_ORDER[i]


def reference_quantize(weight: torch.Tensor, bits: int, group_of: torch.Tensor, groups: int, symmetric: bool):
    """GPTQ's round-to-nearest grid per (group, output): codes [out, in], float16 scales and zeros [groups, out]."""
    top = 2 ** bits - 1
    scales = torch.empty(groups, weight.shape[0])
    zeros = torch.empty(groups, weight.shape[0], dtype=torch.int64)
    for group in range(groups):
        part = weight[:, group_of == group]
        low, high = part.min(1).values.clamp(max=0), part.max(1).values.clamp(min=0)
        if symmetric:
            high = torch.maximum(low.abs(), high)
            scales[group] = (2 * high / top).half().float()
            zeros[group] = (top + 1) // 2
        else:
            scales[group] = ((high - low) / top).half().float()
            zeros[group] = torch.round(-low / scales[group]).clamp(1, top).long()  # 1..: see the v1 note below
    codes = torch.clamp(torch.round(weight / scales[group_of].T) + zeros[group_of].T, 0, top).long()
    dequantized = scales[group_of].T * (codes - zeros[group_of].T)
    return codes, scales, zeros, dequantized


def pack_words(values: np.ndarray, bits: int, axis: int, order=None) -> torch.Tensor:
    """Integers along `axis` packed 32 // bits to an int32 word, the first in the lowest bits (`order`: which
    of each word's features sits at position i)."""
    per_word = 32 // bits
    values = np.moveaxis(values.astype(np.uint64), axis, 0)
    words = np.zeros((values.shape[0] // per_word,) + values.shape[1:], dtype=np.uint64)
    for position in range(per_word):
        source = order[position] if order else position
        words |= values[source::per_word] << np.uint64(bits * position)
    return torch.from_numpy(np.moveaxis(words.astype(np.uint32).view(np.int32), 0, axis).copy())


def build_checkpoint(oracle, folder, method: str, bits: int, group_size: int, symmetric: bool,
                     desc_act: bool = False, v2: bool = False, positive: bool = False):
    """Write `oracle`'s decoder linears packed as `method` into `folder`; the oracle gets the dequantized values
    (`positive`: of the weights' magnitudes, so that each group's zero is at the bottom of its range)."""
    torch.manual_seed(1)
    tensors = {}
    state = oracle.state_dict()
    for name, module in oracle.named_modules():
        if type(module) is not nn.Linear or name == "lm_head":
            continue
        weight = module.weight.detach().abs() if positive else module.weight.detach()
        in_features = weight.shape[1]
        size = in_features if group_size == -1 else group_size
        group_of = torch.arange(in_features) // size
        if desc_act:  # act-order: the groups follow a permutation of the input features
            group_of = group_of[torch.argsort(torch.randperm(in_features))]
        codes, scales, zeros, dequantized = reference_quantize(weight, bits, group_of, in_features // size,
                                                               symmetric)
        module.weight.data.copy_(dequantized)
        del state[f"{name}.weight"]
        stored_zeros = zeros.numpy() - (0 if method == "awq" or v2 else 1)  # AutoGPTQ's format stores z - 1
        if method == "gptq":
            tensors[f"{name}.qweight"] = pack_words(codes.T.numpy(), bits, axis=0)
            tensors[f"{name}.qzeros"] = pack_words(stored_zeros, bits, axis=1)
            tensors[f"{name}.g_idx"] = group_of.to(torch.int32)
        else:
            tensors[f"{name}.qweight"] = pack_words(codes.T.numpy(), bits, axis=1, order=AWQ_ORDER)
            tensors[f"{name}.qzeros"] = pack_words(stored_zeros, bits, axis=1, order=AWQ_ORDER)
        tensors[f"{name}.scales"] = scales.half()
    tensors.update({name: t.detach().clone() for name, t in state.items()})
    oracle.config.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = (
        {"quant_method": "gptq", "bits": bits, "group_size": group_size, "desc_act": desc_act, "sym": symmetric,
         "checkpoint_format": "gptq_v2" if v2 else "gptq"} if method == "gptq" else
        {"quant_method": "awq", "bits": bits, "group_size": group_size, "zero_point": True, "version": "gemm"})
    (folder / "config.json").write_text(json.dumps(config))
    save_file(tensors, folder / "model.safetensors")
    return folder


def tiny_oracle():
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2)
    return transformers.LlamaForCausalLM(config).eval()


CASES = {  # name → (method, bits, group_size, symmetric, desc_act, v2, positive, the layers' block type or dense)
    "gptq4-sym-g32": ("gptq", 4, 32, True, False, False, False, "Q4_0"),
    "gptq4-asym-g64": ("gptq", 4, 64, False, False, False, False, "Q5_0"),
    "gptq4-asym-v2-g32": ("gptq", 4, 32, False, False, True, False, "Q5_0"),
    "gptq8-sym-channel": ("gptq", 8, -1, True, False, False, False, "Q8_0"),
    "gptq8-asym-g32": ("gptq", 8, 32, False, False, False, True, None),  # q - z up to 254: no int8 block holds it
    # act-order: the groups are scattered over the features; sorted by group at load, they fill whole blocks
    "gptq4-act-order-g32": ("gptq", 4, 32, False, True, False, False, "Q5_0"),
    "gptq4-sym-act-order-g64": ("gptq", 4, 64, True, True, False, False, "Q4_0"),
    "gptq8-sym-act-order-g32": ("gptq", 8, 32, True, True, False, False, "Q8_0"),
    "gptq4-act-order-g16": ("gptq", 4, 16, False, True, False, False, None),  # groups of 16 cut any block
    "awq4-g32": ("awq", 4, 32, False, False, False, False, "Q5_0"),
}


@pytest.mark.parametrize("case", CASES)
def test_loaded_logits_and_greedy_tokens_match_the_dequantized_model(case, tmp_path):
    method, bits, group_size, symmetric, desc_act, v2, positive, block_type = CASES[case]
    oracle = tiny_oracle()
    folder = build_checkpoint(oracle, tmp_path, method, bits, group_size, symmetric, desc_act, v2, positive)
    if block_type is None:
        with pytest.warns(RuntimeWarning, match="14 of 14 .* dequantized to dense float"):
            model = AutoModelForCausalLM.from_pretrained(folder, progress=False)
    else:
        model = AutoModelForCausalLM.from_pretrained(folder, progress=False)
    projection = model.model.layers[1].self_attn.o_proj
    if block_type is None:
        assert type(projection) is nn.Linear
    else:
        assert isinstance(projection, QuantizedLinear) and projection.ggml_type == BY_NAME[block_type].type_id
        # act-order's features reordered where the groups are several (down_proj: 128 inputs)
        assert isinstance(model.model.layers[1].mlp.down_proj, PermutedLinear) == desc_act
        assert model.execution_policy.weight_format == "gguf-blocks"
    assert type(model.lm_head) is nn.Linear
    ids = torch.tensor([[1, 5, 9, 33, 2, 17, 60, 4, 4, 21, 90, 7]])
    # a prefill past DENSE_ABOVE_ROWS: the blocks dequantized once into one dense matmul, in the stored order
    long_ids = torch.randint(0, 96, (1, DENSE_ABOVE_ROWS + 8), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert_matches_oracle(model(ids).logits, oracle, ids, label=case)
        assert_matches_oracle(model(long_ids).logits, oracle, long_ids, label=f"{case}, long prefill")
        assert torch.equal(model.generate(ids, max_new_tokens=8, do_sample=False),
                           oracle.generate(ids, max_new_tokens=8, do_sample=False))


def test_without_kernels_every_layer_runs_dense_with_one_warning(tmp_path):
    oracle = tiny_oracle()
    folder = build_checkpoint(oracle, tmp_path, "gptq", 4, 32, True)
    with pytest.warns(RuntimeWarning, match="without the block kernels") as caught:
        model = AutoModelForCausalLM.from_pretrained(folder, progress=False, kernels="torch")
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1
    assert not model.is_quantized()
    ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    with torch.no_grad():
        assert_matches_oracle(model(ids).logits, oracle, ids, label="dense gptq")


@pytest.mark.parametrize("desc_act", [False, True], ids=["in-order", "act-order"])
def test_a_saved_prequantized_model_reloads_as_float_to_the_same_logits(tmp_path, desc_act):
    oracle = tiny_oracle()
    folder = build_checkpoint(oracle, tmp_path / "gptq", "gptq", 4, 64, False, desc_act)
    model = AutoModelForCausalLM.from_pretrained(folder, progress=False)
    assert isinstance(model.model.layers[0].mlp.down_proj, PermutedLinear) == desc_act
    model.save_pretrained(tmp_path / "saved")
    assert "quantization_config" not in json.loads((tmp_path / "saved" / "config.json").read_text())
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved", progress=False)
    ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    with torch.no_grad():
        assert_matches_oracle(reloaded(ids).logits, oracle, ids, label="saved gptq")


def _edited(folder, config_edit=None, drop: str | None = None):
    if config_edit:
        config = json.loads((folder / "config.json").read_text())
        config["quantization_config"].update(config_edit)
        (folder / "config.json").write_text(json.dumps(config))
    if drop:
        from safetensors.torch import load_file

        tensors = load_file(folder / "model.safetensors")
        del tensors[drop]
        save_file(tensors, folder / "model.safetensors")
    return folder


@pytest.mark.parametrize("config_edit, drop, error, message", [
    (None, "model.layers.0.mlp.up_proj.qzeros", CheckpointError, "up_proj lacks model.layers.0.mlp.up_proj.qzeros"),
    (None, "model.layers.1.self_attn.k_proj.scales", CheckpointError, "k_proj.scales"),
    ({"bits": 3}, None, QuantizationConfigError, "bits=3: tokenmill loads 4- and 8-bit gptq"),
    ({"group_size": 48}, None, CheckpointError, "down_proj: group_size 48 does not divide its 128 input features"),
    ({"group_size": 0}, None, QuantizationConfigError, "positive integer or -1"),
    ({"quant_method": "hqq"}, None, QuantizationConfigError, "quant_method 'hqq': tokenmill loads pre-quantized "
                                                             "gptq and awq checkpoints"),
])
def test_bad_checkpoints_are_clear_errors(tmp_path, config_edit, drop, error, message):
    folder = _edited(build_checkpoint(tiny_oracle(), tmp_path, "gptq", 4, 32, True), config_edit, drop)
    with pytest.raises(error, match=message):
        AutoModelForCausalLM.from_pretrained(folder, progress=False)


def test_awq_other_than_gemm_and_quantizing_again_are_refused(tmp_path):
    folder = build_checkpoint(tiny_oracle(), tmp_path, "awq", 4, 32, False)
    with pytest.raises(QuantizationConfigError, match="quantized already: drop the quantization arguments"):
        AutoModelForCausalLM.from_pretrained(folder, progress=False, load_in_8bit=True)
    with pytest.raises(QuantizationConfigError, match="AWQ version 'gemv'"):
        AutoModelForCausalLM.from_pretrained(_edited(folder, {"version": "gemv"}), progress=False)
