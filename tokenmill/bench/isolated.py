"""Each engine's peak memory measured in a process of its own.

In the sweep's process every engine's models stay loaded side by side, so its resident-set readings count them
all (tokenmill and transformers once both read 1106 MB where tokenmill alone holds 455 MB). Here a child process
per engine loads only that engine's model, runs each workload once to warm up and once measured (the peak reset
before it, as in the sweep), and reports the peaks on stdout as JSON.

Run as `python -m tokenmill.bench.isolated` with the request as JSON on stdin.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from .measure import Workload

PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])  # where the child imports this same tokenmill from


def isolated_peaks(engine: str, source, gguf_file: str | None, workloads: list[Workload],
                   timeout: float | None = None, placement: dict | None = None) -> list[dict]:
    """One {"peak_rss_bytes", "peak_rss_delta_bytes", "out_of_memory", "pid"} per workload (pid: the child that
    measured it), or {"error": ...} for all when the child fails (its last stderr line says why)."""
    request = {"engine": engine, "source": str(source), "gguf_file": gguf_file,
               "workloads": [asdict(workload) for workload in workloads],
               "placement": placement if engine == "tokenmill" else None}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [PACKAGE_PARENT, os.environ.get("PYTHONPATH")]))}
    try:
        child = subprocess.run([sys.executable, "-m", "tokenmill.bench.isolated"], input=json.dumps(request),
                               capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return [{"error": f"the {engine} memory process ran past {timeout} s"}] * len(workloads)
    if child.returncode != 0:
        reason = (child.stderr.strip().splitlines() or ["no message"])[-1][:200]
        return [{"error": f"the {engine} memory process failed: {reason}"}] * len(workloads)
    return json.loads(child.stdout.strip().splitlines()[-1])


def apply_isolated_memory(points: list[dict], engines: list[str], source, gguf_file: str | None,
                          placement: dict | None = None) -> None:
    """Replace each result's peak RSS by its engine's own-process reading (the shared reading kept beside it)."""
    for engine in engines:
        measured = [point for point in points if _measurable(point["results"].get(engine))]
        workloads = [Workload(**{name: point[name] for name in Workload.__dataclass_fields__ if name in point})
                     for point in measured]  # a field a point lacks (an older report's) keeps its default
        if not workloads:
            continue
        for point, reading in zip(measured, isolated_peaks(engine, source, gguf_file, workloads,
                                                                  placement=placement)):
            result = point["results"][engine]
            result["peak_rss_shared_process_bytes"] = result.get("peak_rss_bytes")
            result["peak_rss_bytes"] = reading.get("peak_rss_bytes")
            result["peak_rss_delta_bytes"] = reading.get("peak_rss_delta_bytes")
            result["memory_process_pid"] = reading.get("pid")
            if "error" in reading:
                result["isolated_memory_error"] = reading["error"]


def _measurable(result: dict | None) -> bool:
    return result is not None and "unsupported" not in result and not result.get("out_of_memory")


def _measure_all(request: dict) -> list[dict]:
    import torch

    from .backends import make_backend
    from .measure import run_once

    backend = make_backend(request["engine"], Path(request["source"]), request["gguf_file"],
                           request.get("placement"))
    readings, loaded_key = [], None
    for fields in request["workloads"]:
        workload = Workload(**fields)
        torch.set_num_threads(workload.threads)
        key = backend.model_key(workload.dtype, workload.attn_implementation, workload.weights, workload.precision)
        if key != loaded_key:  # one model at a time: the previous one leaves before the next loads
            backend.models.clear()
            gc.collect()
            loaded_key = key
        model = backend.model(workload.dtype, workload.attn_implementation, workload.weights, workload.precision)
        run_once(backend, model, workload)  # warm-up: the sweep's measured runs follow one too
        result = run_once(backend, model, workload)
        readings.append({"peak_rss_bytes": result.get("peak_rss_bytes"),
                         "peak_rss_delta_bytes": result.get("peak_rss_delta_bytes"),
                         "out_of_memory": result.get("out_of_memory", False), "pid": os.getpid()})
    return readings


if __name__ == "__main__":
    print(json.dumps(_measure_all(json.loads(sys.stdin.read()))))
