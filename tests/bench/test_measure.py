"""bench `run_once` against a hand-computed run: a fake backend advances fake wall and CPU clocks by known
amounts, so every rate has one right value (prefill/decode token counts include the batch; CPU rates use CPU time)."""

from __future__ import annotations

import types

import pytest
import torch

from tokenmill.bench import measure
from tokenmill.bench.measure import Workload, aggregate, run_once, summarize


class FakeClocks:
    def __init__(self, wall: float, cpu: float):
        self.wall, self.cpu = wall, cpu

    def advance(self, wall: float, cpu: float) -> None:
        self.wall += wall
        self.cpu += cpu


class FakeBackend:
    """Prefill takes 2.0 s wall and 4.0 s CPU (two busy threads); each decode step 0.5 s wall and 0.25 s CPU."""

    name = "fake"

    def __init__(self, clocks: FakeClocks, rss: list[int]):
        self.clocks, self.rss = clocks, rss

    def generate(self, model, ids, mask, new_tokens, cache_implementation, clock, resilient=False):
        clock.put(ids)  # the prompt, as generate() streams it first
        for step in range(new_tokens):
            wall, cpu = (2.0, 4.0) if step == 0 else (0.5, 0.25)
            self.clocks.advance(wall, cpu)
            self.rss.append(self.rss[-1] + 1000)  # the process grows 1000 bytes per step
            clock.put(torch.zeros(ids.shape[0], 1, dtype=torch.long))
        return types.SimpleNamespace(past_key_values=None)


@pytest.fixture
def fake_run(monkeypatch):
    clocks = FakeClocks(wall=100.0, cpu=10.0)
    rss = [50_000]
    fake_time = types.SimpleNamespace(perf_counter=lambda: clocks.wall, process_time=lambda: clocks.cpu)
    monkeypatch.setattr(measure, "time", fake_time)
    monkeypatch.setattr("tokenmill.bench.backends.time", fake_time)
    monkeypatch.setattr(measure, "current_rss", lambda: rss[-1])
    model = types.SimpleNamespace(config=types.SimpleNamespace(vocab_size=100), device=torch.device("cpu"))
    return FakeBackend(clocks, rss), model


def test_rates_match_a_hand_computed_run(fake_run):
    backend, model = fake_run
    result = run_once(backend, model, Workload(prompt_length=8, new_tokens=5, batch_size=3))
    prefilled, decoded = 3 * 8, 3 * (5 - 1)  # every row of the batch counts
    assert result["out_of_memory"] is False
    assert result["ttft_s"] == 2.0
    assert result["prefill_tokens_per_s"] == prefilled / 2.0  # 12
    assert result["decode_tokens_per_s"] == decoded / (4 * 0.5)  # 6: first token to last, prefill excluded
    assert result["prefill_tokens_per_cpu_s"] == prefilled / 4.0  # 6: CPU seconds, not wall
    assert result["decode_tokens_per_cpu_s"] == decoded / (4 * 0.25)  # 12
    assert result["memory_growth_per_token_bytes"] == (4 * 1000) / decoded
    assert result["kv_cache_bytes"] is None and result["fell_back_to_offloaded"] is False


def test_a_backend_that_stops_early_is_an_error(fake_run):
    backend, model = fake_run
    short = types.SimpleNamespace(name="short", generate=lambda m, ids, mask, n, c, clock, resilient=False:
                                  backend.generate(m, ids, mask, n - 1, c, clock))
    with pytest.raises(RuntimeError, match="short generated 3 tokens, expected 4"):
        run_once(short, model, Workload(prompt_length=4, new_tokens=4, batch_size=1))


def test_summary_statistics_are_exact():
    assert summarize([None, None]) is None
    stats = summarize([2.0, None, 4.0, 3.0])
    assert stats == {"median": 3.0, "min": 2.0, "max": 4.0, "spread_pct": 100.0 * 2.0 / 3.0,
                     "runs": [2.0, 4.0, 3.0]}
    assert summarize([0.0, 0.0])["spread_pct"] == 0.0


def test_aggregate_takes_medians_and_reports_out_of_memory():
    def run(rate, rss):
        fields = dict.fromkeys(measure.TIMED_FIELDS, rate) | dict.fromkeys(measure.MEMORY_FIELDS, None)
        return fields | {"out_of_memory": False, "fell_back_to_offloaded": False, "peak_rss_bytes": rss}

    result = aggregate([run(1.0, 10), run(3.0, 30), run(2.0, 20)])
    assert result["repeats"] == 3 and result["decode_tokens_per_s"]["median"] == 2.0
    assert result["peak_rss_bytes"] == 20 and result["kv_cache_bytes"] is None
    failed = aggregate([run(1.0, 10), {"out_of_memory": True, "error": "CUDA out of memory"}])
    assert failed == {"out_of_memory": True, "error": "CUDA out of memory", "repeats": 2}
