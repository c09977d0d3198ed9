"""A tiny random Llama saved with transformers' own classes, loaded by tokenmill (the engine's test model)."""

import json

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


@pytest.fixture(scope="session")
def char_tokenizer(tmp_path_factory):
    """A byte-level BPE with one token per printable ASCII character (no merges; byte-level spells space "Ġ")
    and an eos token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from tokenmill.tokenizer.tokenizer import Tokenizer as MillTokenizer

    printable = [chr(c) for c in range(0x20, 0x7F)]  # 95 one-character tokens + eos (id 95) = the tiny model's 96
    vocab = {("Ġ" if ch == " " else ch): i for i, ch in enumerate(printable)}
    vocab["<eos>"] = len(printable)
    backend = Tokenizer(models.BPE(vocab, [], unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(["<eos>"])
    folder = tmp_path_factory.mktemp("char-tokenizer")
    backend.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<eos>"}))
    return MillTokenizer.from_folder(folder)
