"""The real SmolLM2-135M-Instruct GGUF, loaded by tokenmill and by transformers from the same file.

Both ways tokenmill runs a GGUF are checked: weights dequantized at load ("dense"), and weights kept as Q4_1/Q8_0
blocks with float32 arithmetic in tokenmill's kernels ("gguf-kernels", the CPU default).

Tolerance: both engines are measured against a float64 run of the same dequantized weights; tokenmill's float32
logits must stay within the bound of tests/numerics.py (a multiple of transformers' own float32 error plus the
sqrt(K) rounding floor), whichever kernels the machine runs. Greedy continuations must be token-identical.
"""

from __future__ import annotations

import pytest
import torch

from tokenmill import AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer, set_seed
from tokenmill.cache import DynamicCache

from numerics import assert_logits_within_bound, matmuls, reduction_len

GREEDY_TOKENS = 32

CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You answer in one short sentence."},
     {"role": "user", "content": "Why do cats purr?"}],
    [{"role": "user", "content": "Write a haiku about the sea."},
     {"role": "assistant", "content": "Waves fold into foam"},
     {"role": "user", "content": "Now one about mountains, with an emoji 🏔️."}],
]


@pytest.fixture(scope="module", params=["gguf-kernels", "dense"])
def model(smollm2_gguf, request):
    loaded = AutoModelForCausalLM.from_pretrained(smollm2_gguf, dtype=torch.float32,
                                                  keep_quantized=request.param == "gguf-kernels")
    assert loaded.is_quantized() == (request.param == "gguf-kernels")
    loaded.mode = request.param
    return loaded


@pytest.fixture(scope="module")
def tokenizer(smollm2_gguf):
    return AutoTokenizer.from_pretrained(smollm2_gguf)


def chat_ids(tokenizer, chat) -> torch.Tensor:
    return tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]


@pytest.fixture(scope="module")
def oracle_greedy(hf_smollm2, hf_smollm2_tokenizer):
    """transformers' greedy continuations, computed once for the module."""
    results = []
    for chat in CHATS:
        ids = hf_smollm2_tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt",
                                                       return_dict=True)["input_ids"]
        with torch.no_grad():
            out = hf_smollm2.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=GREEDY_TOKENS,
                                      min_new_tokens=GREEDY_TOKENS, do_sample=False)
        results.append((ids, out[0, ids.shape[1]:]))
    return results


def test_chat_template_renders_like_transformers(tokenizer, hf_smollm2_tokenizer):
    for chat in CHATS:
        for add_prompt in (False, True):
            ours = tokenizer.apply_chat_template(chat, add_generation_prompt=add_prompt, tokenize=False)
            theirs = hf_smollm2_tokenizer.apply_chat_template(chat, add_generation_prompt=add_prompt, tokenize=False)
            assert ours == theirs


def assert_within_bound(model, ours, ids, hf_smollm2, hf_smollm2_float64, label):
    with torch.no_grad():
        theirs, exact = hf_smollm2(ids).logits, hf_smollm2_float64(ids).logits
    assert_logits_within_bound(ours, theirs, exact, reduction_len(model.config, ids.shape[1]), matmuls(model.config),
                               f"{model.mode} {label}")


def test_prompt_logits_match_transformers(model, tokenizer, hf_smollm2, hf_smollm2_float64):
    text = "The quick brown fox jumps over the lazy dog.\n\tdef f(x):\n        return x ** 2  # 平方 😀 café"
    ids = torch.tensor([tokenizer.encode(text)])
    with torch.no_grad():
        ours = model(ids).logits
    assert_within_bound(model, ours, ids, hf_smollm2, hf_smollm2_float64, "prompt")


def test_greedy_continuations_identical(model, oracle_greedy):
    for prompt_ids, expected in oracle_greedy:
        out = model.generate(prompt_ids, max_new_tokens=GREEDY_TOKENS, min_new_tokens=GREEDY_TOKENS, do_sample=False)
        assert out[0, prompt_ids.shape[1]:].tolist() == expected.tolist()


def test_incremental_decoding_equals_recompute(model, tokenizer, hf_smollm2, hf_smollm2_float64):
    ids = chat_ids(tokenizer, CHATS[1])
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        cache = DynamicCache()
        split = ids.shape[1] - 6
        pieces = [model(ids[:, :split], past_key_values=cache).logits]
        for step in range(split, ids.shape[1]):
            pieces.append(model(ids[:, step:step + 1], past_key_values=cache).logits)
    # both orders measured against the same float64 run: each within the bound, hence within twice it of each other
    assert_within_bound(model, torch.cat(pieces, dim=1), ids, hf_smollm2, hf_smollm2_float64, "incremental")
    assert_within_bound(model, full, ids, hf_smollm2, hf_smollm2_float64, "recompute")


def test_batched_left_padded_generation_equals_one_by_one(model, tokenizer):
    prompts = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in CHATS]
    tokenizer.padding_side = "left"
    batch = tokenizer(prompts, padding=True, return_tensors="pt", add_special_tokens=False)
    together = model.generate(**batch, max_new_tokens=16, do_sample=False)
    width = batch["input_ids"].shape[1]
    for row, prompt in enumerate(prompts):
        alone_ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        alone = model.generate(**alone_ids, max_new_tokens=16, do_sample=False)
        new_alone = alone[0, alone_ids["input_ids"].shape[1]:].tolist()
        new_batched = together[row, width:width + len(new_alone)].tolist()
        assert new_batched == new_alone, f"row {row} differs"


def test_seeded_sampling_is_reproducible(model, tokenizer):
    ids = chat_ids(tokenizer, CHATS[0])
    runs = []
    for _ in range(2):
        set_seed(1234)
        runs.append(model.generate(ids, do_sample=True, temperature=0.9, top_p=0.95, max_new_tokens=12).tolist())
    assert runs[0] == runs[1]
    draws = []
    for _ in range(2):
        set_seed(99)
        draws.append(model.generate(ids, do_sample=True, temperature=1.5, max_new_tokens=12, num_return_sequences=3))
    assert draws[0].shape[0] == 3 and draws[0].tolist() == draws[1].tolist()
    assert len({tuple(row) for row in draws[0][:, ids.shape[1]:].tolist()}) > 1  # three draws, not one repeated


def spanning_stop_string(tokenizer, continuation) -> str:
    """A piece of the continuation's text that starts and ends inside tokens (so it spans at least three)."""
    pieces = [tokenizer.decode([token]) for token in continuation.tolist()]
    start = next(i for i in range(2, len(pieces)) if len(pieces[i].strip()) >= 2)
    text = "".join(pieces[start:start + 3])
    return text[1:-1]


def test_stop_string_spanning_tokens_stops_where_transformers_does(model, tokenizer, oracle_greedy, hf_smollm2,
                                                                   hf_smollm2_tokenizer):
    prompt_ids, expected = oracle_greedy[0]
    stop = spanning_stop_string(tokenizer, expected)
    settings = dict(max_new_tokens=GREEDY_TOKENS, do_sample=False, stop_strings=[stop, "never seen 😀"])
    out = model.generate(prompt_ids, tokenizer=tokenizer, **settings)
    with torch.no_grad():
        theirs = hf_smollm2.generate(prompt_ids, attention_mask=torch.ones_like(prompt_ids),
                                     tokenizer=hf_smollm2_tokenizer, **settings)
    assert out.tolist() == theirs.tolist()
    new_ids = out[0, prompt_ids.shape[1]:]
    assert len(new_ids) < len(expected)
    # the stop text is complete with the last token and not before it
    assert stop in tokenizer.decode(new_ids) and stop not in tokenizer.decode(new_ids[:-1])


def test_iterator_streamer_text_equals_decode(model, tokenizer):
    import threading

    ids = chat_ids(tokenizer, CHATS[2])
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=120)
    result = {}
    worker = threading.Thread(target=lambda: result.update(out=model.generate(
        ids, max_new_tokens=24, do_sample=False, streamer=streamer)))
    worker.start()
    streamed = "".join(streamer)
    worker.join()
    assert streamed == tokenizer.decode(result["out"][0, ids.shape[1]:], skip_special_tokens=True)
    assert "\ufffd" not in streamed


def test_too_long_prompt_is_a_clear_error(model):
    ids = torch.ones(1, model.config.max_position_embeddings + 1, dtype=torch.long)
    with pytest.raises(ValueError, match="more than the model's context length"):
        model.generate(ids, max_new_tokens=2)
