"""The classes the assembly builds: the family's class with generate/save_pretrained, same name, picklable."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

from tokenmill.assembly.pretrained_model import pretrained_class
from tokenmill.config import ModelConfig
from tokenmill.generation.generate import GenerationMixin
from tokenmill.models.base import CausalLM
from tokenmill.models.llama import LlamaForCausalLM


@pytest.fixture
def tiny_llama():
    torch.manual_seed(0)
    config = ModelConfig.from_dict({
        "model_type": "llama", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 3,
        "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 64})
    return pretrained_class("llama")(config).eval()


def test_composed_class_is_the_family_class_plus_generate_and_save(tiny_llama):
    composed = type(tiny_llama)
    assert composed is pretrained_class("llama")  # one class per family
    assert (composed.__name__, composed.__module__) == ("LlamaForCausalLM", "tokenmill.models.llama")
    assert isinstance(tiny_llama, LlamaForCausalLM) and isinstance(tiny_llama, GenerationMixin)
    assert not issubclass(LlamaForCausalLM, GenerationMixin)  # the model layer itself stays below generation
    assert callable(tiny_llama.generate) and callable(tiny_llama.save_pretrained)


def test_pickle_and_deepcopy_keep_the_composed_class_and_weights(tiny_llama):
    ids = torch.tensor([[1, 2, 3, 4]])
    expected = tiny_llama(ids).logits
    for twin in (pickle.loads(pickle.dumps(tiny_llama)), copy.deepcopy(tiny_llama)):
        assert type(twin) is type(tiny_llama)
        assert torch.equal(twin(ids).logits, expected)


def test_early_exit_is_a_shallow_view_of_the_first_layers(tiny_llama):
    view = tiny_llama.early_exit(2)
    assert type(view) is type(tiny_llama)
    assert len(view.model.layers) == 2 and len(tiny_llama.model.layers) == 3
    assert all(a is b for a, b in zip(view.model.layers, tiny_llama.model.layers))
    assert view.lm_head is tiny_llama.lm_head and view.model.norm is tiny_llama.model.norm
    assert isinstance(view, CausalLM)
    for bad in (0, 3):
        with pytest.raises(ValueError, match="between 1 and 2"):
            tiny_llama.early_exit(bad)
