"""The transformers-style façade: arguments it cannot honour are refused, not ignored."""

from __future__ import annotations

import pytest

from tokenmill import AutoModelForCausalLM


@pytest.mark.parametrize("argument", [{"load_in_4bit": True}, {"load_in_8bit": True},
                                      {"quantization_config": {"load_in_4bit": True}}])
def test_quantizing_a_gguf_is_refused(smollm2_gguf, argument):
    # its weights are quantized already: quantizing them again is an error, not a silent double rounding
    with pytest.raises(ValueError, match="is a GGUF file: its weights are stored quantized already"):
        AutoModelForCausalLM.from_pretrained(str(smollm2_gguf), **argument)


def test_quantization_arguments_set_to_false_are_harmless(smollm2_gguf):
    model = AutoModelForCausalLM.from_pretrained(str(smollm2_gguf), load_in_4bit=False, quantization_config=None)
    assert model.config.vocab_size > 0
