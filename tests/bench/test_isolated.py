"""The per-engine memory process: its readings replace the shared process's, and its failure is reported."""

from __future__ import annotations

import os

import torch
import transformers

from tokenmill.bench import isolated
from tokenmill.bench.measure import Workload

from .synthetic import synthetic_report


def test_readings_replace_the_shared_figures(monkeypatch):
    report = synthetic_report()
    report["points"][0]["results"]["transformers"] = {"unsupported": "no offloaded cache"}
    calls = {}

    def fake_peaks(engine, source, gguf_file, workloads, placement=None):
        calls[engine] = [w.prompt_length for w in workloads]
        return [{"peak_rss_bytes": 1000 + index, "peak_rss_delta_bytes": 10, "pid": 7}
                for index, _ in enumerate(workloads)]

    monkeypatch.setattr(isolated, "isolated_peaks", fake_peaks)
    for point in report["points"]:
        for result in point["results"].values():
            result.pop("peak_rss_shared_process_bytes", None)
    shared = report["points"][1]["results"]["tokenmill"]["peak_rss_bytes"]
    isolated.apply_isolated_memory(report["points"], ["tokenmill", "transformers"], "m.gguf", None)
    assert calls == {"tokenmill": [128, 512, 2048], "transformers": [512, 2048]}  # unsupported ones skipped
    tokenmill = report["points"][1]["results"]["tokenmill"]
    assert tokenmill["peak_rss_bytes"] == 1001 and tokenmill["peak_rss_shared_process_bytes"] == shared
    assert tokenmill["memory_process_pid"] == 7
    assert report["points"][0]["results"]["transformers"] == {"unsupported": "no offloaded cache"}


def test_a_failing_child_is_reported_not_raised(tmp_path):
    readings = isolated.isolated_peaks("tokenmill", tmp_path / "missing.gguf", None, [Workload(4, 2, 1)])
    assert len(readings) == 1 and "memory process failed" in readings[0]["error"]


def test_each_engine_is_measured_in_a_child_of_its_own(tmp_path):
    """The real children on a tiny checkpoint: one process per engine (its pid recorded), neither of them this one,
    each reading its own peak; the workloads are a few tokens, and a child past 300 s is reported, not waited on."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    transformers.LlamaForCausalLM(config).eval().save_pretrained(tmp_path)
    workloads = [Workload(4, 3, 1), Workload(8, 3, 2)]
    readings = {engine: isolated.isolated_peaks(engine, tmp_path, None, workloads, timeout=300)
                for engine in ("tokenmill", "transformers")}
    pids = {}
    for engine, engine_readings in readings.items():
        assert len(engine_readings) == 2 and not any("error" in reading for reading in engine_readings), readings
        assert len({reading["pid"] for reading in engine_readings}) == 1  # one child measured all its workloads
        pids[engine] = engine_readings[0]["pid"]
        assert all(reading["peak_rss_bytes"] > 0 and not reading["out_of_memory"] for reading in engine_readings)
    assert len({*pids.values(), os.getpid()}) == 3
