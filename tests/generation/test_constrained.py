"""Structured output (llguidance): every sampled output parses and satisfies its JSON schema / regex / choice
list / grammar, across many seeds, with sampling, beam search and prompt-lookup decoding."""

from __future__ import annotations

import json
import re

import pytest
import torch

from tokenmill import AutoModelForCausalLM
from tokenmill.generation.constrained import StructuredOutputProcessor
from tokenmill.tokenizer import Tokenizer

# single_thread is an autouse fixture (one intra-op thread for tiny models)
try:  # tests/generation is a plain folder on sys.path, or a package
    from decoding_fixtures import save_tiny_llama, single_thread  # noqa: F401
except ImportError:
    from .decoding_fixtures import save_tiny_llama, single_thread  # noqa: F401

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "ok": {"type": "boolean"},
        "n": {"type": "integer", "minimum": 0, "maximum": 999},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 4}, "maxItems": 2},
        "kind": {"enum": ["alpha", "beta", "gamma"]},
    },
    "required": ["name", "ok", "n", "tags", "kind"],
    "additionalProperties": False,
}


def satisfies_schema(value) -> bool:
    """A direct check of SCHEMA (what jsonschema would say, without the dependency)."""
    return (isinstance(value, dict) and set(value) == set(SCHEMA["required"])
            and isinstance(value["name"], str) and len(value["name"]) <= 6
            and isinstance(value["ok"], bool)
            and isinstance(value["n"], int) and not isinstance(value["n"], bool) and 0 <= value["n"] <= 999
            and isinstance(value["tags"], list) and len(value["tags"]) <= 2
            and all(isinstance(tag, str) and len(tag) <= 4 for tag in value["tags"])
            and value["kind"] in ("alpha", "beta", "gamma"))


@pytest.fixture(scope="module")
def setup(smollm2_gguf, tmp_path_factory):
    """A tiny random model over SmolLM2's real 49k vocabulary: it knows nothing, so validity is all the grammar's."""
    tokenizer = Tokenizer.from_gguf(smollm2_gguf)
    folder = tmp_path_factory.mktemp("constrained-llama")
    save_tiny_llama(folder, vocab=len(tokenizer), eos=tokenizer.eos_token_id, logit_scale=4.0)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    prompt = torch.tensor([tokenizer.encode("Answer:", add_special_tokens=False)])
    return model, tokenizer, prompt


def constrained_texts(setup, kind, value, seed, rows=1, **generate_kwargs) -> list[str]:
    """`rows` copies of the prompt sampled side by side (each row has its own matcher); the text of each row."""
    model, tokenizer, prompt = setup
    processor = StructuredOutputProcessor.from_spec(kind, value, tokenizer, model.config.vocab_size,
                                                    tokenizer.eos_token_id)
    torch.manual_seed(seed)
    settings = dict(do_sample=True, top_k=0, max_new_tokens=120, eos_token_id=tokenizer.eos_token_id)
    settings.update(generate_kwargs)
    out = model.generate(prompt.repeat(rows, 1), logits_processor=[processor], **settings)
    texts = []
    for row in out[:, prompt.shape[1]:].tolist():
        assert tokenizer.eos_token_id in row, "generation must end by the grammar's own eos"
        texts.append(tokenizer.decode(row[:row.index(tokenizer.eos_token_id)]))
    return texts


def constrained_text(setup, kind, value, seed, **generate_kwargs) -> str:
    return constrained_texts(setup, kind, value, seed, **generate_kwargs)[0]


def test_json_schema_output_always_validates(setup):
    texts = [text for seed in range(4) for text in constrained_texts(setup, "json_schema", SCHEMA, seed, rows=8)]
    for text in texts:
        assert satisfies_schema(json.loads(text)), text
    assert len(texts) == 32 and len(set(texts)) > 16, "sampling should explore different valid documents"


def test_regex_output_always_matches(setup):
    pattern = r"[0-9]{3}-[a-z]{2,4}( ok)?"
    texts = [text for seed in range(3) for text in constrained_texts(setup, "regex", pattern, seed, rows=10)]
    for text in texts:
        assert re.fullmatch(pattern, text), text
    assert len(set(texts)) > 10


def test_choice_output_is_one_of_the_choices(setup):
    choices = ["red", "green", "blue sky"]
    seen = [text for seed in range(3) for text in constrained_texts(setup, "choice", choices, seed, rows=10)]
    assert set(seen) == set(choices), seen  # 30 samples: every choice comes up, nothing else does


def test_gbnf_grammar_output_parses(setup):
    gbnf = 'root ::= expr\nexpr ::= term ("+" term)*\nterm ::= [1-9] | "(" expr ")"\n'
    texts = [text for seed in range(3) for text in constrained_texts(setup, "grammar", gbnf, seed, rows=8,
                                                                   max_new_tokens=200)]
    for text in texts:
        assert re.fullmatch(r"[1-9()+]+", text) and text.count("(") == text.count(")"), text
        assert isinstance(eval(text, {"__builtins__": {}}), int), text  # well-formed arithmetic


def test_lark_grammar_output_parses(setup):
    """llguidance's own Lark dialect (the GBNF test goes through its GBNF → Lark conversion)."""
    lark = 'start: item ("," item)*\nitem: /[a-z]{1,5}/ "=" /[0-9]{1,3}/\n'
    texts = [text for seed in range(2) for text in constrained_texts(setup, "grammar", lark, seed, rows=8)]
    for text in texts:
        assert re.fullmatch(r"[a-z]{1,5}=[0-9]{1,3}(,[a-z]{1,5}=[0-9]{1,3})*", text), text


def test_json_schema_with_beam_search_and_prompt_lookup(setup):
    greedy = constrained_text(setup, "json_schema", SCHEMA, 0, do_sample=False)
    beam = constrained_text(setup, "json_schema", SCHEMA, 0, do_sample=False, num_beams=3)
    # rejected drafts roll the matcher back: the result is exactly constrained greedy decoding
    lookup = constrained_text(setup, "json_schema", SCHEMA, 0, do_sample=False, prompt_lookup_num_tokens=3)
    assert lookup == greedy
    for text in (greedy, beam):
        assert satisfies_schema(json.loads(text)), text


def test_json_schema_with_assisted_decoding(setup, tmp_path_factory):
    """The drafter runs the same processor (its matchers rewind when drafts are rejected): greedy output equals
    constrained greedy decoding, and speculative sampling's outputs all validate."""
    model, tokenizer, _ = setup
    folder = tmp_path_factory.mktemp("constrained-draft")
    save_tiny_llama(folder, seed=4, layers=1, vocab=len(tokenizer), eos=tokenizer.eos_token_id, logit_scale=4.0)
    draft = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    greedy = constrained_text(setup, "json_schema", SCHEMA, 0, do_sample=False)
    assert constrained_text(setup, "json_schema", SCHEMA, 0, do_sample=False, assistant_model=draft) == greedy
    for seed in range(6):
        text = constrained_text(setup, "json_schema", SCHEMA, seed, assistant_model=draft, num_assistant_tokens=4)
        assert satisfies_schema(json.loads(text)), text


def test_batched_rows_are_constrained_independently(setup):
    model, tokenizer, prompt = setup
    processor = StructuredOutputProcessor.for_regex(r"(yes|no)", tokenizer, model.config.vocab_size,
                                                    tokenizer.eos_token_id)
    torch.manual_seed(0)
    out = model.generate(prompt.repeat(4, 1), logits_processor=[processor], do_sample=True, top_k=0,
                         max_new_tokens=10, eos_token_id=tokenizer.eos_token_id)
    for row in out[:, prompt.shape[1]:].tolist():
        text = tokenizer.decode(row, skip_special_tokens=True)
        assert text in ("yes", "no"), text


def test_bad_specifications_are_rejected(setup):
    model, tokenizer, _ = setup
    with pytest.raises(ValueError, match="grammar"):
        StructuredOutputProcessor.for_regex("([a-z", tokenizer, model.config.vocab_size, tokenizer.eos_token_id)
    with pytest.raises(ValueError, match="choice"):
        StructuredOutputProcessor.for_choice([], tokenizer, model.config.vocab_size, tokenizer.eos_token_id)
    with pytest.raises(ValueError, match="unknown structured-output kind"):
        StructuredOutputProcessor.from_spec("xml", "<a/>", tokenizer, model.config.vocab_size, 2)


def test_json_schema_and_json_object_specs_constrain_generation(setup):
    # the HTTP APIs' fields map to these specs in server/*_protocol.py (tests/server/test_protocol.py)
    assert satisfies_schema(json.loads(constrained_text(setup, "json_schema", SCHEMA, 3)))
    # json_object: a random model never closes a free-form object, but every prefix it writes is one's opening
    model, tokenizer, prompt = setup
    processor = StructuredOutputProcessor.from_spec("json_schema", {"type": "object"}, tokenizer,
                                                    model.config.vocab_size, tokenizer.eos_token_id)
    out = model.generate(prompt, logits_processor=[processor], do_sample=True, max_new_tokens=8, eos_token_id=None)
    assert tokenizer.decode(out[0, prompt.shape[1]:]).lstrip().startswith("{")
