"""Tiny random Llama checkpoints shared by the decoding-strategy tests (issue 4): oracle + saved folder."""

from __future__ import annotations

import pytest
import torch
import transformers

VOCAB = 97


def tiny_llama_config(layers: int = 2, vocab: int = VOCAB, eos: int = 2) -> transformers.LlamaConfig:
    return transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=48, intermediate_size=76, num_hidden_layers=layers, num_attention_heads=6,
        num_key_value_heads=2, max_position_embeddings=128, bos_token_id=1, eos_token_id=eos, pad_token_id=0,
    )


def save_tiny_llama(folder, seed: int = 0, logit_scale: float = 1.0, **config_kwargs) -> transformers.LlamaForCausalLM:
    """Build a random transformers Llama, save it to `folder`, return it as the oracle.

    `logit_scale` sharpens the output distribution (random init gives near-uniform next-token probabilities).
    """
    torch.manual_seed(seed)
    oracle = transformers.LlamaForCausalLM(tiny_llama_config(**config_kwargs)).eval()
    with torch.no_grad():
        oracle.lm_head.weight.mul_(logit_scale)
    oracle.generation_config.do_sample = False
    oracle.save_pretrained(folder)
    return oracle


def left_padded_prompts(batch: int = 3, length: int = 6, pads=(2, 0, 1), vocab: int = VOCAB, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, length), generator=generator)
    mask = torch.ones_like(ids)
    for row, pad in enumerate(pads[:batch]):
        ids[row, :pad] = 0
        mask[row, :pad] = 0
    return ids, mask


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Tiny models on a shared 2-core machine run ~10x faster on one intra-op thread (no oversubscription)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
