"""precision exact vs fast, end to end: decode tok/s of two copies of one model (one per precision) alternating in one
process: prefill 32 random tokens per row, then STEPS greedy decode steps timed; the best of REPS per precision.

    THREADS=1 python scripts/precision_ab.py MODEL.gguf BATCHES REPS STEPS [QUANTIZATION_CONFIG]
    e.g. THREADS=1 python scripts/precision_ab.py SmolLM2-135M-Instruct.Q4_1.gguf 1,8 8 8
"""
import os, sys, time, statistics, torch
from tokenmill import AutoModelForCausalLM
from tokenmill.cache.dynamic import DynamicCache
torch.set_num_threads(int(os.environ.get("THREADS", "2")))
src = sys.argv[1]; batches = [int(b) for b in sys.argv[2].split(",")]; reps = int(sys.argv[3]); steps = int(sys.argv[4])
kw = {"quantization_config": sys.argv[5]} if len(sys.argv) > 5 else {}
# two models: switching one model's policy back to exact drops its packed weights (repacked at the next fast run)
models = {"exact": AutoModelForCausalLM.from_pretrained(src, progress=False, **kw),
          "fast": AutoModelForCausalLM.from_pretrained(src, progress=False, precision="fast", **kw)}
gen = torch.Generator().manual_seed(0)
def decode(model, batch):
    ids = torch.randint(100, 20000, (batch, 32), generator=gen)
    cache = DynamicCache()
    with torch.inference_mode():
        logits = model(ids, past_key_values=cache, use_cache=True).logits[:, -1]
        start = time.perf_counter()
        for _ in range(steps):
            nxt = logits.argmax(-1, keepdim=True)
            logits = model(nxt, past_key_values=cache, use_cache=True).logits[:, -1]
        return batch * steps / (time.perf_counter() - start)
for batch in batches:
    res = {"exact": [], "fast": []}
    for name in ("exact", "fast"):  # warm-up (and the fast layers' packing)
        decode(models[name], batch)
    for _ in range(reps):
        for name in ("exact", "fast"):
            res[name].append(decode(models[name], batch))
    e, f = max(res["exact"]), max(res["fast"])
    ratios = [b / a for a, b in zip(res["exact"], res["fast"])]
    print(f"batch {batch}: best decode tok/s exact {e:.1f} fast {f:.1f}  fast/exact {f/e:.2f}x (per-pair ratios {min(ratios):.2f}-{max(ratios):.2f}) load {os.getloadavg()[0]:.1f}", flush=True)
