"""CausalLM's transformers conveniences on the real embedded GGUF: dequantize, moving it, and `labels` → `.loss`."""

from __future__ import annotations

import pytest
import torch

from tokenmill import AutoModelForCausalLM
from tokenmill.execution.policy import ExecutionPolicyError


@pytest.fixture
def embedded(smollm2_gguf):
    return AutoModelForCausalLM.from_pretrained(str(smollm2_gguf))


def test_dequantize_embedded_gguf_keeps_head_tied(embedded):
    assert embedded.is_quantized()
    ids = torch.tensor([[1, 504, 3458, 314]])
    before = embedded(ids).logits
    embedded.dequantize()  # raised KeyError "attribute 'weight' already exists" in tie_weights
    assert not embedded.is_quantized()
    assert embedded.lm_head.weight is embedded.model.embed_tokens.weight
    torch.testing.assert_close(embedded(ids).logits, before, rtol=1e-3, atol=1e-3)


def test_move_of_embedded_gguf_dequantizes_and_moves(embedded):
    with pytest.warns(RuntimeWarning, match="execution policy"):
        embedded.to("meta")  # stands in for a device move; went through the same failing tie_weights
    assert embedded.device.type == "meta" and not embedded.is_quantized()
    assert embedded.lm_head.weight is embedded.model.embed_tokens.weight


def test_to_cuda_without_cuda_is_a_clear_error_and_leaves_model_intact(embedded, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ExecutionPolicyError, match="device 'cuda' requested but"):
        embedded.to("cuda")
    assert embedded.is_quantized() and embedded.device.type == "cpu"


def test_labels_give_transformers_loss(embedded, hf_smollm2):
    ids = torch.tensor([[1, 504, 3458, 314, 253, 1345, 28], [1, 504, 339, 2767, 5261, 30, 2]])
    labels = ids.clone()
    labels[0, :3] = -100  # ignored positions, as transformers' data collators mark prompts
    embedded.dequantize()
    ours = embedded(ids, labels=labels)
    theirs = hf_smollm2(ids, labels=labels)
    torch.testing.assert_close(ours.loss, theirs.loss, rtol=1e-4, atol=1e-4)
    summed = embedded(ids, labels=labels, num_items_in_batch=5)
    expected = hf_smollm2(ids, labels=labels, num_items_in_batch=5)
    torch.testing.assert_close(summed.loss, expected.loss, rtol=1e-4, atol=1e-4)
    assert embedded(ids).loss is None


def test_labels_of_wrong_shape_are_refused(embedded):
    with pytest.raises(ValueError, match="labels must have shape"):
        embedded(torch.tensor([[1, 2, 3]]), labels=torch.tensor([[1, 2]]))
