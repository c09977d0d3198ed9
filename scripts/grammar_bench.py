"""Per-token mask overhead of three grammar engines on SmolLM2's 49k vocabulary (JSON schema)."""
import json, time, sys
import torch
torch.set_num_threads(1)
from tokenmill.loading.default_model import default_model_path
from tokenmill.tokenizer import Tokenizer
tok = Tokenizer.from_gguf(default_model_path())
tok_json = tok.backend_tokenizer.to_str()
V = len(tok)
eos = tok.eos_token_id
schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 40}, "age": {"type": "integer"},
          "tags": {"type": "array", "items": {"type": "string"}}, "city": {"type": "string"}},
          "required": ["name", "age", "tags", "city"], "additionalProperties": False}
text = json.dumps({"name": "Ada Lovelace", "age": 36, "tags": ["math", "poetry", "engines"], "city": "London"})
ids = tok.encode(text, add_special_tokens=False) + [eos]
print("vocab", V, "tokens", len(ids))
results = {}

import statistics
def report(name, compile_s, per_token):
    results.setdefault(name, []).append((compile_s, per_token))
    print(f"{name}: compile {compile_s*1000:.1f} ms, mask+apply per token mean {sum(per_token)/len(per_token)*1e6:.0f} us, median {statistics.median(per_token)*1e6:.0f} us, max {max(per_token)*1e6:.0f} us", flush=True)

# llguidance
import llguidance, llguidance.torch as lgt
t0 = time.perf_counter()
lltok = llguidance.LLTokenizer(tok_json, n_vocab=V, eos_token=eos)
t1 = time.perf_counter()
grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema))
m = llguidance.LLMatcher(lltok, grammar)
t2 = time.perf_counter()
print("llguidance tokenizer build", (t1 - t0) * 1000, "ms")
bitmask = lgt.allocate_token_bitmask(1, V)
SHIFTS = torch.arange(32, dtype=torch.int32)
logits = torch.randn(1, V)
times = []
fills = []
for t in ids:
    s = time.perf_counter()
    lgt.fill_next_token_bitmask(m, bitmask, 0)
    f = time.perf_counter()
    allowed = ((bitmask[:, :, None] >> SHIFTS) & 1).bool().flatten(1)[:, :V]
    logits = logits.masked_fill(~allowed, float("-inf"))
    times.append(time.perf_counter() - s)
    fills.append(f - s)
    assert m.consume_token(t), (t, m.get_error())
    logits = torch.randn(1, V)
assert m.is_stopped() or m.is_accepting()
report("llguidance", t2 - t1, times)
print("llguidance fill only", [round(x*1e6) for x in fills])

# xgrammar
import xgrammar as xgr
t0 = time.perf_counter()
vocab = tok.get_vocab()
encoded = [""] * V
for piece, i in vocab.items():
    encoded[i] = piece
info = xgr.TokenizerInfo.from_vocab_and_metadata(encoded, tok.backend_tokenizer.to_str()) if False else \
       xgr.TokenizerInfo(encoded, vocab_type=xgr.VocabType.BYTE_LEVEL, vocab_size=V, stop_token_ids=[eos], add_prefix_space=False)
compiler = xgr.GrammarCompiler(info, max_threads=1)
t1 = time.perf_counter()
compiled = compiler.compile_json_schema(json.dumps(schema), any_whitespace=False)
matcher = xgr.GrammarMatcher(compiled)
t2 = time.perf_counter()
print("xgrammar tokenizer info", (t1 - t0) * 1000, "ms")
bm = xgr.allocate_token_bitmask(1, V)
times = []
for t in ids:
    logits = torch.randn(1, V)
    s = time.perf_counter()
    matcher.fill_next_token_bitmask(bm)
    allowed = ((bm[:, :, None] >> SHIFTS) & 1).bool().flatten(1)[:, :V]
    logits = logits.masked_fill(~allowed, float("-inf"))
    times.append(time.perf_counter() - s)
    assert matcher.accept_token(t), t
report("xgrammar", t2 - t1, times)

# outlines-core
import outlines_core
from outlines_core.json_schema import build_regex_from_schema
t0 = time.perf_counter()
regex = build_regex_from_schema(json.dumps(schema))
vmap = {}
for piece, i in vocab.items():
    if i == eos:
        continue
    vmap.setdefault(tok.decode([i]), []).append(i)
vocabulary = outlines_core.Vocabulary(eos, vmap)
t1 = time.perf_counter()
index = outlines_core.Index(regex, vocabulary)
guide = outlines_core.Guide(index)
t2 = time.perf_counter()
times = []
for t in ids:
    logits = torch.randn(1, V)
    s = time.perf_counter()
    allowed = torch.tensor(guide.get_tokens(), dtype=torch.long)
    masked = torch.full_like(logits, float("-inf"))
    masked[:, allowed] = logits[:, allowed]
    times.append(time.perf_counter() - s)
    if t == eos:
        break
    guide.advance(t)
report("outlines-core", t2 - t1, times)
