"""A tiny random Llama with SmolLM2's tokenizer (chat template included) and no eos: answers run until stopped."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_chat_folder(tmp_path_factory, smollm2_gguf):
    import transformers

    from tokenmill import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_gguf)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                      max_position_embeddings=4096, bos_token_id=None, eos_token_id=None,
                                      pad_token_id=None)
    folder = tmp_path_factory.mktemp("tiny-chat")
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
