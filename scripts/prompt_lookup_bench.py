"""Prompt-lookup decoding on the real SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised float32): an editing task."""
import sys, time
import torch
torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
from tokenmill import AutoModelForCausalLM
from tokenmill.tokenizer import Tokenizer
from tokenmill.loading.default_model import default_model_path
import tokenmill.generation.speculative as spec

path = default_model_path()
t0 = time.perf_counter()
model = AutoModelForCausalLM.from_pretrained(path)
tok = Tokenizer.from_gguf(path)
print(f"load {time.perf_counter() - t0:.1f}s dtype {model.dtype}", flush=True)
paragraph = ("The quick brown fox jumps over the lazy dog near the river bank every morning. "
             "It was a sunny day and the fox was feeling very happpy about the weather. "
             "The dog, however, was not amused and barked loudly at the passing birds. "
             "After a while, both animals settled down under the big oak tree to rest.")
messages = [{"role": "user", "content": "Correct the spelling mistake in this paragraph and repeat the whole "
             "paragraph with the correction:\n\n" + paragraph}]
text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
ids = torch.tensor([tok.encode(text, add_special_tokens=False)])
captured = {}
original = spec.make_drafter
def capture(*a, **k):
    d = original(*a, **k); captured["d"] = d; return d
spec.make_drafter = capture
common = dict(max_new_tokens=96, do_sample=False, eos_token_id=tok.eos_token_id)
print("prompt tokens", ids.shape[1], flush=True)
times = {"plain": [], "lookup": []}
for rep in range(3):
    s = time.perf_counter(); plain = model.generate(ids, **common); times["plain"].append(time.perf_counter() - s)
    s = time.perf_counter(); fast = model.generate(ids, prompt_lookup_num_tokens=10, max_matching_ngram_size=2, **common)
    times["lookup"].append(time.perf_counter() - s)
    stats = captured["d"].stats
    new = fast.shape[1] - ids.shape[1]
    print(f"rep {rep}: identical={torch.equal(plain, fast)} new_tokens={new} plain {times['plain'][-1]:.2f}s "
          f"lookup {times['lookup'][-1]:.2f}s target_passes={stats.target_passes} drafted={stats.drafted} "
          f"accepted={stats.accepted} acceptance={stats.acceptance_rate:.2f} tokens/pass={new / stats.target_passes:.2f}",
          flush=True)
best_plain, best_lookup = min(times["plain"]), min(times["lookup"])
print(f"best plain {best_plain:.2f}s, best lookup {best_lookup:.2f}s, speed-up x{best_plain / best_lookup:.2f}")
print(repr(tok.decode(plain[0, ids.shape[1]:])))
