"""A new family is one file: dropped into tokenmill/models (here: a throwaway module on the package's path), the
registry finds its model_type and its GGUF architecture, and a GGUF file of that architecture loads with no
edit anywhere else."""

from __future__ import annotations

import sys

import pytest
import torch

import tokenmill.models as models
from test_gguf import tiny_model, write_tiny_gguf
from tokenmill import AutoModelForCausalLM
from tokenmill.errors import UnsupportedArchitectureError
from tokenmill.loading.gguf import GGUFCheckpoint
from tokenmill.models import registry

# five letters like "qwen2", so renaming the architecture in a written file keeps every offset
TOY_ARCH = "toyq2"
TOY_FAMILY_SOURCE = f'''
from tokenmill.loading.gguf_arch import ArchSpec, decoder_config
from tokenmill.models.family import Family
from tokenmill.models.qwen2 import Qwen2ForCausalLM


class ToyForCausalLM(Qwen2ForCausalLM):
    pass


GGUF = ArchSpec("{TOY_ARCH}", lambda m, tensors, read: decoder_config(m, tensors, "toy", "ToyForCausalLM"))
FAMILY = Family("toy", ToyForCausalLM, gguf=GGUF)
'''


def _forget_discovery():
    registry.families.cache_clear()
    registry.gguf_architectures.cache_clear()


@pytest.fixture
def toy_family(tmp_path, monkeypatch):
    folder = tmp_path / "families"
    folder.mkdir()
    (folder / "toy_family.py").write_text(TOY_FAMILY_SOURCE)
    monkeypatch.setattr(models, "__path__", [*models.__path__, str(folder)])
    _forget_discovery()
    yield
    monkeypatch.undo()
    sys.modules.pop("tokenmill.models.toy_family", None)
    _forget_discovery()


@pytest.fixture
def qwen2_and_toy_files(tmp_path):
    torch.manual_seed(0)
    qwen2 = tmp_path / "qwen2.gguf"
    write_tiny_gguf(qwen2, "qwen2", tiny_model("qwen2"))
    data = qwen2.read_bytes()
    toy = tmp_path / "toy.gguf"
    toy.write_bytes(data.replace(b"qwen2", TOY_ARCH.encode()))  # general.architecture and every "qwen2." key
    return qwen2, toy


def test_unknown_until_its_file_exists(qwen2_and_toy_files):
    with pytest.raises(UnsupportedArchitectureError, match=TOY_ARCH):
        AutoModelForCausalLM.from_pretrained(qwen2_and_toy_files[1])


def test_the_registry_and_the_gguf_lookup_find_a_new_family_file(toy_family, qwen2_and_toy_files):
    qwen2_path, toy_path = qwen2_and_toy_files
    assert "toy" in registry.supported_model_types()
    assert registry.gguf_architectures()[TOY_ARCH] is registry.families()["toy"].gguf
    assert GGUFCheckpoint(toy_path, registry.gguf_architectures()).config_dict()["model_type"] == "toy"

    toy = AutoModelForCausalLM.from_pretrained(toy_path)
    assert isinstance(toy, registry.model_class("toy")) and toy.config.model_type == "toy"
    reference = AutoModelForCausalLM.from_pretrained(qwen2_path)
    ids = torch.tensor([[1, 5, 9, 14, 3, 40]])
    with torch.no_grad():
        torch.testing.assert_close(toy(ids).logits, reference(ids).logits, rtol=0, atol=0)


def test_the_unsupported_error_lists_the_new_architecture(toy_family, tmp_path, qwen2_and_toy_files):
    data = qwen2_and_toy_files[0].read_bytes()
    odd = tmp_path / "odd.gguf"
    odd.write_bytes(data.replace(b"qwen2", b"mmmm9"))
    with pytest.raises(UnsupportedArchitectureError, match="mmmm9") as error:
        GGUFCheckpoint(odd, registry.gguf_architectures())
    assert TOY_ARCH in error.value.supported and "qwen2" in error.value.supported
