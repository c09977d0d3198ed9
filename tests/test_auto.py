"""The transformers-style façade: arguments it cannot honour are refused, not ignored."""

from __future__ import annotations

import pytest

from tokenmill import AutoModelForCausalLM


@pytest.mark.parametrize("argument", [{"load_in_4bit": True}, {"load_in_8bit": True},
                                      {"quantization_config": {"load_in_4bit": True}}])
def test_quantize_on_load_is_refused(smollm2_gguf, argument):
    # these were swallowed by **hub_kwargs and the model loaded unquantized
    with pytest.raises(NotImplementedError, match="quantizing a model at load time is not supported yet"):
        AutoModelForCausalLM.from_pretrained(str(smollm2_gguf), **argument)


def test_quantization_arguments_set_to_false_are_harmless(smollm2_gguf):
    model = AutoModelForCausalLM.from_pretrained(str(smollm2_gguf), load_in_4bit=False, quantization_config=None)
    assert model.config.vocab_size > 0
