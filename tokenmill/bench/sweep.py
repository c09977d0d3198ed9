"""A sweep: every combination of the requested settings, each measured on every backend, interleaved.

For each workload: one warm-up run per backend, then `repeats` rounds; in a round every backend runs once,
and the order alternates between rounds, so a noisy neighbour slows both sides alike. Ratios are
tokenmill / other for throughputs and other / tokenmill for times (above 1 means tokenmill is faster).
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm

from .measure import Workload, aggregate, run_once


@dataclass
class SweepSpec:
    prompt_lengths: list[int]
    new_tokens: list[int]
    batch_sizes: list[int]
    dtypes: list[str] = field(default_factory=lambda: ["float32"])
    attn_implementations: list[str] = field(default_factory=lambda: ["sdpa"])
    cache_implementations: list[str] = field(default_factory=lambda: ["dynamic"])
    threads: list[int] = field(default_factory=lambda: [2])
    repeats: int = 3
    warmup: int = 1
    weights: list[str] = field(default_factory=lambda: ["auto"])
    precisions: list[str] = field(default_factory=lambda: ["exact"])

    def workloads(self) -> list[Workload]:
        grid = itertools.product(self.weights, self.precisions, self.dtypes, self.attn_implementations,
                                 self.cache_implementations, self.threads, self.batch_sizes, self.prompt_lengths,
                                 self.new_tokens)
        return [Workload(prompt, new, batch, dtype, attn, cache, threads, weights, precision)
                for weights, precision, dtype, attn, cache, threads, batch, prompt, new in grid]


RATIO_FIELDS = {"decode_tokens_per_s": False, "prefill_tokens_per_s": False, "ttft_s": True,
                "decode_tokens_per_cpu_s": False, "prefill_tokens_per_cpu_s": False}


def ratios(mine: dict, other: dict) -> dict:
    """tokenmill's advantage per field, from the medians (None when a side has no value)."""
    out = {}
    for name, lower_is_better in RATIO_FIELDS.items():
        a, b = (mine.get(name) or {}).get("median"), (other.get(name) or {}).get("median")
        out[name] = None if not a or not b else (b / a if lower_is_better else a / b)
    return out


def run_workload(workload: Workload, backends: list, repeats: int, warmup: int, advance) -> dict:
    torch.set_num_threads(workload.threads)
    reasons = {b.name: b.unsupported_reason(workload) for b in backends}
    active = [b for b in backends if reasons[b.name] is None]
    results = {name: {"unsupported": reason} for name, reason in reasons.items() if reason is not None}
    for _ in range((len(backends) - len(active)) * (repeats + warmup)):
        advance()  # skipped runs still count toward the progress bar's total
    models = {b.name: b.model(workload.dtype, workload.attn_implementation, workload.weights, workload.precision)
              for b in active}
    for backend in active:
        for _ in range(warmup):
            run_once(backend, models[backend.name], workload)
            advance()
    runs = {b.name: [] for b in active}
    for round_index in range(repeats):
        order = active if round_index % 2 == 0 else list(reversed(active))
        for backend in order:
            runs[backend.name].append(run_once(backend, models[backend.name], workload))
            advance()
    results.update({name: aggregate(values) for name, values in runs.items()})
    entry = {**asdict(workload), "results": results, "ratios": {}}
    mine = results.get("tokenmill", {})
    for name, other in results.items():
        if name != "tokenmill" and "unsupported" not in other and not other.get("out_of_memory") \
                and mine and not mine.get("out_of_memory"):
            entry["ratios"][f"vs_{name}"] = ratios(mine, other)
    return entry


def run_sweep(spec: SweepSpec, backends: list, progress: bool = True) -> list[dict]:
    workloads = spec.workloads()
    total = len(workloads) * len(backends) * (spec.repeats + spec.warmup)
    points = []
    with tqdm(total=total, desc="bench", unit="run", disable=not progress, leave=False) as bar:
        for workload in workloads:
            bar.set_postfix_str(workload.label())
            points.append(run_workload(workload, backends, spec.repeats, spec.warmup, lambda: bar.update(1)))
    return points
