"""The openai SDK, unchanged, against the server: chat and completions, streaming and not."""

import pytest

MODEL_NAME = "smollm2"  # as served by conftest.py

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_chat_completion_stream_equals_non_stream(openai_client):
    full = openai_client.chat.completions.create(model=MODEL_NAME, messages=QUESTION, max_tokens=12, temperature=0)
    choice = full.choices[0]
    assert "Paris" in choice.message.content and choice.message.role == "assistant"
    assert choice.finish_reason == "stop"  # the model ends its answer with <|im_end|>
    assert 1 < full.usage.completion_tokens < 12 and full.usage.prompt_tokens > 10
    stream = openai_client.chat.completions.create(model=MODEL_NAME, messages=QUESTION, max_tokens=12,
                                                   temperature=0, stream=True,
                                                   stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == full.usage.total_tokens


def test_completion_greedy_equals_transformers(openai_client, hf_smollm2, hf_smollm2_tokenizer):
    import torch

    prompt = "The three primary colors are"
    out = openai_client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=10, temperature=0)
    ids = hf_smollm2_tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        ref = hf_smollm2.generate(ids, max_new_tokens=10, do_sample=False)
    assert out.choices[0].text == hf_smollm2_tokenizer.decode(ref[0, ids.shape[1]:], skip_special_tokens=True)


def test_completion_stream_logprobs_echo_and_stop(openai_client):
    prompt = "1, 2, 3, 4,"
    full = openai_client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=8, temperature=0,
                                            logprobs=2, echo=True)
    choice = full.choices[0]
    assert choice.text.startswith(prompt)
    assert len(choice.logprobs.tokens) == 8 and all(len(top) == 2 for top in choice.logprobs.top_logprobs)
    assert all(lp <= 0 for lp in choice.logprobs.token_logprobs)
    assert "".join(choice.logprobs.tokens) == choice.text[len(prompt):]
    streamed = "".join(c.choices[0].text for c in openai_client.completions.create(
        model=MODEL_NAME, prompt=prompt, max_tokens=8, temperature=0, stream=True))
    assert streamed == choice.text[len(prompt):]
    stop = choice.text[len(prompt):].split(",")[1] + ","  # e.g. " 6,"
    stopped = openai_client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=8, temperature=0,
                                               stop=[stop])
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].text == choice.text[len(prompt):].split(stop)[0]


def test_seeded_sampling_with_n_choices(openai_client):
    kwargs = dict(model=MODEL_NAME, prompt="Once upon a time", max_tokens=8, temperature=1.0, top_p=0.9,
                  seed=7, n=3)
    first = openai_client.completions.create(**kwargs)
    again = openai_client.completions.create(**kwargs)
    assert [c.text for c in first.choices] == [c.text for c in again.choices]
    assert sorted(c.index for c in first.choices) == [0, 1, 2]
    assert len({c.text for c in first.choices}) > 1
    assert first.usage.completion_tokens == 24


def test_chat_logprobs_penalties_and_max_completion_tokens(openai_client):
    out = openai_client.chat.completions.create(
        model=MODEL_NAME, messages=QUESTION, max_completion_tokens=5, temperature=0, logprobs=True,
        top_logprobs=3, presence_penalty=0.5, frequency_penalty=0.5, logit_bias={"28": -100})
    content = out.choices[0].logprobs.content
    assert len(content) == 5 and all(len(entry.top_logprobs) == 3 for entry in content)
    assert "".join(entry.token for entry in content) == out.choices[0].message.content


def test_models_list(openai_client):
    models = openai_client.models.list()
    assert [m.id for m in models.data] == [MODEL_NAME]


@pytest.mark.parametrize("kwargs, fragment", [
    ({"model": "gpt-4"}, "does not exist"),
    ({"max_tokens": -3}, "max_tokens must be an integer, at least 1, got -3"),
    ({"max_tokens": 100000}, "must be <= 1024"),
    ({"temperature": 5}, "temperature"),
])
def test_sdk_sees_openai_shaped_errors(openai_client, kwargs, fragment):
    import openai

    args = {"model": MODEL_NAME, "messages": QUESTION, "max_tokens": 4, **kwargs}
    with pytest.raises(openai.APIStatusError) as caught:
        openai_client.chat.completions.create(**args)
    assert caught.value.status_code in (400, 404)
    assert fragment in caught.value.body["message"]
