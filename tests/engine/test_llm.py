"""vLLM's offline surface on the real SmolLM2: LLM.chat, RequestOutput.prompt, get_tokenizer, guided_* params."""

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
