"""LLM, vLLM's offline front end: on the real SmolLM2 (LLM.chat, RequestOutput.prompt, get_tokenizer, guided_* params),
and on a tiny model (which prompt forms it takes, the order of its outputs, how it builds its engine)."""

from __future__ import annotations

import dataclasses
import json

import pydantic
import pytest
import torch

from tokenmill.engine import LLM, SamplingParams

CHAT = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Name a primary colour."}]


@pytest.fixture(scope="module")
def smol_llm(smollm2_gguf):
    return LLM(str(smollm2_gguf), num_blocks=64, block_size=16)


def _greedy_ids(llm: LLM, prompt_ids: list[int], new_tokens: int) -> list[int]:
    with torch.no_grad():
        output = llm.model.generate(torch.tensor([prompt_ids]), max_new_tokens=new_tokens, do_sample=False)
    return output[0, len(prompt_ids):].tolist()


def test_chat_renders_the_template_and_matches_generate(smol_llm):
    tokenizer = smol_llm.get_tokenizer()
    assert tokenizer is smol_llm.tokenizer
    rendered = tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    [output] = smol_llm.chat(CHAT, SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))
    assert output.prompt == rendered
    assert output.prompt_token_ids == list(tokenizer.encode(rendered, add_special_tokens=False))
    assert output.outputs[0].token_ids == _greedy_ids(smol_llm, output.prompt_token_ids, 6)


def test_chat_takes_a_list_of_conversations_in_order(smol_llm):
    second = [{"role": "user", "content": "Say hi."}]
    params = SamplingParams(temperature=0, max_tokens=4)
    outputs = smol_llm.chat([CHAT, second], params)
    alone = [smol_llm.chat(CHAT, params)[0], smol_llm.chat(second, params)[0]]
    assert [o.outputs[0].token_ids for o in outputs] == [o.outputs[0].token_ids for o in alone]
    assert "Say hi." in outputs[1].prompt and "primary colour" in outputs[0].prompt


def test_chat_continues_a_final_assistant_message(smol_llm):
    prefill = CHAT + [{"role": "assistant", "content": "The colour is"}]
    [output] = smol_llm.chat(prefill, SamplingParams(temperature=0, max_tokens=3), continue_final_message=True)
    assert output.prompt.rstrip().endswith("The colour is")


def test_chat_refuses_what_is_not_a_conversation(smol_llm):
    for bad in ("hello", [], [["not", "messages"]], [{"content": "no role"}]):
        with pytest.raises(TypeError, match="conversation"):
            smol_llm.chat(bad)


def test_request_output_prompt_is_the_text_or_none(smol_llm):
    params = SamplingParams(temperature=0, max_tokens=2)
    text_output, ids_output, dict_output = smol_llm.generate(
        ["The capital of France is", [1, 2, 3], {"prompt": "Once upon"}], params)
    assert text_output.prompt == "The capital of France is" and ids_output.prompt is None
    assert dict_output.prompt == "Once upon"


SCHEMA = {"type": "object", "properties": {"colour": {"type": "string", "maxLength": 12}}, "required": ["colour"],
          "additionalProperties": False}


class Colour(pydantic.BaseModel):
    colour: str


def test_guided_fields_become_the_structured_output_spec():
    assert SamplingParams(guided_json=SCHEMA).structured_output == ("json_schema", SCHEMA)
    assert SamplingParams(guided_json=Colour).structured_output == ("json_schema", Colour.model_json_schema())
    assert SamplingParams(guided_regex="[a-z]+").structured_output == ("regex", "[a-z]+")
    assert SamplingParams(guided_choice=["red", "blue"]).structured_output == ("choice", ["red", "blue"])
    params = SamplingParams(guided_json=SCHEMA)
    assert dataclasses.replace(params, max_tokens=7).structured_output == ("json_schema", SCHEMA)


@pytest.mark.parametrize("kwargs, message", [
    ({"guided_json": SCHEMA, "guided_regex": "a"}, "one structured-output constraint"),
    ({"guided_regex": "a", "structured_output": ("regex", "b")}, "not both"),
    ({"guided_choice": []}, "choice"),
    ({"guided_regex": "("}, "regex"),
])
def test_bad_guided_fields_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)


def test_guided_json_and_choice_constrain_chat_answers(smol_llm):
    json_params = SamplingParams(temperature=0, max_tokens=40, guided_json=SCHEMA)
    choice_params = SamplingParams(temperature=0, max_tokens=8, guided_choice=["red", "green", "blue"])
    as_json, as_choice = smol_llm.chat([CHAT, CHAT], [json_params, choice_params])
    assert set(json.loads(as_json.outputs[0].text)) == {"colour"}
    assert as_choice.outputs[0].text in ("red", "green", "blue")



class _Words:
    """A stand-in tokenizer: one id per character (the engine needs encode, decode and eos_token_id)."""

    eos_token_id = None

    def encode(self, text):
        return [ord(c) % 90 + 1 for c in text]

    def decode(self, ids, **kwargs):
        return "".join(chr(i + 32) for i in ids)


@pytest.fixture(scope="module")
def llm(tiny_model):
    return LLM(tiny_model, _Words(), num_blocks=64, block_size=4, max_num_seqs=3)


def _greedy(n=3):
    return SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)


def test_engine_settings_and_tokenizer_reach_the_engine(llm, tiny_model):
    assert llm.model is tiny_model and isinstance(llm.tokenizer, _Words) and llm.engine.tokenizer is llm.tokenizer
    assert (llm.engine.config.num_blocks, llm.engine.config.block_size, llm.engine.config.max_num_seqs) == (64, 4, 3)


def test_every_prompt_form_gives_the_same_tokens_in_input_order(llm):
    ids = _Words().encode("hello")
    single = llm.generate(ids, _greedy())
    assert len(single) == 1 and single[0].prompt_token_ids == ids and single[0].finished
    tokens = single[0].outputs[0].token_ids
    assert len(tokens) == 3
    outputs = llm.generate(["hello", {"prompt_token_ids": ids}, tuple(ids), [7, 8]], _greedy())
    assert [o.outputs[0].token_ids for o in outputs[:3]] == [tokens] * 3
    assert outputs[3].prompt_token_ids == [7, 8]
    assert len({o.request_id for o in outputs}) == 4 and all(o.request_id.startswith("offline-") for o in outputs)
    assert llm.generate("hello", _greedy())[0].outputs[0].token_ids == tokens


def test_one_params_per_prompt_or_one_for_all(llm):
    outputs = llm.generate([[5, 6], [5, 6]], [_greedy(2), _greedy(4)])
    assert [len(o.outputs[0].token_ids) for o in outputs] == [2, 4]
    assert len(llm.generate([5, 6])[0].outputs[0].token_ids) == SamplingParams().max_tokens
    with pytest.raises(ValueError) as error:
        llm.generate([[5], [6]], [_greedy()])
    assert str(error.value) == "1 SamplingParams for 2 prompts"


def test_bad_prompts_are_named(llm, tiny_model):
    with pytest.raises(TypeError) as error:
        llm.generate([[5, 6.5]], _greedy())
    assert str(error.value) == ("a prompt is a string, a list of token ids, {'prompt': text} or "
                                "{'prompt_token_ids': [...]}, got list")
    with pytest.raises(TypeError) as error:
        llm.generate([{"text": "x"}], _greedy())
    assert str(error.value).endswith("got dict")
    with pytest.raises(ValueError) as error:
        LLM(tiny_model, num_blocks=8, block_size=4).generate("hello", _greedy())
    assert str(error.value) == "text prompts need a tokenizer; pass token ids or LLM(model, tokenizer)"


def test_a_folder_loads_without_a_tokenizer_when_asked(tiny_llama_dir):
    import torch

    llm = LLM(tiny_llama_dir, skip_tokenizer_init=True, dtype="bfloat16", num_blocks=16, block_size=4)  # a Path
    assert llm.tokenizer is None and llm.model.config.vocab_size == 96 and llm.model.dtype == torch.bfloat16
    assert len(llm.generate([[5, 6]], _greedy(2))[0].outputs[0].token_ids) == 2


def test_a_folder_with_a_tokenizer_loads_it_unless_one_is_given(tiny_llama_dir, tmp_path):
    import json
    import shutil

    from tokenizers import Tokenizer, models, pre_tokenizers

    folder = tmp_path / "with-tokenizer"
    shutil.copytree(tiny_llama_dir, folder)
    letters = {c: i for i, c in enumerate("abcdefghijklmnopqrstuvwxyz ")} | {"[UNK]": 27}
    tokenizer = Tokenizer(models.WordLevel(letters, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    llm = LLM(str(folder), num_blocks=16, block_size=4)
    assert llm.tokenizer.encode("hello") == [7, 4, 11, 11, 14]
    assert llm.generate("hello", _greedy(2))[0].prompt_token_ids == [7, 4, 11, 11, 14]
    assert isinstance(LLM(str(folder), _Words(), num_blocks=16, block_size=4).tokenizer, _Words)


def test_loading_options_reach_the_loaders(monkeypatch, tiny_model):
    from tokenmill import auto

    calls = []
    monkeypatch.setattr(auto.AutoModelForCausalLM, "from_pretrained",
                        staticmethod(lambda source, **kwargs: calls.append(("model", source, kwargs)) or tiny_model))
    monkeypatch.setattr(auto.AutoTokenizer, "from_pretrained",
                        staticmethod(lambda source, **kwargs: calls.append(("tokenizer", source, kwargs)) or _Words()))
    llm = LLM("some/model.gguf", dtype="float32", device="cpu", gguf_file="q4.gguf", num_blocks=8, block_size=4)
    assert calls == [("model", "some/model.gguf", {"dtype": "float32", "device": "cpu", "gguf_file": "q4.gguf",
                                                   "progress": False}),
                     ("tokenizer", "some/model.gguf", {"gguf_file": "q4.gguf"})]
    assert llm.model is tiny_model and isinstance(llm.tokenizer, _Words)
