"""The registry is what the family files declare: model_types and the GGUF architectures each family owns;
unknown architectures fail with an error naming every supported one."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from tokenmill import AutoModelForCausalLM
from tokenmill.errors import UnsupportedArchitectureError
from tokenmill.models.family import Family
from tokenmill.models.registry import families, gguf_architectures, model_class, supported_model_types

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


GGUF_ARCHITECTURES = ["gemma", "gemma2", "gemma3", "gpt2", "llama", "phi3", "qwen2", "qwen2moe", "qwen3"]


def test_every_family_file_declares_its_family():
    import importlib
    import pkgutil

    import tokenmill.models as models
    from tokenmill.models.registry import _SHARED_MODULES

    for info in pkgutil.iter_modules(models.__path__):
        if info.name not in _SHARED_MODULES:
            module = importlib.import_module(f"tokenmill.models.{info.name}")
            assert isinstance(getattr(module, "FAMILY", None), Family), f"models/{info.name}.py declares no FAMILY"


def test_every_gguf_architecture_is_owned_by_exactly_one_family():
    owners: dict[str, list[str]] = {}
    for family in families().values():
        if family.gguf is not None:
            owners.setdefault(family.gguf.name, []).append(family.model_type)
    assert sorted(owners) == sorted(gguf_architectures()) == GGUF_ARCHITECTURES
    assert all(len(model_types) == 1 for model_types in owners.values()), owners
    # llama.cpp writes Mistral and Mixtral as "llama": the llama family owns the name and decides per file
    assert owners["llama"] == ["llama"] and owners["qwen2moe"] == ["qwen2_moe"]


def test_two_families_claiming_one_gguf_architecture_is_an_error(monkeypatch):
    import tokenmill.models.registry as registry

    llama = families()["llama"]
    twin = Family("llama_twin", llama.causal_lm, gguf=llama.gguf)
    monkeypatch.setattr(registry, "families", lambda: {"llama": llama, "llama_twin": twin})
    registry.gguf_architectures.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="'llama' is declared by two families"):
            registry.gguf_architectures()
    finally:
        registry.gguf_architectures.cache_clear()
