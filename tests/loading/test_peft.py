"""The PEFT LoRA reader: factors and scales as peft computes them, and every unsupported or broken folder refused
with the file and field named."""

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from tokenmill.loading.peft import AdapterError, module_scale, read_peft_lora

PREFIX = "base_model.model.model.layers.0.self_attn"


def _folder(tmp_path, config: dict, tensors: dict | None = None):
    settings = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, **config}
    (tmp_path / "adapter_config.json").write_text(json.dumps(settings))
    if tensors is None:
        tensors = {f"{PREFIX}.q_proj.lora_A.weight": torch.randn(2, 8),
                   f"{PREFIX}.q_proj.lora_B.weight": torch.randn(6, 2),
                   f"{PREFIX}.v_proj.lora_A.weight": torch.randn(4, 8),
                   f"{PREFIX}.v_proj.lora_B.weight": torch.randn(3, 4)}
    save_file(tensors, tmp_path / "adapter_model.safetensors")
    return tmp_path


def test_factors_and_scales(tmp_path):
    lora = read_peft_lora(_folder(tmp_path, {"rank_pattern": {"v_proj": 4}, "alpha_pattern": {"v_proj": 12}}))
    q, v = lora.modules["model.layers.0.self_attn.q_proj"], lora.modules["model.layers.0.self_attn.v_proj"]
    assert q.a.shape == (2, 8) and q.b.shape == (6, 2) and q.scale == 4 / 2
    assert v.a.shape == (4, 8) and v.scale == 12 / 4  # per-module rank and alpha
    assert not lora.fan_in_fan_out


def test_rslora_scale_is_alpha_over_sqrt_rank():
    assert module_scale({"lora_alpha": 8, "use_rslora": True}, "x.q_proj", 4) == 8 / math.sqrt(4)
    assert module_scale({"lora_alpha": 8}, "x.q_proj", 4) == 2.0
    assert module_scale({"lora_alpha": 8, "alpha_pattern": {"k_proj": 1}}, "x.q_proj", 4) == 2.0


@pytest.mark.parametrize("config, message", [
    ({"use_dora": True}, "DoRA"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
    ({"bias": "all"}, "trained biases"),
    ({"peft_type": "IA3"}, "peft_type 'IA3' is not supported"),
    ({"layers_to_transform": [0]}, "layers_to_transform"),
])
def test_unsupported_configurations_are_refused(tmp_path, config, message):
    with pytest.raises(AdapterError, match=message):
        read_peft_lora(_folder(tmp_path, config))


@pytest.mark.parametrize("tensors, message", [
    ({f"{PREFIX}.q_proj.lora_A.weight": torch.randn(2, 8)}, "has lora_A but not both A and B"),
    ({f"{PREFIX}.q_proj.lora_A.weight": torch.randn(2, 8), f"{PREFIX}.q_proj.lora_B.weight": torch.randn(6, 3)},
     r"are not \[r, in\] and \[out, r\]"),
    ({f"{PREFIX}.q_proj.lora_magnitude_vector": torch.randn(6)}, "is not a LoRA A/B weight"),
    ({}, "holds no LoRA weights"),
])
def test_broken_weights_are_refused(tmp_path, tensors, message):
    with pytest.raises(AdapterError, match=message):
        read_peft_lora(_folder(tmp_path, {}, tensors))


def test_missing_files_are_named(tmp_path):
    with pytest.raises(AdapterError, match="no adapter_config.json"):
        read_peft_lora(tmp_path)
    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / "adapter_model.bin").write_bytes(b"")
    with pytest.raises(AdapterError, match="adapter_model.bin is not read"):
        read_peft_lora(tmp_path)
    (tmp_path / "adapter_model.safetensors").write_bytes(b"")
    (tmp_path / "adapter_config.json").write_text("{not json")
    with pytest.raises(AdapterError, match="not readable JSON"):
        read_peft_lora(tmp_path)
