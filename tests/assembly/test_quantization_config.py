"""from_pretrained's quantization arguments → one plan, and every request it cannot honour refused clearly."""

from __future__ import annotations

import pytest
import torch

from tokenmill import BitsAndBytesConfig
from tokenmill.assembly.quantization_config import QuantizationConfigError, QuantizationPlan, quantization_plan


def test_transformers_defaults():
    config = BitsAndBytesConfig(load_in_4bit=True)
    assert config.bnb_4bit_quant_type == "fp4" and config.llm_int8_threshold == 6.0
    assert not config.bnb_4bit_use_double_quant and config.quant_method == "bitsandbytes"
    assert BitsAndBytesConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("arguments, plan", [
    ({"load_in_8bit": True}, QuantizationPlan("q8_0")),
    ({"load_in_4bit": True}, QuantizationPlan("fp4")),
    ({"quantization_config": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                bnb_4bit_compute_dtype=torch.bfloat16,
                                                bnb_4bit_use_double_quant=True)},
     QuantizationPlan("nf4", compute_dtype=torch.bfloat16, double_quant=True)),
    ({"quantization_config": BitsAndBytesConfig(load_in_8bit=True, bnb_4bit_use_double_quant=True)},
     QuantizationPlan("q8_0")),  # a 4-bit field: no effect on load_in_8bit, as in transformers
    ({"quantization_config": BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=["mlp"])},
     QuantizationPlan("q8_0", ("mlp",))),
    ({"quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": True,
                              "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": "float32"}},
     QuantizationPlan("nf4", compute_dtype=torch.float32)),
    ({"quantization_config": {"method": "Q4_1", "embeddings": True}}, QuantizationPlan("q4_1", embeddings=True)),
    ({"quantization_config": "q5_0"}, QuantizationPlan("q5_0")),
    ({"load_in_4bit": False, "quantization_config": None}, None),
])
def test_requests_become_plans(arguments, plan):
    assert quantization_plan(**arguments) == plan


@pytest.mark.parametrize("arguments, message", [
    ({"quantization_config": {"method": "q3_x"}}, "unknown quantization method 'q3_x'.*q8_0, q4_0, q4_1"),
    ({"quantization_config": {"method": "iq4_xs"}}, "load a GGUF file that holds it"),
    ({"quantization_config": {"bits": 3}}, "bits must be 4 or 8"),
    ({"quantization_config": {"quant_method": "gptq", "bits": 4}}, "load the gptq folder itself"),
    ({"quantization_config": {"quant_method": "hqq"}}, "pre-quantized hqq checkpoints is not supported"),
    ({"quantization_config": {"quant_method": "fancy"}}, "unknown quant_method 'fancy'"),
    ({"quantization_config": {"method": "q8_0", "blocks": 64}}, r"unknown quantization_config key\(s\) \['blocks'\]"),
    ({"quantization_config": {"load_in_4bit": True, "bnb_4bit_quant_type": "int4"}}, "must be 'nf4' or 'fp4'"),
    ({"quantization_config": {"load_in_4bit": True, "load_in_8bit": True}}, "only one can be used"),
    ({"load_in_8bit": True, "quantization_config": BitsAndBytesConfig(load_in_8bit=True)}, "cannot be passed with"),
    ({"quantization_config": 8}, "must be a BitsAndBytesConfig, a dict or a method name"),
])
def test_bad_requests_are_clear_errors(arguments, message):
    with pytest.raises(QuantizationConfigError, match=message):
        quantization_plan(**arguments)
