"""The engine's prompt-lookup speculation on an input-grounded task (correct the spelling of a given paragraph and
repeat it) with SmolLM2-135M-Instruct, greedy, 1 and 8 concurrent requests, plain and speculative runs interleaved:
decode tok/s (wall clock, and from the 10th-percentile step time, which a shared machine's load disturbs least),
acceptance rate, and tokens per decode step (one model forward each; independent of the load).

    PYTHONPATH=. .venv/bin/python scripts/engine_speculative_bench.py [MAX_TOKENS=96] [K=4] [ROUNDS=2] [STEP_TOKENS=8]

STEP_TOKENS is the engine's speculative step budget (EngineConfig.speculative_step_tokens); 1000 drafts always.
TARGET=SOURCE replaces the embedded model; DRAFT=SOURCE drafts with that model (method "draft_model", e.g. the
embedded Q4_1 GGUF for TARGET=its float32 folder from `tokenmill convert`) instead of prompt lookup.
"""
import os, sys, time
from tokenmill.engine import LLM, SamplingParams
from tokenmill.loading.default_model import default_model_path

TEXTS = [
    "Teh quick brown fox jumpd over the lazy dog. It was a sunny day in the park and the childern were playing "
    "with a red ball near the old oak tree, while their parents sat on the benches and talked about the wether.",
    "Water boils at one hundered degrees Celsius at sea level, but at higher altitudes it boils at a lower "
    "temperture because the air presure is lower. This is why cooking pasta in the mountains takes longer.",
    "The libary opens at nine in the morning and closes at six in the evening, except on Sundays when it is "
    "closed all day. Visitors can borow up to five books at a time and keep them for three weeks.",
    "Paris is the captial of France. It is known for the Eiffel Tower, the Louvre museum and its many cafes "
    "along the river Seine, where tourists and locals enjoy coffee and pastries every mornig.",
]
STEP_TOKENS = int(sys.argv[4]) if len(sys.argv) > 4 else 8
DRAFT = os.environ.get("DRAFT")
llm = LLM(os.environ.get("TARGET") or str(default_model_path()), num_blocks=512, block_size=16,
          speculative_step_tokens=STEP_TOKENS, draft_model=DRAFT)
tok = llm.get_tokenizer()
prompts = [tok.encode(tok.apply_chat_template([{"role": "user", "content": "Correct the spelling mistakes in this "
                                               f"paragraph and repeat it in full:\n\n{t}"}],
                                              tokenize=False, add_generation_prompt=True), add_special_tokens=False)
           for t in TEXTS]
MAX = int(sys.argv[1]) if len(sys.argv) > 1 else 96
K = int(sys.argv[2]) if len(sys.argv) > 2 else 4


SPEC = {"method": "draft_model", "num_speculative_tokens": K} if DRAFT else \
    {"num_speculative_tokens": K, "prompt_lookup_max": 3}


def run(clients, spec):
    engine = llm.engine
    before = engine.stats()
    params = SamplingParams(temperature=0, max_tokens=MAX,
                            speculative=(SPEC if spec else None))
    first, done, count = {}, {}, {}
    steps = 0  # engine steps once every request decodes: each is one model forward
    step_seconds = []  # their durations: the shared machine's load shows as outliers, the fast ones are the cost
    for i in range(clients):
        engine.add_request(f"{spec}-{clients}-{i}-{time.time()}", prompts[i % len(prompts)], params)
    while engine.has_unfinished_requests():
        began = time.perf_counter()
        outputs = engine.step()
        if len(first) == clients:
            steps += 1
            step_seconds.append(time.perf_counter() - began)
        for out in outputs:
            now = time.perf_counter()
            n = len(out.outputs[0].token_ids)
            if n and out.request_id not in first:
                first[out.request_id] = (now, n)
            if out.finished:
                done[out.request_id] = now
                count[out.request_id] = n
    start = max(t for t, _ in first.values())  # every request decoding (prefill over)
    end = max(done.values())
    decoded = sum(count[r] - first[r][1] for r in count)
    after = engine.stats()
    drafted = after["spec_draft_tokens"] - before["spec_draft_tokens"]
    accepted = after["spec_accepted_tokens"] - before["spec_accepted_tokens"]
    span = end - min(t for t, _ in first.values())
    quick = sorted(step_seconds)[len(step_seconds) // 10]  # 10th percentile step: the cost without the load
    per_step = decoded / max(steps, 1)
    return decoded / span, accepted / drafted if drafted else 0.0, sum(count.values()) / clients, per_step, \
        per_step / quick


run(1, False)  # warm up
for rep in range(int(sys.argv[3]) if len(sys.argv) > 3 else 2):
    for clients in (1, 8):
        for spec in (False, True):
            rate, acceptance, mean_len, per_step, quick_rate = run(clients, spec)
            print(f"rep {rep} clients {clients} spec {spec}: decode {rate:.1f} tok/s (wall), {quick_rate:.1f} tok/s "
                  f"(p10 step time), acceptance {acceptance:.2f}, mean output {mean_len:.0f} tokens, "
                  f"{per_step:.2f} tokens per decode step", flush=True)
