"""A bench report as `run_bench` writes it, for the table and plot tests (no timing involved)."""

from __future__ import annotations


def _result(decode: float, prefill: float, rss_mb: float) -> dict:
    stat = lambda value: {"median": value, "min": value, "max": value, "spread_pct": 3.0, "runs": [value]}
    return {"out_of_memory": False, "ttft_s": stat(0.123), "prefill_tokens_per_s": stat(prefill),
            "decode_tokens_per_s": stat(decode), "decode_tokens_per_cpu_s": stat(decode / 2),
            "prefill_tokens_per_cpu_s": stat(prefill / 2), "peak_rss_bytes": int(rss_mb * 2**20),
            "peak_rss_shared_process_bytes": int(1106 * 2**20), "kv_cache_bytes_per_token": 9216.0}


def synthetic_report() -> dict:
    points = []
    for prompt in (128, 512, 2048):
        points.append({"prompt_length": prompt, "new_tokens": 64, "batch_size": 1, "dtype": "bfloat16",
                       "attn_implementation": "sdpa", "cache_implementation": "offloaded", "threads": 16,
                       "weights": "gguf",
                       "results": {"tokenmill": _result(51.3, 1234.5, 455), "transformers": _result(20.1, 801.2, 651)},
                       "ratios": {"vs_transformers": {"decode_tokens_per_s": 2.55, "prefill_tokens_per_s": 1.54,
                                                      "ttft_s": 1.5, "decode_tokens_per_cpu_s": 2.4,
                                                      "prefill_tokens_per_cpu_s": 1.4}}})
    environment = {"model": "/models/SmolLM2-135M-Instruct-Q4_1.gguf", "machine": "x86_64",
                   "sweep": {"dtypes": ["bfloat16"], "threads": [16]},
                   "system": {"cpu_model": "AMD EPYC 9B14 96-Core Processor"}}
    return {"environment": environment, "points": points, "models": {}}
