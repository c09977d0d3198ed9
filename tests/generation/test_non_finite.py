"""generate() refuses to emit tokens from NaN or infinite logits, naming where the values first went bad."""

from __future__ import annotations

import pytest
import torch

from tokenmill import AutoModelForCausalLM
from tokenmill.errors import NonFiniteLogitsError

from tiny_gguf import write_tiny_llama


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return write_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny.gguf")


def load(path):
    return AutoModelForCausalLM.from_pretrained(path, progress=False, keep_quantized=False)


@pytest.mark.parametrize("do_sample", [False, True])
def test_an_overflowing_layer_is_named(model_path, do_sample):
    model = load(model_path)
    with torch.no_grad():  # finite weights (so the load check passes) whose products overflow float32
        model.model.layers[0].mlp.up_proj.weight.fill_(1e30)
        model.model.layers[0].mlp.down_proj.weight.fill_(1e30)
    with pytest.raises(NonFiniteLogitsError, match=r"row\(s\) \[0, 1\] are NaN or infinite at generation step 0; "
                                                   r"non-finite values first appear in layer 0 \(model.layers.0\)"):
        model.generate(torch.tensor([[1, 5, 6], [1, 7, 8]]), max_new_tokens=3, do_sample=do_sample)


def test_non_finite_embeddings_are_named(model_path):
    model = load(model_path)
    with torch.no_grad():
        model.model.embed_tokens.weight[6] = float("nan")
    with pytest.raises(NonFiniteLogitsError, match="first appear in the token embeddings"):
        model.generate(torch.tensor([[1, 5, 6]]), max_new_tokens=2)


def test_the_last_layer_shares_its_report_with_the_final_norm(model_path):
    """The last hidden state the model reports is after the final norm, so the two cannot be told apart."""
    model = load(model_path)
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight.fill_(1e30)
        model.model.layers[1].mlp.down_proj.weight.fill_(1e30)
    with pytest.raises(NonFiniteLogitsError, match=r"first appear in layer 1 or the final norm \(model.norm\)"):
        model.generate(torch.tensor([[1, 5, 6]]), max_new_tokens=2)


def test_finite_models_generate_as_before(model_path):
    model = load(model_path)
    out = model.generate(torch.tensor([[1, 5, 6]]), max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 7)
