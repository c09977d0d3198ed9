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
    """Prefill takes 2.0 s wall and 4.0 s CPU (two busy threads); each decode step 0.5 s wall and 0.25 s CPU
    (`step_seconds` overrides both for the decode steps). Records what run_once hands it."""

    name = "fake"

    def __init__(self, clocks: FakeClocks, rss: list[int]):
        self.clocks, self.rss = clocks, rss
        self.calls = []
        self.returns = None  # the output's past_key_values
        self.prefill_seconds, self.step_seconds = (2.0, 4.0), (0.5, 0.25)

    def generate(self, model, ids, mask, new_tokens, cache_implementation, clock, resilient=False):
        self.calls.append((ids, mask, new_tokens, cache_implementation, resilient))
        clock.put(ids)  # the prompt, as generate() streams it first
        for step in range(new_tokens):
            self.clocks.advance(*(self.prefill_seconds if step == 0 else self.step_seconds))
            self.rss.append(self.rss[-1] + 1000)  # the process grows 1000 bytes per step
            clock.put(torch.zeros(ids.shape[0], 1, dtype=torch.long))
        return types.SimpleNamespace(past_key_values=self.returns)


@pytest.fixture
def fake_run(monkeypatch):
    clocks = FakeClocks(wall=100.0, cpu=10.0)
    rss = [50_000]
    fake_time = types.SimpleNamespace(perf_counter=lambda: clocks.wall, process_time=lambda: clocks.cpu)
    monkeypatch.setattr(measure, "time", fake_time)
    monkeypatch.setattr("tokenmill.bench.backends.time", fake_time)
    monkeypatch.setattr(measure, "current_rss", lambda: rss[-1])
    monkeypatch.setattr(measure, "peak_rss", lambda: 90_000)
    # the meta device: the prompt must be built where the model is (and no GPU statistics are read there)
    model = types.SimpleNamespace(config=types.SimpleNamespace(vocab_size=100), device=torch.device("meta"))
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
    assert result["peak_rss_bytes"] == 90_000 and result["peak_rss_delta_bytes"] == 90_000 - 50_000
    assert result["kv_cache_bytes"] is None and result["kv_cache_bytes_per_token"] is None
    assert result["fell_back_to_offloaded"] is False
    assert result["gpu_peak_allocated_bytes"] is None and result["gpu_peak_reserved_bytes"] is None
    (ids, mask, new_tokens, cache, resilient), = backend.calls
    assert ids.device.type == "meta" and ids.shape == (3, 8) and mask.shape == (3, 8)
    assert (new_tokens, cache, resilient) == (5, "dynamic", False)


def test_the_prompt_is_fixed_per_length_and_avoids_special_ids():
    ids = measure.prompt_ids(Workload(prompt_length=7, new_tokens=1, batch_size=3), 40, "cpu")
    assert ids.shape == (3, 7) and torch.equal(ids[0], ids[2])
    assert ids[0].tolist() == [25, 32, 11, 36, 23, 37, 27]  # pinned: bench results stay comparable across versions
    assert int(ids.min()) >= 10 and int(ids.max()) < 40
    assert torch.equal(ids, measure.prompt_ids(Workload(7, 9, 3), 40, "cpu"))  # same prompt for every backend
    assert measure.prompt_ids(Workload(5, 1, 1), 8, "cpu").tolist() == [[10] * 5]  # a tiny vocabulary: id 10
    huge = measure.prompt_ids(Workload(400, 1, 1), 10**6, "cpu")
    assert int(huge.max()) < 30000 and huge[0, :4].tolist() == [26506, 20491, 29722, 2125]  # capped at 30000


def test_the_returned_cache_is_measured_and_a_fallback_to_offloaded_is_noticed(fake_run):
    from tokenmill.cache.offloaded import OffloadedCache

    backend, model = fake_run
    backend.returns = types.SimpleNamespace(nbytes=lambda: 4800)
    result = run_once(backend, model, Workload(prompt_length=8, new_tokens=5, batch_size=3), resilient=True)
    assert result["kv_cache_bytes"] == 4800 and result["kv_cache_bytes_per_token"] == 4800 / (3 * (8 + 5 - 1))
    assert backend.calls[-1][-1] is True  # resilient reaches the backend
    backend.returns = OffloadedCache()
    assert run_once(backend, model, Workload(8, 5, 1))["fell_back_to_offloaded"] is True
    assert run_once(backend, model, Workload(8, 5, 1, cache_implementation="offloaded"))[
        "fell_back_to_offloaded"] is False  # asked for: not a fallback
    assert backend.calls[-1][3] == "offloaded"


def test_instant_steps_and_single_tokens_give_no_rate(fake_run):
    backend, model = fake_run
    backend.step_seconds = (0.0, 0.0)
    result = run_once(backend, model, Workload(prompt_length=8, new_tokens=3, batch_size=1))
    assert result["decode_tokens_per_s"] is None and result["decode_tokens_per_cpu_s"] is None
    assert result["prefill_tokens_per_cpu_s"] == 8 / 4.0
    one = run_once(backend, model, Workload(prompt_length=8, new_tokens=1, batch_size=1))
    assert one["memory_growth_per_token_bytes"] is None and one["decode_tokens_per_s"] is None
    assert run_once(backend, model, Workload(8, 2, 1))["memory_growth_per_token_bytes"] == 1000 / 1
    backend.prefill_seconds = (0.5, 0.5)  # under a second of CPU still gives a rate ...
    assert run_once(backend, model, Workload(8, 2, 1))["prefill_tokens_per_cpu_s"] == 8 / 0.5
    backend.prefill_seconds = (0.5, 0.0)  # ... no CPU time at all gives none
    assert run_once(backend, model, Workload(8, 2, 1))["prefill_tokens_per_cpu_s"] is None


def test_unknown_memory_readings_stay_unknown(fake_run, monkeypatch):
    backend, model = fake_run
    monkeypatch.setattr(measure, "peak_rss", lambda: None)
    assert run_once(backend, model, Workload(8, 2, 1))["peak_rss_delta_bytes"] is None
    monkeypatch.setattr(measure, "peak_rss", lambda: 90_000)
    monkeypatch.setattr(measure, "current_rss", lambda: None)  # no /proc: neither baseline nor growth
    result = run_once(backend, model, Workload(8, 2, 1))
    assert result["peak_rss_delta_bytes"] is None and result["memory_growth_per_token_bytes"] is None


def test_a_model_without_a_device_attribute_runs_on_the_cpu(fake_run):
    backend, _ = fake_run
    model = types.SimpleNamespace(config=types.SimpleNamespace(vocab_size=100))  # e.g. another engine's handle
    result = run_once(backend, model, Workload(8, 2, 1))
    assert backend.calls[-1][0].device.type == "cpu" and result["gpu_peak_allocated_bytes"] is None


def test_out_of_memory_is_a_result_and_other_errors_propagate(fake_run):
    backend, model = fake_run

    def failing(message):
        def generate(*args, **kwargs):
            raise RuntimeError(message)
        return types.SimpleNamespace(name="failing", generate=generate)

    result = run_once(failing("CUDA out of memory. " + "x" * 300 + "\nsecond line"), model, Workload(8, 5, 1))
    assert result == {"out_of_memory": True, "error": ("CUDA out of memory. " + "x" * 300)[:200]}
    with pytest.raises(RuntimeError, match="shape mismatch"):
        run_once(failing("shape mismatch"), model, Workload(8, 5, 1))


def test_cache_bytes_counts_each_tensor_once():
    shared = torch.zeros(2, 3, dtype=torch.float32)  # 24 bytes, held by two layers
    layers = [types.SimpleNamespace(keys=shared, values=torch.zeros(5, dtype=torch.float16)),
              types.SimpleNamespace(keys=shared, values=None)]
    assert measure.cache_bytes(types.SimpleNamespace(layers=layers)) == 24 + 10
    assert measure.cache_bytes(types.SimpleNamespace(layers=[])) is None
    assert measure.cache_bytes(None) is None
    assert measure.cache_bytes(types.SimpleNamespace()) is None  # neither nbytes() nor layers
    assert measure.cache_bytes(types.SimpleNamespace(layers=[types.SimpleNamespace(keys=shared)])) == 24
    assert measure.cache_bytes(types.SimpleNamespace(nbytes=lambda: 77, layers=layers)) == 77


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

    result = aggregate([run(1.0, 10), run(3.0, 30) | {"fell_back_to_offloaded": True}, run(2.0, 20)])
    assert result["repeats"] == 3 and result["decode_tokens_per_s"]["median"] == 2.0
    assert result["out_of_memory"] is False and result["fell_back_to_offloaded"] is True
    assert result["peak_rss_bytes"] == 20 and result["kv_cache_bytes"] is None
    failed = aggregate([run(1.0, 10), {"out_of_memory": True, "error": "CUDA out of memory"}])
    assert failed == {"out_of_memory": True, "error": "CUDA out of memory", "repeats": 2}
