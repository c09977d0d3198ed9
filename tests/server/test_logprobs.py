"""Log-probabilities over HTTP equal the model's own: each reported value is recomputed from one full forward
of the same model over prompt + generated tokens (log-softmax of the logits at the position before the token).
Catches any shift or mix-up in the mapping from engine positions to reported tokens, not just sign and count."""

from __future__ import annotations

import torch

MODEL_NAME = "smollm2"  # as served by conftest.py
TOLERANCE = 1e-3  # measured 1.1e-5 (paged batched steps vs one full forward); a neighbour differs by far more
PROMPT = "The largest planet in the solar system is"


def model_logprobs(model, ids: list[int]) -> torch.Tensor:
    """[len(ids) - 1, vocab]: row i is the distribution the model gives token ids[i + 1]."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1].float()
    return torch.log_softmax(logits, dim=-1)


def assert_close(got: list[float], want: list[float]) -> None:
    assert len(got) == len(want)
    worst = max(abs(g - w) for g, w in zip(got, want))
    assert worst <= TOLERANCE, (worst, got, want)


def test_tgi_prefill_and_token_logprobs_equal_the_models(tgi_client, smollm2):
    model, tokenizer = smollm2
    out = tgi_client.text_generation(PROMPT, max_new_tokens=6, details=True, decoder_input_details=True,
                                     top_n_tokens=3)
    prompt = [t.id for t in out.details.prefill]
    generated = [t.id for t in out.details.tokens]
    assert prompt == list(tokenizer.encode(PROMPT))
    reference = model_logprobs(model, prompt + generated)
    ids = torch.tensor(prompt + generated)
    per_token = reference.gather(1, ids[1:, None])[:, 0].tolist()
    assert out.details.prefill[0].logprob is None  # nothing precedes the first token
    assert_close([t.logprob for t in out.details.prefill[1:]], per_token[:len(prompt) - 1])
    assert_close([t.logprob for t in out.details.tokens], per_token[len(prompt) - 1:])
    for step, top in enumerate(out.details.top_tokens):
        values, indices = reference[len(prompt) - 1 + step].topk(3)
        assert [t["id"] for t in top] == indices.tolist()
        assert_close([t["logprob"] for t in top], values.tolist())


def test_openai_completion_logprobs_equal_the_models(openai_client, smollm2):
    model, tokenizer = smollm2
    out = openai_client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=6, temperature=0,
                                           logprobs=3)
    prompt = list(tokenizer.encode(PROMPT))
    assert out.usage.prompt_tokens == len(prompt)
    _check_greedy_choice(model, tokenizer, prompt, out.choices[0].logprobs.tokens,
                         out.choices[0].logprobs.token_logprobs,
                         [sorted(top.values(), reverse=True) for top in out.choices[0].logprobs.top_logprobs], 3)


def test_openai_chat_logprobs_equal_the_models(openai_client, smollm2):
    model, tokenizer = smollm2
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    out = openai_client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=5, temperature=0,
                                                logprobs=True, top_logprobs=2)
    prompt = list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"])
    assert out.usage.prompt_tokens == len(prompt)
    content = out.choices[0].logprobs.content
    _check_greedy_choice(model, tokenizer, prompt, [e.token for e in content], [e.logprob for e in content],
                         [[t.logprob for t in e.top_logprobs] for e in content], 2)


def _check_greedy_choice(model, tokenizer, prompt, tokens, logprobs, tops, top_n):
    """Greedy: each reported token is the model's argmax after the tokens before it, at the reported logprob."""
    ids = list(prompt)
    for _ in tokens:
        ids.append(int(model_logprobs(model, ids + [0])[-1].argmax()))
    generated = ids[len(prompt):]
    assert tokens == [tokenizer.decode([t]) for t in generated]
    reference = model_logprobs(model, ids)[len(prompt) - 1:]
    assert_close(logprobs, reference.gather(1, torch.tensor(generated)[:, None])[:, 0].tolist())
    for row, top in zip(reference, tops):
        assert_close(top, row.topk(top_n).values.tolist())
