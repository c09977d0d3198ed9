"""The real Gemma 3 270M (Q4_K_M GGUF), loaded by tokenmill and by transformers from the same file.

Both ways tokenmill runs a GGUF are checked: weights dequantized at load ("dense") and weights kept as
Q4_K/Q5_0/Q6_K/Q8_0 blocks with float32 arithmetic in tokenmill's kernels ("gguf-kernels", the CPU default).

Tolerance: float32 logits within 1e-4 absolute dense (both dequantize the same blocks to float32; what is left
is summation order — measured 0.0 on this machine), 2e-4 with the kernels (same values, summed block by block). Greedy continuations must be token-identical. One prompt is
longer than the 512-token sliding window, so local layers really drop keys.
"""

from __future__ import annotations

import pytest
import torch

from tokenmill import AutoModelForCausalLM, AutoTokenizer

# float32 both sides, the same dequantized values; only the order of the sums differs. In gguf mode a long prefill
# runs oneDNN's GEMM, whose rounding error is about twice MKL's: 2.6e-4 was measured on the 600-token prompt
# (4e-5 with MKL's), on logits of magnitude up to ~30, i.e. ~1e-5 relative
LOGIT_ATOL = {"dense": 1e-4, "gguf-kernels": 4e-4}
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
def oracle(hf_gemma3):
    """transformers' logits and greedy continuation per prompt ids, computed once for both modes."""
    results = {}

    def run(ids: torch.Tensor):
        key = tuple(ids[0].tolist())
        if key not in results:
            with torch.no_grad():
                results[key] = (hf_gemma3(ids).logits, hf_gemma3.generate(
                    ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=GREEDY_TOKENS,
                    min_new_tokens=GREEDY_TOKENS))
        return results[key]

    return run


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
    expected_logits, expected = oracle(ids)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, expected_logits, atol=LOGIT_ATOL[model.mode], rtol=0)
        actual = model.generate(ids, do_sample=False, max_new_tokens=GREEDY_TOKENS, min_new_tokens=GREEDY_TOKENS)
    assert actual.tolist() == expected.tolist()


def test_prompt_longer_than_the_sliding_window(model, hf_gemma3, hf_gemma3_tokenizer):
    ids = hf_gemma3_tokenizer(LONG_PROMPT, return_tensors="pt").input_ids
    assert ids.shape[1] > 512 + 50
    with torch.no_grad():
        ours, theirs = model(ids, logits_to_keep=64).logits, hf_gemma3(ids, logits_to_keep=64).logits
        torch.testing.assert_close(ours, theirs, atol=LOGIT_ATOL[model.mode], rtol=0)
        expected = hf_gemma3.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=8,
                                      min_new_tokens=8)
        actual = model.generate(ids, do_sample=False, max_new_tokens=8, min_new_tokens=8)
    assert actual.tolist() == expected.tolist()
