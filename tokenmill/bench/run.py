"""`tokenmill bench`: load the backends, run the sweep and the memory-limit search, assemble the report."""

from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..version import __version__
from ..kernels import system
from .backends import make_backend
from .isolated import apply_isolated_memory
from .limits import default_budget, search_limit
from .measure import Workload
from .sweep import SweepSpec, run_sweep

NOISE_NOTE = ("CPU timings on a shared machine are noisy: compare medians and the interleaved ratios, "
              "not absolute numbers across runs")


@dataclass
class BenchOptions:
    source: Path
    gguf_file: str | None
    spec: SweepSpec
    versus: list[str]
    limit_search: bool = False
    limit_start: int = 256
    limit_max: int | None = None
    limit_batch: int = 1
    memory_budget: int | None = None
    progress: bool = True
    # None: in a process per engine when this one holds several models (every engine's weights counted otherwise)
    isolate_memory: bool | None = None
    # tokenmill's from_pretrained placement (device_map, max_memory, offload_folder); None: one device
    placement: dict | None = None


def environment(options: BenchOptions) -> dict:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    versions = {"tokenmill": __version__, "torch": torch.__version__, "python": platform.python_version()}
    for name in options.versus:
        module = sys.modules.get(name)
        versions[name] = getattr(module, "__version__", None)
    return {"date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "model": str(options.source),
            "versions": versions, "machine": platform.machine(), "cpu_count": os.cpu_count(),
            "load_average_at_start": list(load) if load else None, "note": NOISE_NOTE,
            "sweep": asdict(options.spec), "system": system.describe()}


def run_bench(options: BenchOptions) -> dict:
    backends = [make_backend("tokenmill", options.source, options.gguf_file, options.placement)]
    backends += [make_backend(name, options.source, options.gguf_file) for name in options.versus]
    report = {"environment": environment(options)}
    report["points"] = run_sweep(options.spec, backends, progress=options.progress)
    if _isolates_memory(options, backends):
        apply_isolated_memory(report["points"], [b.name for b in backends], options.source, options.gguf_file,
                              options.placement)
    report["models"] = {" ".join((b.name, *(part for part in key if part not in ("auto", "exact")))): info
                        for b in backends for key, info in b.load_info.items()}
    if options.limit_search:
        report["limits"] = run_limit_search(options, backends)
    report["environment"]["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return report


def _isolates_memory(options: BenchOptions, backends) -> bool:
    if options.isolate_memory is not None:
        return options.isolate_memory
    return sum(len(backend.models) for backend in backends) > 1


def run_limit_search(options: BenchOptions, backends) -> dict:
    spec = options.spec
    workload = Workload(options.limit_start, min(spec.new_tokens), options.limit_batch, spec.dtypes[0],
                        spec.attn_implementations[0], spec.cache_implementations[0], spec.threads[0],
                        spec.weights[0], spec.precisions[0])
    budget = options.memory_budget or default_budget()
    limits = {}
    for backend in backends:
        if backend.unsupported_reason(workload) is not None:
            continue
        torch.set_num_threads(workload.threads)
        model = backend.model(workload.dtype, workload.attn_implementation, workload.weights, workload.precision)
        if options.progress:
            print(f"limit search: {backend.name} from {options.limit_start} tokens", file=sys.stderr)
        limits[backend.name] = search_limit(backend, model, workload, options.limit_start, options.limit_max,
                                            budget)
    return limits
