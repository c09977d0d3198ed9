"""Sweep arithmetic: tokenmill's advantage ratios from the medians (throughputs mine/other, times other/mine)."""

from __future__ import annotations

from tokenmill.bench.sweep import SweepSpec, ratios


def _stats(**medians):
    return {name: {"median": value} for name, value in medians.items()}


def test_ratios_divide_the_right_way_round():
    mine = _stats(decode_tokens_per_s=12.0, prefill_tokens_per_s=100.0, ttft_s=0.5, decode_tokens_per_cpu_s=8.0,
                  prefill_tokens_per_cpu_s=None)
    other = _stats(decode_tokens_per_s=4.0, prefill_tokens_per_s=400.0, ttft_s=2.0, decode_tokens_per_cpu_s=0.0,
                   prefill_tokens_per_cpu_s=50.0)
    assert ratios(mine, other) == {"decode_tokens_per_s": 3.0, "prefill_tokens_per_s": 0.25, "ttft_s": 4.0,
                                   "decode_tokens_per_cpu_s": None, "prefill_tokens_per_cpu_s": None}


def test_the_sweep_grid_holds_every_combination_once():
    spec = SweepSpec(prompt_lengths=[4, 8], new_tokens=[2], batch_sizes=[1, 3], threads=[1, 2])
    labels = [w.label() for w in spec.workloads()]
    assert len(labels) == len(set(labels)) == 2 * 2 * 2
    assert labels[0] == "p4 n2 b1 float32 sdpa dynamic t1 auto exact"
