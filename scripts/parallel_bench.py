"""Decode tok/s of one process x 2 threads against tensor parallelism (2 ranks x 1 thread, gloo), interleaved:
(1x2, TP) rounds, greedy, an 8-token prompt, batch 1 and 8; medians and the TP/1x2 ratio per batch.
usage: python scripts/parallel_bench.py [model.gguf] [--rounds 3] [--new-tokens 48]"""

import argparse
import statistics
import time

import torch

from tokenmill import LLM, SamplingParams
from tokenmill.loading.default_model import default_model_path


def decode_rate(llm: LLM, batch: int, new_tokens: int) -> float:
    """Generated tokens per second of `batch` greedy requests run together (prefill of 8 tokens included)."""
    prompts = [[1, 504, 3458, 282, 4649, 314, 3458, 30 + row] for row in range(batch)]
    params = SamplingParams(max_tokens=new_tokens, temperature=0, ignore_eos=True)
    started = time.perf_counter()
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    elapsed = time.perf_counter() - started
    return sum(len(o.outputs[0].token_ids) for o in outputs) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", nargs="?", default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=48)
    args = parser.parse_args()
    source = args.model or str(default_model_path())
    layouts = {"1 process x 2 threads": lambda: LLM(source), "TP 2 ranks x 1 thread": lambda: LLM(
        source, tensor_parallel_size=2, threads_per_rank=1)}
    rates: dict[tuple[str, int], list[float]] = {}
    for round_index in range(args.rounds):
        for name, make in layouts.items():
            torch.set_num_threads(2)
            llm = make()
            try:
                decode_rate(llm, 1, 4)  # warm-up
                for batch in (1, 8):
                    rates.setdefault((name, batch), []).append(decode_rate(llm, batch, args.new_tokens))
            finally:
                llm.shutdown()
            print(f"round {round_index}: {name} done", flush=True)
    for batch in (1, 8):
        single = statistics.median(rates[("1 process x 2 threads", batch)])
        parallel = statistics.median(rates[("TP 2 ranks x 1 thread", batch)])
        print(f"batch {batch}: 1x2 {single:.1f} tok/s, TP=2x1 {parallel:.1f} tok/s, ratio {parallel / single:.2f} "
              f"(medians of {args.rounds}; each: {rates[('1 process x 2 threads', batch)]} / "
              f"{rates[('TP 2 ranks x 1 thread', batch)]})")


if __name__ == "__main__":
    main()
