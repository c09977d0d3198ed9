"""eos, stop strings and streamers with every decoding strategy.

For each deterministic strategy the free-running output is the reference: with a token of it as eos the output
is its prefix up to that token's first occurrence; with a piece of its text as a stop string, its prefix up to
the token that completes the string; a streamer receives the prompt, then exactly the generated tokens, then one
end(). Beam strategies refuse streamers (their beams change until the end) and are checked on what they return.
"""

from __future__ import annotations

import pytest
import torch

from tokenmill import AutoModelForCausalLM
from tokenmill.tokenizer import Tokenizer

# single_thread is an autouse fixture (one intra-op thread for tiny models)
try:  # tests/generation is a plain folder on sys.path, or a package
    from decoding_fixtures import save_tiny_llama, single_thread  # noqa: F401
except ImportError:
    from .decoding_fixtures import save_tiny_llama, single_thread  # noqa: F401

NEW_TOKENS = 20


@pytest.fixture(scope="module")
def setup(smollm2_gguf, tmp_path_factory):
    """Tiny random target and drafter over SmolLM2's real tokenizer (stop strings need real text)."""
    tokenizer = Tokenizer.from_gguf(smollm2_gguf)
    target_dir, draft_dir = tmp_path_factory.mktemp("stops-target"), tmp_path_factory.mktemp("stops-draft")
    save_tiny_llama(target_dir, vocab=len(tokenizer), eos=tokenizer.eos_token_id, logit_scale=4.0)
    save_tiny_llama(draft_dir, seed=3, layers=1, vocab=len(tokenizer), eos=tokenizer.eos_token_id, logit_scale=4.0)
    target = AutoModelForCausalLM.from_pretrained(target_dir, dtype=torch.float32)
    draft = AutoModelForCausalLM.from_pretrained(draft_dir, dtype=torch.float32)
    sentence = tokenizer.encode("the cat sat on the mat and the dog sat on the log", add_special_tokens=False)
    prompt = torch.tensor([sentence * 2])  # repeats itself, so prompt lookup finds drafts
    return target, draft, tokenizer, prompt


def strategy_kwargs(name: str, draft, tokenizer) -> dict:
    return {
        "greedy": dict(do_sample=False),
        "sample": dict(do_sample=True, top_k=0, seed=7),
        "watermark": dict(do_sample=False, watermarking_config={"bias": 3.0}),
        "contrastive": dict(penalty_alpha=0.6, top_k=4),
        "dola": dict(dola_layers="high", do_sample=False),
        "prompt_lookup": dict(prompt_lookup_num_tokens=6, do_sample=False),
        "assistant": dict(assistant_model=draft, num_assistant_tokens=4, do_sample=False),
        "assistant_sample": dict(assistant_model=draft, num_assistant_tokens=4, do_sample=True, top_k=0, seed=7),
        "early_exit": dict(assistant_early_exit=1, do_sample=False),
        "universal": dict(assistant_model=draft, assistant_tokenizer=tokenizer, do_sample=False),
    }[name]


STRATEGIES = ["greedy", "sample", "watermark", "contrastive", "dola", "prompt_lookup", "assistant",
              "assistant_sample", "early_exit", "universal"]


class Recorder:
    def __init__(self):
        self.chunks, self.ends = [], 0

    def put(self, value):
        self.chunks.append(value.reshape(-1).tolist())

    def end(self):
        self.ends += 1


def run(setup, name, streamer=None, **overrides):
    target, draft, tokenizer, prompt = setup
    kwargs = strategy_kwargs(name, draft, tokenizer)
    torch.manual_seed(kwargs.pop("seed", 0))
    settings = dict(max_new_tokens=NEW_TOKENS, eos_token_id=None, tokenizer=tokenizer, **kwargs)
    settings.update(overrides)
    out = target.generate(prompt, streamer=streamer, **settings)
    return out[0, prompt.shape[1]:].tolist()


def first_new_token_after(tokens: list[int], start: int) -> int:
    """Index of the first token at or after `start` that does not occur before it (so it ends the output there)."""
    return next(i for i in range(start, len(tokens)) if tokens[i] not in tokens[:i])


@pytest.mark.parametrize("name", STRATEGIES)
def test_eos_ends_output_at_its_first_occurrence(setup, name):
    free = run(setup, name)
    assert len(free) == NEW_TOKENS
    stop_at = first_new_token_after(free, 5)
    eos = free[stop_at]
    assert run(setup, name, eos_token_id=eos) == free[:stop_at + 1]
    assert run(setup, name, eos_token_id=[eos, 1]) == free[:stop_at + 1]  # several eos ids


@pytest.mark.parametrize("name", STRATEGIES)
def test_stop_string_ends_output_at_the_completing_token(setup, name):
    _, _, tokenizer, prompt = setup
    free = run(setup, name)
    start = first_new_token_after(free, 6)
    stop = tokenizer.decode(free[start:start + 2])
    assert stop.strip() and stop not in tokenizer.decode(prompt[0].tolist())
    expected_end = next(i for i in range(len(free)) if stop in tokenizer.decode(free[:i + 1]))
    stopped = run(setup, name, stop_strings=[stop])
    assert stopped == free[:expected_end + 1]
    assert len(stopped) < NEW_TOKENS and tokenizer.decode(stopped).endswith(stop)


@pytest.mark.parametrize("name", STRATEGIES)
def test_streamer_receives_prompt_then_exactly_the_generated_tokens(setup, name):
    _, _, _, prompt = setup
    free = run(setup, name)
    eos = free[first_new_token_after(free, 5)]
    streamer = Recorder()
    generated = run(setup, name, streamer=streamer, eos_token_id=eos)
    assert streamer.chunks[0] == prompt[0].tolist()
    assert sum(streamer.chunks[1:], []) == generated and generated[-1] == eos
    assert streamer.ends == 1


@pytest.mark.parametrize("name", ["greedy", "contrastive", "dola"])
def test_batched_rows_stop_independently_and_pad(setup, name):
    """Two prompts: the row that meets eos is padded afterwards while the other continues, as transformers does."""
    target, draft, tokenizer, prompt = setup
    other = prompt.flip(1)
    batch = torch.cat([prompt, other])
    kwargs = strategy_kwargs(name, draft, tokenizer)
    free = target.generate(batch, max_new_tokens=NEW_TOKENS, eos_token_id=None, **kwargs)[:, prompt.shape[1]:]
    row0, row1 = free[0].tolist(), free[1].tolist()
    stop_at = next(i for i in range(4, NEW_TOKENS) if row0[i] not in row0[:i] and row0[i] not in row1)
    out = target.generate(batch, max_new_tokens=NEW_TOKENS, eos_token_id=row0[stop_at], pad_token_id=0,
                          **kwargs)[:, prompt.shape[1]:]
    assert out[0, :stop_at + 1].tolist() == row0[:stop_at + 1]
    assert out[0, stop_at + 1:].tolist() == [0] * (out.shape[1] - stop_at - 1)
    assert out[1].tolist() == row1  # the other row never met eos: it ran to max_new_tokens


@pytest.mark.parametrize("settings", [dict(num_beams=3), dict(num_beams=4, num_beam_groups=2, diversity_penalty=1.0),
                                      dict(num_beams=3, do_sample=True)], ids=["beam", "group_beam", "beam_sample"])
def test_beam_strategies_refuse_streamers_and_honour_stop_strings(setup, settings):
    target, _, tokenizer, prompt = setup
    with pytest.raises(ValueError, match="streamer"):
        target.generate(prompt, max_new_tokens=4, streamer=Recorder(), **settings)
    common = dict(max_new_tokens=NEW_TOKENS, eos_token_id=tokenizer.eos_token_id, num_return_sequences=2,
                  length_penalty=0.0, tokenizer=tokenizer, **settings)
    torch.manual_seed(0)
    free = target.generate(prompt, **common)[0, prompt.shape[1]:].tolist()
    stop = tokenizer.decode(free[6:8])
    assert stop.strip()
    torch.manual_seed(0)
    out = target.generate(prompt, stop_strings=[stop], **common)
    texts = [tokenizer.decode(row[prompt.shape[1]:], skip_special_tokens=True) for row in out.tolist()]
    assert any(text.endswith(stop) for text in texts), "a returned hypothesis ends on the stop string"
    for text in texts:  # nothing is generated past a stop string
        assert stop not in text[:-len(stop)] if text.endswith(stop) else stop not in text
