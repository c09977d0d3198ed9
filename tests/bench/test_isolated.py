"""The per-engine memory process: its readings replace the shared process's, and its failure is reported."""

from __future__ import annotations

from tokenmill.bench import isolated

from .synthetic import synthetic_report


def test_readings_replace_the_shared_figures(monkeypatch):
    report = synthetic_report()
    report["points"][0]["results"]["transformers"] = {"unsupported": "no offloaded cache"}
    calls = {}

    def fake_peaks(engine, source, gguf_file, workloads, placement=None):
        calls[engine] = [w.prompt_length for w in workloads]
        return [{"peak_rss_bytes": 1000 + index, "peak_rss_delta_bytes": 10} for index, _ in enumerate(workloads)]

    monkeypatch.setattr(isolated, "isolated_peaks", fake_peaks)
    for point in report["points"]:
        for result in point["results"].values():
            result.pop("peak_rss_shared_process_bytes", None)
    shared = report["points"][1]["results"]["tokenmill"]["peak_rss_bytes"]
    isolated.apply_isolated_memory(report["points"], ["tokenmill", "transformers"], "m.gguf", None)
    assert calls == {"tokenmill": [128, 512, 2048], "transformers": [512, 2048]}  # unsupported ones skipped
    tokenmill = report["points"][1]["results"]["tokenmill"]
    assert tokenmill["peak_rss_bytes"] == 1001 and tokenmill["peak_rss_shared_process_bytes"] == shared
    assert report["points"][0]["results"]["transformers"] == {"unsupported": "no offloaded cache"}


def test_a_failing_child_is_reported_not_raised(tmp_path):
    from tokenmill.bench.measure import Workload

    readings = isolated.isolated_peaks("tokenmill", tmp_path / "missing.gguf", None, [Workload(4, 2, 1)])
    assert len(readings) == 1 and "memory process failed" in readings[0]["error"]
