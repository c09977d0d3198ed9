"""One measured generation, and the statistics of several.

A run generates exactly `new_tokens` greedy tokens for `batch` copies of a `prompt_length`-token prompt and
reads: time to first token (prefill + first sample), prefill tokens/s (batch * prompt / TTFT), decode
tokens/s (batch * (new - 1) tokens over the time between the first and last token, so prefill is excluded),
peak RSS during the run, and memory growth per generated token (RSS after the last token minus after the
first, over the tokens in between, as the process sees it) next to the KV cache's own bytes per token.
Prefill and decode rates are also given per CPU-second of the process, which a shared machine disturbs far
less than wall time.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from ..cache.offloaded import OffloadedCache, is_out_of_memory
from .backends import Backend, TokenClock
from .memory import current_rss, gpu_memory, peak_rss, reset_gpu_peak, reset_peak_rss


@dataclass(frozen=True)
class Workload:
    prompt_length: int
    new_tokens: int
    batch_size: int
    dtype: str = "float32"
    attn_implementation: str = "sdpa"
    cache_implementation: str = "dynamic"
    threads: int = 2
    weights: str = "auto"  # tokenmill only: gguf (kept as blocks), dense (dequantized at load), auto
    precision: str = "exact"  # tokenmill only: the block matmuls' precision, "exact" or "fast" (int8 activations)

    def label(self) -> str:
        return (f"p{self.prompt_length} n{self.new_tokens} b{self.batch_size} {self.dtype} "
                f"{self.attn_implementation} {self.cache_implementation} t{self.threads} {self.weights} {self.precision}")


def prompt_ids(workload: Workload, vocab_size: int, device: torch.device) -> torch.Tensor:
    """A fixed pseudo-random prompt (same for every backend); ids avoid the first 10 (special tokens)."""
    generator = torch.Generator().manual_seed(workload.prompt_length)
    ids = torch.randint(10, max(11, min(vocab_size, 30000)), (1, workload.prompt_length), generator=generator)
    return ids.repeat(workload.batch_size, 1).to(device)


class RssProbe:
    """Reads RSS at the first and at the last generated token (cheap: one /proc read per step)."""

    def __init__(self):
        self.first: int | None = None
        self.last: int | None = None

    def __call__(self, step: int) -> None:
        rss = current_rss()
        if step == 1:
            self.first = rss
        self.last = rss


def run_once(backend: Backend, model, workload: Workload, resilient: bool = False) -> dict:
    device = getattr(model, "device", torch.device("cpu"))
    vocab = model.config.vocab_size
    ids = prompt_ids(workload, vocab, device)
    mask = torch.ones_like(ids)
    probe = RssProbe()
    clock = TokenClock(on_step=probe)
    baseline = current_rss()
    reset_peak_rss()
    reset_gpu_peak(device)
    started, started_cpu = time.perf_counter(), time.process_time()
    try:
        output = backend.generate(model, ids, mask, workload.new_tokens, workload.cache_implementation, clock,
                                  resilient=resilient)
    except (RuntimeError, MemoryError) as error:
        if not is_out_of_memory(error):
            raise
        return {"out_of_memory": True, "error": str(error).splitlines()[0][:200]}
    if len(clock.times) != workload.new_tokens:
        raise RuntimeError(f"{backend.name} generated {len(clock.times)} tokens, expected {workload.new_tokens}")
    ttft = clock.times[0] - started
    decode_seconds = clock.times[-1] - clock.times[0]
    decode_cpu_seconds = clock.cpu_times[-1] - clock.cpu_times[0]
    prefill_cpu_seconds = clock.cpu_times[0] - started_cpu
    decoded = workload.batch_size * (workload.new_tokens - 1)
    prefilled = workload.batch_size * workload.prompt_length
    peak = peak_rss()
    growth = None
    if probe.first is not None and workload.new_tokens > 1:
        growth = (probe.last - probe.first) / decoded
    kv_bytes = cache_bytes(getattr(output, "past_key_values", None))
    positions = workload.batch_size * (workload.prompt_length + workload.new_tokens - 1)
    return {
        "out_of_memory": False,
        "ttft_s": ttft,
        "prefill_tokens_per_s": prefilled / ttft,
        "decode_tokens_per_s": decoded / decode_seconds if decode_seconds > 0 else None,
        "prefill_tokens_per_cpu_s": prefilled / prefill_cpu_seconds if prefill_cpu_seconds > 0 else None,
        "decode_tokens_per_cpu_s": decoded / decode_cpu_seconds if decode_cpu_seconds > 0 else None,
        "peak_rss_bytes": peak,
        "peak_rss_delta_bytes": None if peak is None or baseline is None else peak - baseline,
        "memory_growth_per_token_bytes": growth,
        "kv_cache_bytes": kv_bytes,
        "kv_cache_bytes_per_token": kv_bytes / positions if kv_bytes else None,
        "fell_back_to_offloaded": isinstance(getattr(output, "past_key_values", None), OffloadedCache)
        and workload.cache_implementation != "offloaded",
        **gpu_memory(device),
    }


def cache_bytes(cache) -> int | None:
    """Bytes held by a returned KV cache: tokenmill's own count, else the per-layer keys/values tensors."""
    if cache is None:
        return None
    if callable(getattr(cache, "nbytes", None)):
        return cache.nbytes()
    seen: dict[int, int] = {}
    for layer in getattr(cache, "layers", []):
        for name in ("keys", "values"):
            tensor = getattr(layer, name, None)
            if isinstance(tensor, torch.Tensor):
                seen[tensor.data_ptr()] = tensor.numel() * tensor.element_size()
    return sum(seen.values()) or None


def summarize(values: list[float | None]) -> dict | None:
    """Median and spread of repeated measurements (None when no run produced a value)."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "spread_pct": 100.0 * (max(values) - min(values)) / statistics.median(values)
            if statistics.median(values) else 0.0,
            "runs": values}


TIMED_FIELDS = ("ttft_s", "prefill_tokens_per_s", "decode_tokens_per_s", "prefill_tokens_per_cpu_s",
                "decode_tokens_per_cpu_s")
MEMORY_FIELDS = ("peak_rss_bytes", "peak_rss_delta_bytes", "memory_growth_per_token_bytes", "kv_cache_bytes",
                 "kv_cache_bytes_per_token", "gpu_peak_allocated_bytes", "gpu_peak_reserved_bytes")


def aggregate(runs: list[dict]) -> dict:
    """Per-field statistics over repeats; memory fields take the median run's value."""
    if any(run.get("out_of_memory") for run in runs):
        failed = next(run for run in runs if run.get("out_of_memory"))
        return {"out_of_memory": True, "error": failed.get("error"), "repeats": len(runs)}
    result = {"out_of_memory": False, "repeats": len(runs),
              "fell_back_to_offloaded": any(run["fell_back_to_offloaded"] for run in runs)}
    for field in TIMED_FIELDS:
        result[field] = summarize([run[field] for run in runs])
    for field in MEMORY_FIELDS:
        values = [run[field] for run in runs if run[field] is not None]
        result[field] = statistics.median(values) if values else None
    return result
