"""The longest sequence that fits: grow the prompt until memory runs out, then stop cleanly and report it.

On a GPU the allocator raises out-of-memory; on a CPU the kernel would rather kill the process, so a memory
budget (bytes of peak RSS, default 80% of what is available when the search starts) plays the allocator's
part: a length whose run exceeds the budget counts as out of memory. The model's context length also ends
the search. tokenmill runs with `resilient=True`, so the length where it fell back to the offloaded cache is
recorded too.
"""

from __future__ import annotations

import gc
from dataclasses import replace

from ..kernels.system import available_memory
from .measure import Workload, run_once


def default_budget() -> int | None:
    available = available_memory()
    return int(available * 0.8) if available else None


def candidate_lengths(start: int, limit: int, growth: float = 2.0) -> list[int]:
    """start, start * growth, … and finally `limit` itself."""
    lengths, length = [], max(1, start)
    while length < limit:
        lengths.append(length)
        length = max(length + 1, int(length * growth))
    return lengths + [limit] if limit >= 1 else lengths


def search_limit(backend, model, workload: Workload, start: int, maximum: int | None, budget: int | None,
                 on_try=None) -> dict:
    context = model.config.max_position_embeddings
    ceiling = min(maximum or context, context) - workload.new_tokens
    tried, longest, failure, fallback_at = [], None, None, None
    reason = f"reached the largest length asked for ({maximum})"
    for length in candidate_lengths(start, ceiling):
        run = run_once(backend, model, replace(workload, prompt_length=length),
                       resilient=backend.name == "tokenmill")
        gc.collect()
        peak = run.get("peak_rss_bytes")
        over_budget = budget is not None and peak is not None and peak > budget
        entry = {"sequence_length": length + workload.new_tokens, "peak_rss_bytes": peak,
                 "out_of_memory": run["out_of_memory"] or over_budget,
                 "decode_tokens_per_s": run.get("decode_tokens_per_s")}
        tried.append(entry)
        if on_try is not None:
            on_try(entry)
        if run.get("fell_back_to_offloaded") and fallback_at is None:
            fallback_at = entry["sequence_length"]
        if entry["out_of_memory"]:
            failure = entry["sequence_length"]
            reason = "out of memory" if run["out_of_memory"] else f"peak RSS over the budget of {budget} bytes"
            break
        longest = entry["sequence_length"]
    if failure is None and (maximum is None or maximum >= context):
        reason = f"reached the model's context length ({context})"
    return {"longest_fit": longest, "first_failure": failure, "stopped_because": reason,
            "budget_bytes": budget, "fallback_to_offloaded_at": fallback_at, "tried": tried}
