"""Unknown architectures fail with an error naming every supported model_type."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from tokenmill import AutoModelForCausalLM
from tokenmill.errors import UnsupportedArchitectureError
from tokenmill.models.registry import model_class, supported_model_types

FAMILIES = ["gemma", "gemma2", "gemma3_text", "gpt2", "llama", "mistral", "mixtral", "phi3", "qwen2", "qwen2_moe",
            "qwen3"]


def test_every_family_is_registered_and_importable():
    assert set(FAMILIES) <= set(supported_model_types())
    for model_type in FAMILIES:
        assert model_class(model_type).__name__.endswith(("ForCausalLM", "LMHeadModel"))


def test_unknown_model_type_names_the_supported_ones(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "falcon", "vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1,
        "num_attention_heads": 2}))
    save_file({"transformer.word_embeddings.weight": torch.zeros(10, 8)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(UnsupportedArchitectureError) as error:
        AutoModelForCausalLM.from_pretrained(tmp_path)
    message = str(error.value)
    assert "'falcon'" in message
    assert all(name in message for name in FAMILIES)


def test_the_registry_is_what_the_family_files_declare():
    import importlib
    import pkgutil

    import tokenmill.models as models

    declared = {}
    for info in pkgutil.iter_modules(models.__path__):
        family = getattr(importlib.import_module(f"tokenmill.models.{info.name}"), "FAMILY", None)
        if family is not None:
            declared[family.model_type] = family.causal_lm
            assert family.causal_lm.__module__ == f"tokenmill.models.{info.name}"  # declared beside its class
    assert sorted(declared) == supported_model_types() == sorted(FAMILIES)
    assert all(model_class(model_type) is cls for model_type, cls in declared.items())
