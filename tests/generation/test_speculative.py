"""Assisted, prompt-lookup and universal assisted decoding: greedy output identical to plain greedy (and to
transformers' assisted decoding), stop/eos/streamer behaviour, and the sampled distribution equal to the
target model's."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, decoders
from transformers import PreTrainedTokenizerFast

from tokenmill import AutoModelForCausalLM

from numerics import assert_runs_agree, matmuls, reduction_len
# single_thread is an autouse fixture (one intra-op thread for tiny models)
try:  # tests/generation is a plain folder on sys.path, or a package
    from decoding_fixtures import save_tiny_llama, single_thread  # noqa: F401
except ImportError:
    from .decoding_fixtures import save_tiny_llama, single_thread  # noqa: F401

SMALL_VOCAB = 16


@pytest.fixture(scope="module")
def models_pair(tmp_path_factory):
    target_dir, draft_dir = tmp_path_factory.mktemp("target"), tmp_path_factory.mktemp("draft")
    oracle = save_tiny_llama(target_dir, seed=0, logit_scale=8.0)
    oracle_draft = save_tiny_llama(draft_dir, seed=1, layers=1, logit_scale=8.0)
    target = AutoModelForCausalLM.from_pretrained(target_dir, dtype=torch.float32)
    draft = AutoModelForCausalLM.from_pretrained(draft_dir, dtype=torch.float32)
    return oracle, oracle_draft, target, draft


def repetitive_prompt() -> torch.Tensor:
    """A prompt that repeats itself, so n-gram lookup has something to find."""
    base = torch.randint(3, 97, (1, 10), generator=torch.Generator().manual_seed(3))
    return torch.cat([base, base[:, :6], base], dim=1)


class CountingForward:
    def __init__(self, model):
        self.calls = 0
        self.handle = model.register_forward_hook(self._count)

    def _count(self, module, args, output):
        self.calls += 1


class Recorder:
    def __init__(self):
        self.chunks = []
        self.ended = False

    def put(self, value):
        self.chunks.append(value.reshape(-1).tolist())

    def end(self):
        self.ended = True


@pytest.mark.parametrize("mode", ["prompt_lookup", "assistant", "assistant_heuristic", "early_exit"])
def test_greedy_equals_plain_greedy_and_oracle(models_pair, mode):
    oracle, oracle_draft, target, draft = models_pair
    ids = repetitive_prompt()
    ours = {"prompt_lookup": dict(prompt_lookup_num_tokens=4, max_matching_ngram_size=3),
            "assistant": dict(assistant_model=draft, num_assistant_tokens=5),
            "assistant_heuristic": dict(assistant_model=draft, num_assistant_tokens_schedule="heuristic"),
            "early_exit": dict(assistant_early_exit=1, num_assistant_tokens=3)}[mode]
    theirs = {**ours, "assistant_model": oracle_draft} if "assistant_model" in ours else ours
    common = dict(max_new_tokens=30, do_sample=False, eos_token_id=None)
    plain = target.generate(ids, **common)
    counter = CountingForward(target)
    fast = target.generate(ids, **common, **ours)
    counter.handle.remove()
    assert torch.equal(fast, plain)
    assert torch.equal(fast, oracle.generate(ids, **common, **theirs))
    if mode == "prompt_lookup":
        assert counter.calls < 30, "drafts were never accepted: the loop degenerated to one token per pass"


@pytest.mark.parametrize("kind", ["static", "offloaded"])
def test_rejected_drafts_crop_other_cache_kinds(models_pair, kind):
    """Rejected draft tokens leave the cache through Cache.crop, so every kind still gives plain greedy output."""
    _, _, target, draft = models_pair
    ids = repetitive_prompt()
    common = dict(max_new_tokens=20, do_sample=False, eos_token_id=None)
    plain = target.generate(ids, **common)
    for extra in (dict(prompt_lookup_num_tokens=4), dict(assistant_model=draft, num_assistant_tokens=4)):
        assert torch.equal(target.generate(ids, cache_implementation=kind, **common, **extra), plain)


def test_eos_stop_and_streamer_match_plain_greedy(models_pair):
    _, _, target, draft = models_pair
    ids = repetitive_prompt()
    free = target.generate(ids, max_new_tokens=30, do_sample=False, eos_token_id=None)
    eos = int(free[0, ids.shape[1] + 12])  # a token the model emits mid-way
    for extra in (dict(prompt_lookup_num_tokens=5), dict(assistant_model=draft)):
        plain_stream, fast_stream = Recorder(), Recorder()
        plain = target.generate(ids, max_new_tokens=30, do_sample=False, eos_token_id=eos, streamer=plain_stream)
        fast = target.generate(ids, max_new_tokens=30, do_sample=False, eos_token_id=eos, streamer=fast_stream,
                               **extra)
        assert torch.equal(fast, plain) and int(fast[0, -1]) == eos
        assert sum(fast_stream.chunks, []) == sum(plain_stream.chunks, []) and fast_stream.ended


@pytest.mark.parametrize("drafter", ["assistant", "prompt_lookup", "early_exit"])
def test_scores_and_logits_match_plain_greedy(models_pair, drafter):
    """Per-step processed scores (a repetition penalty makes them differ from the logits) and raw logits."""
    _, _, target, draft = models_pair
    ids = repetitive_prompt()
    extra = {"assistant": dict(assistant_model=draft), "prompt_lookup": dict(prompt_lookup_num_tokens=4),
             "early_exit": dict(assistant_early_exit=1)}[drafter]
    common = dict(max_new_tokens=12, do_sample=False, eos_token_id=None, return_dict_in_generate=True,
                  output_scores=True, output_logits=True, repetition_penalty=1.3)
    plain = target.generate(ids, **common)
    fast = target.generate(ids, **common, **extra)
    assert torch.equal(fast.sequences, plain.sequences)
    assert len(fast.scores) == len(plain.scores) == len(fast.logits) == 12
    # verifying several drafted tokens in one pass sums in another order than one token a step: tests/numerics.py's
    # agreement bound (the penalty scales values and their errors alike, so the relative bound holds for scores)
    shape = reduction_len(target.config, fast.sequences.shape[1]), matmuls(target.config)
    assert_runs_agree(torch.stack(fast.scores), torch.stack(plain.scores), *shape, f"{drafter} scores")
    assert_runs_agree(torch.stack(fast.logits), torch.stack(plain.logits), *shape, f"{drafter} logits")
    assert not torch.allclose(torch.stack(fast.scores), torch.stack(fast.logits)), "the penalty must show"


def test_unsupported_requests_are_refused(models_pair):
    _, _, target, _ = models_pair
    with pytest.raises(ValueError, match="batch size 1"):
        target.generate(repetitive_prompt().repeat(2, 1), prompt_lookup_num_tokens=3, max_new_tokens=4)
    with pytest.raises(TypeError, match="tokenmill model"):
        target.generate(repetitive_prompt(), assistant_model=models_pair[1], max_new_tokens=4)
    with pytest.raises(ValueError, match="assistant_early_exit must be between 1 and 1"):
        target.generate(repetitive_prompt(), assistant_early_exit=2, max_new_tokens=4)
    with pytest.raises(ValueError, match="not both"):
        target.generate(repetitive_prompt(), assistant_early_exit=1, assistant_model=target, max_new_tokens=4)
    with pytest.raises(ValueError, match="num_assistant_tokens_schedule"):
        target.generate(repetitive_prompt(), assistant_model=target, num_assistant_tokens_schedule="fast",
                        max_new_tokens=4)


def test_num_assistant_tokens_schedules(models_pair):
    """transformers' rules: 'heuristic' adds 2 after a fully accepted draft and takes 1 (down to 1) otherwise, and
    keeps the adapted length on the assistant's generation_config for the next call; 'heuristic_transient' adapts
    within a call only; 'constant' never adapts. Settings not given to the call come from the assistant's config."""
    import copy

    from tokenmill.generation.config import GenerationConfig
    from tokenmill.generation.speculative import AssistantDrafter

    _, _, target, draft = models_pair
    drafter = AssistantDrafter(draft, None, GenerationConfig(num_assistant_tokens=6,
                                                             num_assistant_tokens_schedule="heuristic"))
    drafter.feedback(drafted=6, accepted=6)
    assert drafter.num_tokens == 8
    drafter.feedback(drafted=8, accepted=3)
    assert drafter.num_tokens == 7
    drafter.num_tokens = 1
    drafter.feedback(drafted=1, accepted=0)
    assert drafter.num_tokens == 1
    constant = AssistantDrafter(draft, None, GenerationConfig(num_assistant_tokens=6))
    constant.feedback(drafted=6, accepted=6)
    assert constant.num_tokens == 6

    ids = repetitive_prompt()
    common = dict(max_new_tokens=30, do_sample=False, eos_token_id=None)
    plain = target.generate(ids, **common)
    own = copy.copy(draft)  # a shallow copy with its own generation config, so the fixture's stays untouched
    own.generation_config = GenerationConfig(num_assistant_tokens=7, num_assistant_tokens_schedule="heuristic_transient")
    assert torch.equal(target.generate(ids, assistant_model=own, **common), plain)
    assert own.generation_config.num_assistant_tokens == 7  # transient: nothing carried over
    own.generation_config.num_assistant_tokens_schedule = "heuristic"  # read from the assistant's config
    assert torch.equal(target.generate(ids, assistant_model=own, **common), plain)
    carried = own.generation_config.num_assistant_tokens
    assert carried != 7, "the adapted draft length is kept for the next call"
    assert torch.equal(target.generate(ids, assistant_model=own, num_assistant_tokens_schedule="constant",
                                       **common), plain)
    assert own.generation_config.num_assistant_tokens == carried  # constant (from the call) keeps it as it was


# ---- sampling: the output distribution is the target's ----

@pytest.fixture(scope="module")
def small_vocab_pair(tmp_path_factory):
    target_dir, draft_dir = tmp_path_factory.mktemp("target16"), tmp_path_factory.mktemp("draft16")
    save_tiny_llama(target_dir, seed=0, vocab=SMALL_VOCAB, logit_scale=12.0)
    save_tiny_llama(draft_dir, seed=5, vocab=SMALL_VOCAB, layers=1, logit_scale=12.0)
    return (AutoModelForCausalLM.from_pretrained(target_dir, dtype=torch.float32),
            AutoModelForCausalLM.from_pretrained(draft_dir, dtype=torch.float32))


def exact_marginals(model, prompt):
    """P(first token) and P(second token) under the model, by enumerating the first token."""
    with torch.no_grad():
        first = torch.softmax(model(prompt).logits[0, -1].float(), -1)
        pairs = torch.cat([prompt.repeat(SMALL_VOCAB, 1), torch.arange(SMALL_VOCAB)[:, None]], dim=1)
        second_given = torch.softmax(model(pairs).logits[:, -1].float(), -1)
    return first, first @ second_given


def total_variation(p, q) -> float:
    return 0.5 * float((p - q).abs().sum())


def test_speculative_sampling_keeps_target_distribution(small_vocab_pair):
    target, draft = small_vocab_pair
    prompt = torch.tensor([[3, 7, 11, 5]])
    p_first, p_second = exact_marginals(target, prompt)
    q_first, _ = exact_marginals(draft, prompt)
    assert total_variation(p_first, q_first) > 0.3, "the draft must differ from the target for the test to bite"
    samples = 800
    counts = torch.zeros(2, SMALL_VOCAB)
    torch.manual_seed(0)
    for _ in range(samples):
        out = target.generate(prompt, do_sample=True, top_k=0, max_new_tokens=3, eos_token_id=None,
                              assistant_model=draft, num_assistant_tokens=2, assistant_confidence_threshold=0.0)
        counts[0, out[0, 4]] += 1
        counts[1, out[0, 5]] += 1
    # sampling noise at n=800 over 16 tokens: TV ≈ 0.04; the draft's own distribution is 0.8 / 0.5 away
    assert total_variation(counts[0] / samples, p_first) < 0.08
    assert total_variation(counts[1] / samples, p_second) < 0.08


def test_prompt_lookup_sampling_keeps_target_distribution(small_vocab_pair):
    """Without draft probabilities each position's token is the target's own sample and drafts are kept while
    they agree, so the output is distributed as the target's (checked where lookup really drafts: the prompt
    repeats itself, and its last token recurs)."""
    target, _ = small_vocab_pair
    start = torch.tensor([[3, 7, 11]])
    greedy = target.generate(start, do_sample=False, max_new_tokens=3, eos_token_id=None)
    prompt = torch.cat([greedy, start], dim=1)  # "3 7 11 a b c 3 7 11": lookup drafts "a b", often the target's
    p_first, p_second = exact_marginals(target, prompt)
    samples, counts, drafted = 800, torch.zeros(2, SMALL_VOCAB), 0
    torch.manual_seed(0)
    for _ in range(samples):
        counter = CountingForward(target)
        out = target.generate(prompt, do_sample=True, top_k=0, max_new_tokens=3, eos_token_id=None,
                              prompt_lookup_num_tokens=2, max_matching_ngram_size=2)
        counter.handle.remove()
        drafted += counter.calls < 3
        counts[0, out[0, 9]] += 1
        counts[1, out[0, 10]] += 1
    assert drafted > samples // 4, "lookup drafts must be accepted now and then for the test to bite"
    assert total_variation(counts[0] / samples, p_first) < 0.08
    assert total_variation(counts[1] / samples, p_second) < 0.08


# ---- universal assisted decoding: different tokenizers ----

def word_tokenizer(vocab_words) -> PreTrainedTokenizerFast:
    vocab = {word: index for index, word in enumerate(vocab_words)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")


def char_tokenizer() -> PreTrainedTokenizerFast:
    chars = ["[UNK]", " "] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    backend = Tokenizer(models.WordLevel({c: i for i, c in enumerate(chars)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")


def test_universal_assisted_greedy_equals_plain_greedy(tmp_path_factory):
    words = ["[UNK]", "[PAD]", "[EOS]"] + [a + b for a in "abcdefghijklmnopqrstuvwxyz" for b in "aeiou"][:94]
    target_tok, draft_tok = word_tokenizer(words), char_tokenizer()
    target_dir, draft_dir = tmp_path_factory.mktemp("uad-target"), tmp_path_factory.mktemp("uad-draft")
    save_tiny_llama(target_dir, seed=0, logit_scale=8.0)
    save_tiny_llama(draft_dir, seed=2, layers=1, vocab=len(draft_tok), logit_scale=8.0)
    target = AutoModelForCausalLM.from_pretrained(target_dir, dtype=torch.float32)
    draft = AutoModelForCausalLM.from_pretrained(draft_dir, dtype=torch.float32)
    ids = torch.tensor([target_tok.encode("ba ce di fo gu ha", add_special_tokens=False)])
    common = dict(max_new_tokens=20, do_sample=False, eos_token_id=None)
    plain = target.generate(ids, **common)
    fast = target.generate(ids, assistant_model=draft, tokenizer=target_tok, assistant_tokenizer=draft_tok, **common)
    assert torch.equal(fast, plain)
    with pytest.raises(ValueError, match="assistant_tokenizer"):
        target.generate(ids, assistant_model=draft, **common)


def test_stop_strings_end_assisted_decoding_where_plain_decoding_ends(smollm2_gguf, tmp_path_factory):
    """Stop criteria are checked after every accepted token, so a stop string inside an accepted draft ends the
    output at the same token as plain decoding (no overshoot by the rest of the draft)."""
    from tokenmill.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_gguf(smollm2_gguf)
    folder = tmp_path_factory.mktemp("stop-llama")
    save_tiny_llama(folder, vocab=len(tokenizer), eos=tokenizer.eos_token_id, logit_scale=4.0)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    sentence = tokenizer.encode("the cat sat on the mat and the dog sat on the log", add_special_tokens=False)
    ids = torch.tensor([sentence * 3])
    common = dict(max_new_tokens=24, do_sample=False, eos_token_id=None)
    free = model.generate(ids, **common)[0, ids.shape[1]:].tolist()
    stop = tokenizer.decode(free[10:12])
    assert stop.strip(), "pick a visible stop string"
    plain = model.generate(ids, stop_strings=[stop], tokenizer=tokenizer, **common)
    fast = model.generate(ids, stop_strings=[stop], tokenizer=tokenizer, prompt_lookup_num_tokens=8, **common)
    assert torch.equal(fast, plain)
    assert plain.shape[1] < ids.shape[1] + 24 and tokenizer.decode(plain[0, ids.shape[1]:]).endswith(stop)


def test_speculative_accept_rule_on_small_tensors():
    """Leviathan et al. algorithm 1 directly: the first kept token is distributed as p, and the first draft is
    accepted with probability sum_x min(p(x), q(x)) = 1 - TV(p, q)."""
    from tokenmill.generation.speculative import speculative_accept

    generator = torch.Generator().manual_seed(0)
    p_logits, q_logits = torch.randn(3, 6, generator=generator) * 2, torch.randn(2, 6, generator=generator) * 2
    p0, q0 = torch.softmax(p_logits[0], -1), torch.softmax(q_logits[0], -1)
    trials, first, accepted = 4000, torch.zeros(6), 0
    torch.manual_seed(1)
    for _ in range(trials):
        drafts = torch.stack([torch.multinomial(torch.softmax(q_logits[i], -1), 1)[0] for i in range(2)])
        kept = speculative_accept(drafts, q_logits, p_logits)
        first[kept[0]] += 1
        accepted += int(len(kept) > 1)  # kept = accepted drafts + one bonus token
    assert total_variation(first / trials, p0) < 0.035  # noise at n=4000 over 6 tokens ≈ 0.012
    expected_acceptance = float(torch.minimum(p0, q0).sum())
    assert abs(accepted / trials - expected_acceptance) < 0.035  # binomial sd ≈ 0.008


@pytest.fixture
def captured_drafter(monkeypatch):
    """The drafter of the last assisted generate() call (its stats count drafted and accepted tokens)."""
    import tokenmill.generation.speculative as speculative

    holder, original = {}, speculative.make_drafter

    def capture(*args, **kwargs):
        holder["drafter"] = original(*args, **kwargs)
        return holder["drafter"]

    monkeypatch.setattr(speculative, "make_drafter", capture)
    return holder


def test_drafts_are_really_accepted_when_the_drafter_agrees(smollm2_gguf, tmp_path_factory, captured_drafter):
    """The target drafting for itself must be accepted throughout — directly (same tokenizer) and through the
    universal path's detokenise/retokenise round trip — so the equality tests above cannot pass vacuously."""
    from tokenmill.tokenizer import Tokenizer

    tokenizer, assistant_tokenizer = Tokenizer.from_gguf(smollm2_gguf), Tokenizer.from_gguf(smollm2_gguf)
    folder = tmp_path_factory.mktemp("self-draft")
    save_tiny_llama(folder, vocab=len(tokenizer), eos=tokenizer.eos_token_id, logit_scale=4.0)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    ids = torch.tensor([tokenizer.encode("The weather today is", add_special_tokens=False)])
    # no confidence cut-off: a random model is never confident, and every draft should run its full length
    common = dict(max_new_tokens=24, do_sample=False, eos_token_id=None, assistant_confidence_threshold=0.0)
    plain = model.generate(ids, **common)
    assert torch.equal(model.generate(ids, assistant_model=model, num_assistant_tokens=4, **common), plain)
    stats = captured_drafter["drafter"].stats
    assert stats.acceptance_rate == 1.0 and stats.target_passes <= 24 // 5 + 1
    universal = model.generate(ids, assistant_model=model, tokenizer=tokenizer,
                               assistant_tokenizer=assistant_tokenizer, num_assistant_tokens=4, **common)
    assert torch.equal(universal, plain)
    stats = captured_drafter["drafter"].stats
    assert stats.acceptance_rate > 0.6 and stats.target_passes < 12, vars(stats)
