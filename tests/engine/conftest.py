"""A tiny random Llama saved with transformers' own classes, loaded by tokenmill (the engine's test model)."""

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, eos_token_id=None, bos_token_id=None,
        pad_token_id=None, tie_word_embeddings=False,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def hf_tiny(tiny_llama_dir):
    import transformers

    return transformers.LlamaForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def tiny_model(tiny_llama_dir):
    from tokenmill.auto import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32, progress=False)


@pytest.fixture(scope="session")
def hf_greedy(hf_tiny):
    """transformers' greedy continuation of one prompt, alone (memoized)."""
    memo = {}

    def run(prompt: list[int], new_tokens: int, **kwargs) -> list[int]:
        key = (tuple(prompt), new_tokens, tuple(sorted(kwargs.items())))
        if key not in memo:
            with torch.no_grad():
                out = hf_tiny.generate(torch.tensor([prompt]), max_new_tokens=new_tokens, do_sample=False, **kwargs)
            memo[key] = out[0, len(prompt):].tolist()
        return memo[key]

    return run
