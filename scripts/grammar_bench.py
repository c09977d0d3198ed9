"""Structured output: per-token overhead of three grammar engines, and of tokenmill's processor inside generate().

Part 1 walks one valid JSON document token by token (teacher forcing) over SmolLM2's 49k vocabulary and times,
per token, "compute the allowed-token mask + apply it to a logits row" for llguidance, xgrammar and
outlines-core (each through its packed-bitmask API), plus the schema compile time. Rounds are interleaved and
medians printed. xgrammar and outlines-core are not project dependencies; install them beside the venv:

    .venv/bin/pip install --no-deps --target /tmp/grammar_engines xgrammar apache-tvm-ffi outlines-core
    PYTHONPATH=/tmp/grammar_engines .venv/bin/python scripts/grammar_bench.py

Part 2 runs SmolLM2-135M-Instruct with and without StructuredOutputProcessor (the chosen engine, llguidance) and
reports the per-token cost it adds to a decode step, and how many sampled outputs parse and validate.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import torch

from tokenmill.loading.default_model import default_model_path
from tokenmill.tokenizer import Tokenizer

SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 40}, "age": {"type": "integer"},
                                           "tags": {"type": "array", "items": {"type": "string", "maxLength": 24},
                                                    "maxItems": 5},
                                           "city": {"type": "string", "maxLength": 40}},
          "required": ["name", "age", "tags", "city"], "additionalProperties": False}
DOCUMENT = {"name": "Ada Lovelace", "age": 36, "tags": ["math", "poetry", "engines"], "city": "London"}
SHIFTS = torch.arange(32, dtype=torch.int32)


def apply_bitmask(bitmask: torch.Tensor, logits: torch.Tensor, vocab: int) -> torch.Tensor:
    allowed = ((bitmask[:, :, None] >> SHIFTS) & 1).bool().flatten(1)[:, :vocab]
    return logits.masked_fill(~allowed, float("-inf"))


class Llguidance:
    name = "llguidance"

    def __init__(self, tokenizer, vocab, eos):
        import llguidance
        import llguidance.torch

        self.ll, self.vocab = llguidance, vocab
        self.tokenizer = llguidance.LLTokenizer(tokenizer.backend_tokenizer.to_str(), n_vocab=vocab, eos_token=eos)
        self.bitmask = llguidance.torch.allocate_token_bitmask(1, vocab)

    def compile(self):
        grammar = self.ll.LLMatcher.grammar_from_json_schema(json.dumps(SCHEMA), overrides={"whitespace_flexible": False})
        self.matcher = self.ll.LLMatcher(self.tokenizer, grammar)

    def fill(self):
        self.ll.torch.fill_next_token_bitmask(self.matcher, self.bitmask, 0)
        return self.bitmask

    def advance(self, token):
        assert self.matcher.consume_token(token), self.matcher.get_error()


class Xgrammar:
    name = "xgrammar"

    def __init__(self, tokenizer, vocab, eos):
        import xgrammar

        self.xgr, self.vocab = xgrammar, vocab
        pieces = [""] * vocab
        for piece, index in tokenizer.get_vocab().items():
            pieces[index] = piece
        # what xgrammar's from_huggingface does, minus its check for a transformers tokenizer class
        metadata = xgrammar.TokenizerInfo._detect_metadata_from_hf(tokenizer.backend_tokenizer.to_str())
        info = xgrammar.TokenizerInfo(pieces, vocab_type=xgrammar.VocabType(metadata["vocab_type"]),
                                      vocab_size=vocab, stop_token_ids=[eos],
                                      add_prefix_space=metadata["add_prefix_space"])
        self.compiler = xgrammar.GrammarCompiler(info, max_threads=1, cache_enabled=False)
        self.bitmask = xgrammar.allocate_token_bitmask(1, vocab)

    def compile(self):
        self.matcher = self.xgr.GrammarMatcher(self.compiler.compile_json_schema(json.dumps(SCHEMA), any_whitespace=False,
                                                                                   separators=(",", ":")))

    def fill(self):
        self.matcher.fill_next_token_bitmask(self.bitmask)
        return self.bitmask

    def advance(self, token):
        assert self.matcher.accept_token(token), token


class OutlinesCore:
    name = "outlines-core"

    def __init__(self, tokenizer, vocab, eos):
        import outlines_core
        from outlines_core.json_schema import build_regex_from_schema

        self.oc, self.vocab, self.eos = outlines_core, vocab, eos
        self.regex = build_regex_from_schema(json.dumps(SCHEMA), whitespace_pattern="")
        by_text: dict[str, list[int]] = {}
        for index in range(vocab):
            if index != eos:
                by_text.setdefault(tokenizer.decode([index]), []).append(index)
        self.vocabulary = outlines_core.Vocabulary(eos, by_text)
        self.bitmask = torch.zeros(1, (vocab + 31) // 32, dtype=torch.int32)

    def compile(self):
        self.guide = self.oc.Guide(self.oc.Index(self.regex, self.vocabulary))

    def fill(self):
        self.guide.write_mask_into(self.bitmask.data_ptr(), self.bitmask.numel(), 4)
        return self.bitmask

    def advance(self, token):
        if token != self.eos:
            self.guide.advance(token)


def walk(engine, ids: list[int], vocab: int) -> tuple[float, list[float], list[float]]:
    """Compile once, then at every position of the document time the engine's mask fill and the shared
    unpack + masked_fill onto a logits row; returns (compile s, fill s per token, apply s per token)."""
    start = time.perf_counter()
    engine.compile()
    compile_seconds = time.perf_counter() - start
    fills, applies = [], []
    for token in ids:
        logits = torch.randn(1, vocab)
        start = time.perf_counter()
        bitmask = engine.fill()
        filled = time.perf_counter()
        masked = apply_bitmask(bitmask, logits, vocab)
        applies.append(time.perf_counter() - filled)
        fills.append(filled - start)
        assert torch.isfinite(masked[0, token]), f"{engine.name} forbade a token of a valid document"
        engine.advance(token)
    return compile_seconds, fills, applies


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def engines_part(tokenizer, rounds: int) -> None:
    vocab, eos = len(tokenizer), tokenizer.eos_token_id
    ids = tokenizer.encode(json.dumps(DOCUMENT, separators=(",", ":")), add_special_tokens=False) + [eos]
    engines, setup = [], {}
    for kind in (Llguidance, Xgrammar, OutlinesCore):
        start = time.perf_counter()
        try:
            engines.append(kind(tokenizer, vocab, eos))
        except ImportError as error:
            print(f"{kind.name}: not installed ({error}); skipped")
            continue
        setup[kind.name] = time.perf_counter() - start
    print(f"vocabulary {vocab} tokens, document {len(ids)} tokens, {rounds} interleaved rounds, 1 torch thread")
    measured = {engine.name: {"compile": [], "fill": [], "apply": []} for engine in engines}
    for round_index in range(rounds):
        for engine in engines[round_index % len(engines):] + engines[:round_index % len(engines)]:
            compile_seconds, fills, applies = walk(engine, ids, vocab)
            measured[engine.name]["compile"].append(compile_seconds)
            measured[engine.name]["fill"] += fills
            measured[engine.name]["apply"] += applies
    print("| engine | tokenizer setup ms | schema compile ms (median) | mask fill µs per token: median | p90 | max |"
          " + unpack & apply µs: median |")
    print("|---|---|---|---|---|---|---|")
    for name, values in measured.items():
        print(f"| {name} | {setup[name] * 1e3:.0f} | {statistics.median(values['compile']) * 1e3:.1f} | "
              f"{statistics.median(values['fill']) * 1e6:.0f} | {percentile(values['fill'], 0.9) * 1e6:.0f} | "
              f"{max(values['fill']) * 1e6:.0f} | {statistics.median(values['apply']) * 1e6:.0f} |", flush=True)


def satisfies(value) -> bool:
    return (isinstance(value, dict) and set(value) == set(SCHEMA["required"]) and isinstance(value["name"], str)
            and len(value["name"]) <= 40 and isinstance(value["age"], int) and not isinstance(value["age"], bool)
            and isinstance(value["tags"], list) and len(value["tags"]) <= 5
            and all(isinstance(tag, str) and len(tag) <= 24 for tag in value["tags"])
            and isinstance(value["city"], str) and len(value["city"]) <= 40)


def generate_part(tokenizer, rounds: int, samples: int) -> None:
    from tokenmill import AutoModelForCausalLM
    from tokenmill.generation.constrained import StructuredOutputProcessor

    model = AutoModelForCausalLM.from_pretrained(default_model_path())
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Describe a famous scientist as JSON with "
                                           "name, age, tags and city."}], tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([tokenizer.encode(text, add_special_tokens=False)])
    eos = tokenizer.eos_token_id
    common = dict(max_new_tokens=48, do_sample=False, eos_token_id=eos)

    class TimedProcessor:
        """The real processor, with the time spent inside it recorded (that time is the whole overhead)."""

        def __init__(self):
            self.inner = StructuredOutputProcessor.for_json_schema(SCHEMA, tokenizer, model.config.vocab_size, eos)
            self.seconds = []

        def __call__(self, input_ids, scores):
            start = time.perf_counter()
            result = self.inner(input_ids, scores)
            self.seconds.append(time.perf_counter() - start)
            return result

    TimedProcessor()  # builds llguidance's tokenizer view once (cached per tokenizer), outside the timings
    per_token, inside = {"plain": [], "json schema": []}, []
    for round_index in range(rounds):
        for name in (("plain", "json schema") if round_index % 2 == 0 else ("json schema", "plain")):
            processor = TimedProcessor()
            extra = {"logits_processor": [processor]} if name == "json schema" else {}
            start = time.perf_counter()
            out = model.generate(ids, **common, **extra)
            per_token[name].append((time.perf_counter() - start) / (out.shape[1] - ids.shape[1]))
            if name == "json schema":
                inside += processor.seconds
                document = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    plain, constrained = (statistics.median(per_token[name]) for name in ("plain", "json schema"))
    print(f"\nSmolLM2-135M greedy, 48 new tokens max, {rounds} interleaved rounds, 1 thread:")
    print(f"  time inside the processor per token: median {statistics.median(inside) * 1e3:.2f} ms, "
          f"p90 {percentile(inside, 0.9) * 1e3:.2f} ms, first call (matcher start) {inside[0] * 1e3:.2f} ms")
    print(f"  wall per token: plain {plain * 1e3:.1f} ms, constrained {constrained * 1e3:.1f} ms "
          f"(difference {(constrained - plain) * 1e3:+.1f} ms; the shared machine's noise is of that order)")
    print("  greedy constrained output:", document)
    valid = truncated = 0
    for seed in range(samples):
        torch.manual_seed(seed)
        out = model.generate(ids, logits_processor=[TimedProcessor()], do_sample=True, temperature=1.0, top_k=0,
                             max_new_tokens=240, eos_token_id=eos)
        text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        if int(out[0, -1]) != eos:
            truncated += 1
            continue
        valid += satisfies(json.loads(text))
    print(f"  sampled (temperature 1, no top-k), seeds 0..{samples - 1}: {valid}/{samples - truncated} finished "
          f"outputs parse and satisfy the schema ({truncated} hit max_new_tokens)")


def main() -> None:
    torch.set_num_threads(1)
    tokenizer = Tokenizer.from_gguf(default_model_path())
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    engines_part(tokenizer, rounds)
    generate_part(tokenizer, rounds=4, samples=int(sys.argv[2]) if len(sys.argv) > 2 else 20)


if __name__ == "__main__":
    main()
