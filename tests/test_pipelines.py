"""pipeline("text-generation") against transformers' own pipeline (the oracle): same call shapes, same outputs for
greedy decoding, on a tiny random Llama with SmolLM2's tokenizer and on the real SmolLM2."""

from __future__ import annotations

import pytest
import torch

from tokenmill import pipeline

CHAT = [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "What colour is the sky?"}]
PROMPTS = ["The capital of France is", "Once upon a time, in a land far away, there lived"]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, hf_smollm2_tokenizer):
    """A 2-layer random Llama over SmolLM2's vocabulary, saved with its tokenizer (chat template included)."""
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=len(hf_smollm2_tokenizer), hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      bos_token_id=hf_smollm2_tokenizer.bos_token_id,
                                      eos_token_id=hf_smollm2_tokenizer.eos_token_id,
                                      pad_token_id=hf_smollm2_tokenizer.pad_token_id)
    folder = tmp_path_factory.mktemp("tiny-pipeline")
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    hf_smollm2_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_pipes(tiny_folder):
    import transformers

    return (pipeline("text-generation", model=str(tiny_folder), dtype=torch.float32),
            transformers.pipeline("text-generation", model=str(tiny_folder), dtype=torch.float32))


GREEDY = {"do_sample": False, "max_new_tokens": 6}


@pytest.mark.parametrize("inputs, kwargs", [
    (PROMPTS[0], {}),
    (PROMPTS, {}),
    (PROMPTS, {"batch_size": 2}),
    (PROMPTS[1], {"return_full_text": False}),
    (CHAT, {}),
    ([CHAT, CHAT[1:]], {"batch_size": 2}),
    (CHAT, {"return_full_text": False}),
    (CHAT + [{"role": "assistant", "content": "The sky is"}], {}),
    (PROMPTS[0], {"return_tensors": True}),
    (PROMPTS[0], {"prefix": "Question: "}),
])
def test_tiny_outputs_equal_transformers(tiny_pipes, inputs, kwargs):
    ours, theirs = tiny_pipes
    assert ours(inputs, **GREEDY, **kwargs) == theirs(inputs, **GREEDY, **kwargs)


def test_num_return_sequences_gives_that_many_records(tiny_pipes):
    ours, theirs = tiny_pipes
    out = ours(PROMPTS, num_return_sequences=3, do_sample=True, max_new_tokens=3, batch_size=2)
    reference = theirs(PROMPTS, num_return_sequences=3, do_sample=True, max_new_tokens=3, batch_size=2)
    assert [len(records) for records in out] == [len(records) for records in reference] == [3, 3]
    assert all(record["generated_text"].startswith(prompt) for prompt, records in zip(PROMPTS, out)
               for record in records)


def test_pipeline_defaults_sample_like_transformers(tiny_pipes):
    """No generation keyword: transformers' pipeline samples (temperature 0.7, 256 new tokens) unless the model's
    generation config says otherwise; the keywords given at construction become every call's defaults."""
    ours, _ = tiny_pipes
    kwargs = ours._generate_kwargs({})
    assert kwargs["do_sample"] is True and kwargs["temperature"] == 0.7 and kwargs["max_new_tokens"] == 256
    greedy = ours._generate_kwargs({"do_sample": False})
    assert "temperature" not in greedy and greedy["max_new_tokens"] == 256
    assert "max_new_tokens" not in ours._generate_kwargs({"max_length": 20})


def test_construction_keywords_are_call_defaults(tiny_folder, tiny_pipes):
    _, theirs = tiny_pipes
    ours = pipeline("text-generation", model=str(tiny_folder), return_full_text=False, **GREEDY)
    assert ours(PROMPTS[0]) == theirs(PROMPTS[0], return_full_text=False, **GREEDY)


def test_a_loaded_model_and_tokenizer_are_accepted(tiny_folder, tiny_pipes):
    from tokenmill import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_folder, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tiny_folder)
    _, theirs = tiny_pipes
    assert pipeline("text-generation", model=model, tokenizer=tokenizer)(PROMPTS[0], **GREEDY) == \
        theirs(PROMPTS[0], **GREEDY)
    assert pipeline("text-generation", model=model, device=-1)(PROMPTS[0], **GREEDY) == theirs(PROMPTS[0], **GREEDY)


@pytest.mark.parametrize("call, message", [
    (lambda: pipeline("summarization", model="x"), "supports only the 'text-generation' task"),
    (lambda: pipeline("text-generation"), "needs model="),
    (lambda: pipeline(model="x", device_map={"": 0}), "one device"),
])
def test_unsupported_requests_are_refused_clearly(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_bad_inputs_are_clear_errors(tiny_pipes):
    ours, _ = tiny_pipes
    with pytest.raises(ValueError, match="empty prompt"):
        ours("", **GREEDY)
    with pytest.raises(TypeError, match="inputs are strings"):
        ours([1, 2, 3], **GREEDY)
    with pytest.raises(ValueError, match="'role' and a 'content'"):
        ours([{"role": "user"}], **GREEDY)
    with pytest.raises(ValueError, match="mutually exclusive"):
        ours(PROMPTS[0], return_full_text=True, return_tensors=True)
    with pytest.raises(ValueError, match="handle_long_generation"):
        ours(PROMPTS[0], handle_long_generation="hole")


def test_smollm2_greedy_equals_transformers(smollm2_gguf, hf_smollm2, hf_smollm2_tokenizer):
    import transformers

    ours = pipeline("text-generation", model=str(smollm2_gguf), device="cpu")
    theirs = transformers.pipeline("text-generation", model=hf_smollm2, tokenizer=hf_smollm2_tokenizer)
    greedy = {"do_sample": False, "max_new_tokens": 5}
    assert ours(CHAT, **greedy) == theirs(CHAT, **greedy)
    assert ours(PROMPTS, batch_size=2, **greedy) == theirs(PROMPTS, batch_size=2, **greedy)


def test_a_generation_config_gets_the_defaults_in_a_copy(tiny_pipes):
    """As in transformers, do_sample=False equals the default, so the pipeline's sampling default is added to the
    config; top_k=1 keeps the sampled tokens the argmax, so both pipelines must give the same text."""
    import transformers

    from tokenmill import GenerationConfig

    ours, theirs = tiny_pipes
    config = GenerationConfig(max_new_tokens=5, top_k=1)
    kwargs = ours._generate_kwargs({"generation_config": config})
    assert kwargs["generation_config"] is not config and config.pad_token_id is None
    assert kwargs["generation_config"].do_sample is True and kwargs["generation_config"].temperature == 0.7
    their_config = transformers.GenerationConfig(max_new_tokens=5, top_k=1)
    assert ours(PROMPTS[0], generation_config=config) == theirs(PROMPTS[0], generation_config=their_config)
