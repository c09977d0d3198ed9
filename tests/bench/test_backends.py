"""The llama.cpp adapter's arithmetic, on a stand-in for llama_cpp.Llama (llama-cpp-python is not installed here:
it compiles llama.cpp from source): what it streams to the clock, the rates run_once derives from that on a fake
clock, and what its model handle reports."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from tokenmill.bench import measure
from tokenmill.bench.backends import LlamaCppBackend
from tokenmill.bench.measure import Workload, run_once


class TimedFakeLlama:
    """Greedy 'generation' counting up from the last prompt token; the prefill costs 1.0 s wall (3.0 s CPU),
    each further token 0.25 s wall (0.5 s CPU), on the test's fake clock."""

    clock = None  # set by the fixture

    def __init__(self, model_path, n_ctx, n_threads, n_threads_batch, verbose):
        self.model_path, self.n_threads, self.n_threads_batch = model_path, n_threads, n_threads_batch
        self.resets = 0
        self.prompts = []

    def n_vocab(self):
        return 500

    def reset(self):
        self.resets += 1

    def generate(self, tokens, top_k, top_p, min_p, temp, repeat_penalty, reset):
        assert (top_k, top_p, min_p, temp, repeat_penalty, reset) == (1, 1.0, 0.0, 0.0, 1.0, True)  # greedy
        self.prompts.append(list(tokens))
        token, first = tokens[-1], True
        while True:  # endless, like llama-cpp-python: the caller stops it
            self.clock.advance(*((1.0, 3.0) if first else (0.25, 0.5)))
            first = False
            token = (token + 1) % 500
            yield token


@pytest.fixture
def backend(tmp_path, monkeypatch):
    clock = types.SimpleNamespace(wall=50.0, cpu=7.0)

    def advance(wall, cpu):
        clock.wall += wall
        clock.cpu += cpu

    clock.advance = advance
    fake_time = types.SimpleNamespace(perf_counter=lambda: clock.wall, process_time=lambda: clock.cpu)
    monkeypatch.setattr(measure, "time", fake_time)
    monkeypatch.setattr("tokenmill.bench.backends.time", fake_time)
    monkeypatch.setattr(TimedFakeLlama, "clock", clock)
    monkeypatch.setitem(sys.modules, "llama_cpp", types.SimpleNamespace(Llama=TimedFakeLlama))
    model_file = tmp_path / "tiny.gguf"
    model_file.write_bytes(b"\0" * 12345)
    return LlamaCppBackend(model_file)


def test_the_model_handle_reports_the_file_and_the_vocabulary(backend, monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    model = backend.model("float32", "sdpa")
    assert model.weight_bytes == 12345 and model.config.vocab_size == 500 and model.device.type == "cpu"
    assert (model.llm.n_threads, model.llm.n_threads_batch) == (3, 3)
    assert backend.model("bfloat16", "eager") is model  # llama.cpp computes on the file's types whatever is asked
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert backend.model("float32", "sdpa") is not model  # its thread count is fixed when it loads


def test_exactly_new_tokens_are_timed_and_the_rates_follow(backend):
    model = backend.model("float32", "sdpa")
    workload = Workload(prompt_length=6, new_tokens=5, batch_size=1)
    result = run_once(backend, model, workload)
    assert model.llm.resets == 1 and model.llm.prompts == [measure.prompt_ids(workload, 500, "cpu")[0].tolist()]
    assert result["ttft_s"] == 1.0
    assert result["prefill_tokens_per_s"] == 6 / 1.0 and result["prefill_tokens_per_cpu_s"] == 6 / 3.0
    assert result["decode_tokens_per_s"] == 4 / (4 * 0.25) and result["decode_tokens_per_cpu_s"] == 4 / (4 * 0.5)
    assert result["kv_cache_bytes"] is None
    run_once(backend, model, workload)
    assert model.llm.resets == 2  # every run starts from an empty context: a reused prefix would skip the prefill


def test_batches_and_other_caches_are_declined(backend):
    assert "one sequence at a time" in backend.unsupported_reason(Workload(4, 4, batch_size=2))
    assert "no 'static' cache" in backend.unsupported_reason(Workload(4, 4, 1, cache_implementation="static"))
    assert backend.unsupported_reason(Workload(4, 4, 1)) is None
    with pytest.raises(ValueError, match="needs a .gguf model"):
        LlamaCppBackend(backend.path.with_suffix(".bin"))


def test_the_uncalibrated_tokenmill_keeps_the_constants_and_the_bench_records_each_plan(smollm2_gguf, tmp_path,
                                                                                        monkeypatch):
    from tokenmill.bench.backends import make_backend

    monkeypatch.setenv("TOKENMILL_CACHE", str(tmp_path))
    monkeypatch.setenv("TOKENMILL_GEMM_CALIBRATION", "1")  # on, as outside the tests
    monkeypatch.setenv("TOKENMILL_GEMM_CALIBRATION_BUDGET", "0")  # one row count: bounded test time
    plans = {}
    for name in ("tokenmill", "tokenmill-uncalibrated"):
        backend = make_backend(name, smollm2_gguf)
        backend.model("float32", "sdpa", "gguf")
        plans[name] = backend.load_info[("float32", "sdpa", "gguf", "exact")]["execution_policy"]["gemm"]
    assert plans["tokenmill"]["source"].startswith("calibrated")
    assert plans["tokenmill-uncalibrated"]["source"].startswith("off")
    assert plans["tokenmill-uncalibrated"]["fallback"].startswith("block kernel up to 96 rows")
