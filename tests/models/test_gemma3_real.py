"""The real Gemma 3 270M (Q4_K_M GGUF), loaded by tokenmill and by transformers from the same file.

Both ways tokenmill runs a GGUF are checked: weights dequantized at load ("dense") and weights kept as
Q4_K/Q5_0/Q6_K/Q8_0 blocks with float32 arithmetic in tokenmill's kernels ("gguf-kernels", the CPU default).

Tolerance: both engines are measured against a float64 run of the same dequantized weights; tokenmill's float32
logits must stay within the bound of tests/numerics.py (a multiple of transformers' own float32 error plus the
sqrt(K) rounding floor), whichever kernels (oneDNN, MKL, AVX-512, AVX2, scalar, AMX) the machine runs. Greedy
continuations must be token-identical. One prompt is longer than the 512-token sliding window, so local layers
really drop keys.
"""

from __future__ import annotations

import pytest
import torch

from tokenmill import AutoModelForCausalLM, AutoTokenizer

from numerics import assert_logits_within_bound, matmuls, reduction_len

GREEDY_TOKENS = 16
PROMPTS = [
    "The capital of France is",
    "Here is a short poem about the sea:\n",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "In 1969, the first person to walk on the Moon was",
]
LONG_PROMPT = " ".join(f"Item {i}: the {['red', 'green', 'blue'][i % 3]} box holds {i * 7 % 13} stones."
                       for i in range(60)) + " Summary: the red boxes hold"


@pytest.fixture(scope="module", params=["gguf-kernels", "dense"])
def model(gemma3_gguf, request):
    loaded = AutoModelForCausalLM.from_pretrained(gemma3_gguf, dtype=torch.float32, progress=False,
                                                  keep_quantized=request.param == "gguf-kernels")
    assert loaded.is_quantized() == (request.param == "gguf-kernels")
    loaded.mode = request.param
    return loaded


@pytest.fixture(scope="module")
def oracle(hf_gemma3, hf_gemma3_float64):
    """transformers' float32 logits, float64 logits and greedy continuation per prompt, computed once for both modes."""
    results = {}

    def run(ids: torch.Tensor, logits_to_keep: int = 0, new_tokens: int = GREEDY_TOKENS):
        key = (tuple(ids[0].tolist()), logits_to_keep, new_tokens)
        if key not in results:
            with torch.no_grad():
                results[key] = (hf_gemma3(ids, logits_to_keep=logits_to_keep).logits,
                                hf_gemma3_float64(ids, logits_to_keep=logits_to_keep).logits,
                                hf_gemma3.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                                   max_new_tokens=new_tokens, min_new_tokens=new_tokens))
        return results[key]

    return run


def assert_within_bound(model, ours, theirs, exact, ids, label):
    assert_logits_within_bound(ours, theirs, exact, reduction_len(model.config, ids.shape[1]),
                               matmuls(model.config), f"{model.mode} {label}")


@pytest.fixture(scope="module")
def tokenizer(gemma3_gguf):
    return AutoTokenizer.from_pretrained(gemma3_gguf)


def test_config_is_gemma3_with_local_and_global_layers(model):
    assert type(model).__name__ == "Gemma3ForCausalLM"
    windows = [layer.sliding_window for layer in model.model.layers]
    assert windows[5] is None and windows[0] == 512 and windows.count(None) == len(windows) // 6


def test_tokenizer_matches_transformers(tokenizer, hf_gemma3_tokenizer):
    for prompt in PROMPTS + [LONG_PROMPT]:
        assert tokenizer(prompt).input_ids == hf_gemma3_tokenizer(prompt).input_ids


@pytest.mark.parametrize("prompt", PROMPTS)
def test_logits_and_greedy_continuation_match(model, oracle, hf_gemma3_tokenizer, prompt):
    ids = hf_gemma3_tokenizer(prompt, return_tensors="pt").input_ids
    expected_logits, exact_logits, expected = oracle(ids)
    with torch.no_grad():
        assert_within_bound(model, model(ids).logits, expected_logits, exact_logits, ids, repr(prompt))
        actual = model.generate(ids, do_sample=False, max_new_tokens=GREEDY_TOKENS, min_new_tokens=GREEDY_TOKENS)
    assert actual.tolist() == expected.tolist()


def test_prompt_longer_than_the_sliding_window(model, oracle, hf_gemma3_tokenizer):
    ids = hf_gemma3_tokenizer(LONG_PROMPT, return_tensors="pt").input_ids
    assert ids.shape[1] > 512 + 50
    theirs, exact, expected = oracle(ids, logits_to_keep=64, new_tokens=8)
    with torch.no_grad():
        assert_within_bound(model, model(ids, logits_to_keep=64).logits, theirs, exact, ids, "long prompt")
        actual = model.generate(ids, do_sample=False, max_new_tokens=8, min_new_tokens=8)
    assert actual.tolist() == expected.tolist()
