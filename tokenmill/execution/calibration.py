"""Which GEMM a block-quantized linear runs, per weight shape and row count, measured once per machine.

A linear over GGUF blocks has three ways to multiply x [rows, in] by its weight: the block kernel (reads the
blocks, batch-invariant; the fastest for few rows), or the weight dequantized into a float32 buffer and one
dense GEMM through oneDNN (`torch.ops.mkldnn._linear_pointwise`) or through torch's own F.linear (MKL's sgemm
where torch has MKL). Which wins, and from how many rows, depends on the CPU: on the AMD host of
docs/performance.md oneDNN ran ~2.4x MKL, on an Intel host they were even. So instead of one constant, each
shape (out, in, block type, float or int8 kernel) gets a `GemmRule`: dense above `dense_above` rows, through
`backend`. The rules are measured at model load (assembly/pretrained.py) within a time budget, largest row
count first, and cached per machine fingerprint (CPU, flags, torch, threads, kernel build) beside the compiled
kernels, so a later load reads them in microseconds. The execution policy carries the resulting `GemmPlan`; the
model hands each quantized layer its rule, as it does the precision.

Switches: TOKENMILL_GEMM_CALIBRATION=0 keeps the constants (dense above DEFAULT_DENSE_ABOVE rows, oneDNN where
torch has it); TOKENMILL_GEMM_BACKEND=block|onednn|torch forces one path at every row count (tests);
TOKENMILL_GEMM_CALIBRATION_BUDGET (seconds, default 0.5) bounds one load's measuring (a load measures at least
one row count of one shape, then stops where the next would not fit; an unfinished shape resumes at the next).
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..kernels.build import cache_dir
from ..kernels.cpu import cpu_flags, cpu_model
from ..kernels.gguf_types import TYPES
from ..kernels.system import ONEDNN_LINEAR

CALIBRATION_VARIABLE = "TOKENMILL_GEMM_CALIBRATION"
BACKEND_VARIABLE = "TOKENMILL_GEMM_BACKEND"
BUDGET_VARIABLE = "TOKENMILL_GEMM_CALIBRATION_BUDGET"
BACKENDS = ("block", "onednn", "torch")
BACKEND_NAMES = {"block": "block kernel", "onednn": "oneDNN", "torch": "torch F.linear (MKL)"}
DEFAULT_DENSE_ABOVE = 96  # the constant the rules replace: measured on the AMD host of docs/performance.md
DEFAULT_BUDGET_S = 0.5
# row counts timed, largest first: the search stops at the first where the block kernel wins (dense only
# gains on it as rows grow). Never below MIN_DENSE_ABOVE: up to 8 rows (decode steps) stay on the block kernel,
# whose rows do not depend on their batch-mates, and one dequantization per call cannot pay for itself there
ROW_COUNTS = (512, 256, 128, 96, 32)
MIN_DENSE_ABOVE = 8
REPEATS = 3  # median of three runs after one warm-up, the backends taking turns
# a measured difference under 10% is within a shared host's noise: such a tie goes the default rule's way, so
# noise leaves today's behaviour rather than flipping a path
MARGIN = 1.10
CACHE_FORMAT = 3  # 2: ties within MARGIN go the default way, no block-kernel win extrapolated; 3: interleaved
PROGRESS_AFTER_S = 1.0


@dataclass(frozen=True)
class GemmRule:
    """Dense GEMM (dequantize, then `backend`) above `dense_above` rows, the block kernel up to it;
    dense_above None: the block kernel at every row count."""

    dense_above: int | None
    backend: str

    def __post_init__(self):
        if self.backend not in BACKENDS[1:]:
            raise ValueError(f"a dense GEMM backend is one of {BACKENDS[1:]}, got {self.backend!r}")
        if self.dense_above is not None and self.dense_above < 0:
            raise ValueError(f"dense_above must be >= 0 or None, got {self.dense_above}")

    def describe(self) -> str:
        if self.dense_above is None:
            return "block kernel at every row count"
        return f"block kernel up to {self.dense_above} rows, then {BACKEND_NAMES[self.backend]}"


def default_backend() -> str:
    return "onednn" if ONEDNN_LINEAR else "torch"


DEFAULT_RULE = GemmRule(DEFAULT_DENSE_ABOVE, default_backend())


def shape_key(out_features: int, in_features: int, ggml_type: int, integer: bool) -> str:
    """What a rule is kept under: the weight's shape, its block type and the kernel (float32 or int8) it runs."""
    block_type = TYPES.get(ggml_type)
    name = block_type.name.lower() if block_type is not None else f"type{ggml_type}"
    return f"{out_features}x{in_features}:{name}:{'int8' if integer else 'f32'}"


@dataclass(frozen=True)
class GemmPlan:
    """The rules of one model's shapes; a shape without one gets `fallback`. `source`: calibrated (how many
    measured now / read from the cache), default, forced or off, for `info` and the bench."""

    source: str
    rules: tuple[tuple[str, GemmRule], ...] = ()
    fallback: GemmRule = DEFAULT_RULE
    _by_key: dict = field(default=None, init=False, compare=False, repr=False, hash=False)

    def __post_init__(self):
        object.__setattr__(self, "_by_key", dict(self.rules))

    def rule(self, key: str) -> GemmRule:
        return self._by_key.get(key, self.fallback)

    def as_dict(self) -> dict:
        return {"source": self.source, "fallback": self.fallback.describe(),
                **{key: rule.describe() for key, rule in self.rules}}


# ---- measuring and choosing ----

Runner = Callable[[str, torch.Tensor], torch.Tensor]  # (backend, x [rows, in]) -> x @ W.T


def dense_backends() -> tuple[str, ...]:
    return ("onednn", "torch") if ONEDNN_LINEAR else ("torch",)


def choose_rule(timings: dict[int, dict[str, float]]) -> GemmRule:
    """The rule from seconds per (rows, backend): dense above the largest measured row count where the block
    kernel won (`block_won`; MIN_DENSE_ABOVE if it never did); the dense backend fastest in total over the row
    counts it would run (all of them if none), the default one unless another is faster by MARGIN."""
    measured = sorted(timings, reverse=True)
    if not measured:
        raise ValueError("no timings to choose a GEMM rule from")
    block_wins = [rows for rows in measured if block_won(timings[rows], rows)]
    # a block kernel winning at the most rows measured is not extrapolated: past them, dense as by default
    threshold = max(block_wins) if block_wins else MIN_DENSE_ABOVE
    dense_rows = [rows for rows in measured if rows > threshold] or measured
    totals = {name: sum(timings[rows][name] for rows in dense_rows) for name in timings[measured[0]] if name != "block"}
    fastest = min(totals, key=totals.get)
    preferred = DEFAULT_RULE.backend if DEFAULT_RULE.backend in totals else fastest
    backend = fastest if totals[fastest] * MARGIN <= totals[preferred] else preferred
    return GemmRule(max(threshold, MIN_DENSE_ABOVE), backend)


class Stopwatch:
    """Medians of timed runs against a deadline; `clock` is injectable (tests run a fake one)."""

    def __init__(self, budget: float, clock: Callable[[], float] = time.perf_counter, progress=None):
        self.clock, self.started = clock, clock()
        self.deadline = self.started + budget
        self.progress, self.announced = progress, False

    def expired(self) -> bool:
        return self.clock() >= self.deadline

    def left(self) -> float:
        return self.deadline - self.clock()

    def medians(self, run: Runner, backends: tuple[str, ...], x: torch.Tensor,
                repeats: int = REPEATS) -> dict[str, float]:
        """{backend: median seconds of `repeats` runs}, the backends taking turns within each repeat, so that a
        neighbour's burst slows all of them rather than one."""
        times = {backend: [] for backend in backends}
        for _ in range(repeats):
            for backend in backends:
                start = self.clock()
                run(backend, x)
                times[backend].append(self.clock() - start)
        if not self.announced and self.progress is not None and self.clock() - self.started > PROGRESS_AFTER_S:
            self.announced = True
            self.progress()
        return {backend: statistics.median(values) for backend, values in times.items()}


def block_won(row: dict[str, float], rows: int) -> bool:
    """Whether the block kernel beat every dense backend at `rows` by MARGIN; a closer call is the default's."""
    dense = min(seconds for name, seconds in row.items() if name != "block")
    if row["block"] * MARGIN <= dense or dense * MARGIN <= row["block"]:
        return row["block"] < dense
    return rows <= DEFAULT_DENSE_ABOVE


def measure_shape(run: Runner, in_features: int, watch: Stopwatch, timings: dict[int, dict[str, float]],
                  first: bool) -> bool:
    """Add seconds per (rows, backend) to `timings` (what earlier loads measured is kept), largest row count
    first, until the block kernel wins at one; True once complete. A row count is started only if its
    estimated cost (the warm-up's, scaled by rows) fits the budget left, unless nothing was measured yet in this
    load (`first`): each load makes progress, and an interrupted shape resumes at the next load."""
    x = torch.randn(ROW_COUNTS[0], in_features, generator=torch.Generator().manual_seed(0))
    backends = ("block",) + dense_backends()
    if any(block_won(row, rows) for rows, row in timings.items()):
        return True
    warm_rows = ROW_COUNTS[-1]
    start = watch.clock()
    for backend in backends:  # warm-up: first-call costs (buffers, oneDNN's primitive cache, OpenMP threads)
        run(backend, x[:warm_rows])
    warm_s = watch.clock() - start
    for rows in ROW_COUNTS:
        if rows in timings:
            continue
        if not first and (watch.expired() or warm_s * rows / warm_rows * REPEATS > watch.left()):
            return False
        timings[rows] = watch.medians(run, backends, x[:rows])
        first = False
        if block_won(timings[rows], rows):
            return True
    return True


# ---- the per-machine cache ----

def fingerprint(threads: int, kernel_build: str | None) -> dict:
    """What the timings depend on: another CPU, torch, thread count or kernel build measures anew."""
    return {"format": CACHE_FORMAT, "cpu": cpu_model(),
            "cpu_flags": hashlib.sha256(" ".join(sorted(cpu_flags())).encode()).hexdigest()[:16],
            "torch": torch.__version__, "threads": threads, "kernel_build": kernel_build, "onednn": ONEDNN_LINEAR}


def cache_path(print_: dict) -> Path:
    digest = hashlib.sha256(json.dumps(print_, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / f"gemm-{digest}.json"


def read_cache(path: Path, print_: dict) -> dict[str, dict]:
    """{shape key: entry} for this fingerprint; {} where there is no file, another fingerprint, or (with one
    warning) a file that cannot be read as one."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as error:
        warnings.warn(f"tokenmill: ignoring the GEMM calibration cache {path} ({error})", RuntimeWarning)
        return {}
    try:
        data = json.loads(text)
        if data["fingerprint"] != print_:
            return {}
        shapes = data["shapes"]
        for entry in shapes.values():  # every entry must make a rule; the whole file is ignored otherwise
            GemmRule(entry["dense_above"], entry["backend"])
            entry["timings"] = {int(rows): {name: float(entry["ms"][rows][name]) / 1e3 for name in BACKENDS
                                            if name in entry["ms"][rows]} for rows in entry["ms"]}
            if not isinstance(entry["complete"], bool) or any("block" not in row or len(row) < 2
                                                              for row in entry["timings"].values()):
                raise ValueError("an entry without its timings")
        return shapes
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        warnings.warn(f"tokenmill: ignoring the corrupt GEMM calibration cache {path} "
                      f"({type(error).__name__}: {error}); measuring again", RuntimeWarning)
        return {}


def write_cache(path: Path, print_: dict, shapes: dict[str, dict]) -> None:
    """Written beside and renamed, as the kernels are: a concurrent reader never sees half a file."""
    stored = {key: {"dense_above": entry["dense_above"], "backend": entry["backend"], "complete": entry["complete"],
                    "ms": {str(rows): {name: round(seconds * 1e3, 4) for name, seconds in row.items()}
                           for rows, row in entry["timings"].items()}}
              for key, entry in shapes.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".json", delete=False) as handle:
        json.dump({"fingerprint": print_, "shapes": stored}, handle, indent=1, sort_keys=True)
    os.replace(handle.name, path)


# ---- the plan for one model ----

def forced_rule() -> GemmRule | None | str:
    """TOKENMILL_GEMM_BACKEND's rule ("block": the kernel at every row count; a dense backend: dense at every
    row count); None where unset."""
    forced = os.environ.get(BACKEND_VARIABLE, "").strip().lower()
    if not forced:
        return None
    if forced not in BACKENDS:
        raise ValueError(f"{BACKEND_VARIABLE}={forced!r}: expected one of {', '.join(BACKENDS)}")
    if forced == "onednn" and not ONEDNN_LINEAR:
        raise ValueError(f"{BACKEND_VARIABLE}=onednn: this torch build has no oneDNN linear")
    return GemmRule(None, default_backend()) if forced == "block" else GemmRule(0, forced)


def calibration_enabled(requested: bool | None) -> bool:
    if requested is not None:
        return requested
    value = os.environ.get(CALIBRATION_VARIABLE, "1").strip().lower()
    if value not in ("0", "1", "off", "on", "false", "true", "no", "yes"):
        raise ValueError(f"{CALIBRATION_VARIABLE}={value!r}: expected 1 (measure, the default) or 0 (constants)")
    return value in ("1", "on", "true", "yes")


def budget_s() -> float:
    value = os.environ.get(BUDGET_VARIABLE, str(DEFAULT_BUDGET_S))
    try:
        budget = float(value)
    except ValueError:
        budget = -1.0
    if not 0 <= budget <= 600:
        raise ValueError(f"{BUDGET_VARIABLE}={value!r}: expected seconds between 0 and 600")
    return budget


def _announce() -> None:
    print("tokenmill: timing the GEMM backends on this model's shapes (once per machine)", file=sys.stderr,
          flush=True)


def gemm_plan(runners: dict[str, tuple[int, Runner]], threads: int, kernel_build: str | None, *,
              enabled: bool | None = None, clock: Callable[[], float] = time.perf_counter,
              budget: float | None = None) -> GemmPlan:
    """The plan for a model whose block matmuls are `runners` ({shape key: (in_features, run)}, the most used
    first). Cached rules are read; missing ones are measured within the budget and written back. A shape not
    finished keeps the default rule until a later load finishes it."""
    forced = forced_rule()
    if forced is not None:
        return GemmPlan(f"forced by {BACKEND_VARIABLE}", fallback=forced)
    if not calibration_enabled(enabled):
        return GemmPlan(f"off ({CALIBRATION_VARIABLE}=0 or gemm_calibration=False): the default rule")
    print_ = fingerprint(threads, kernel_build)
    path = cache_path(print_)
    entries = read_cache(path, print_)
    watch = Stopwatch(budget_s() if budget is None else budget, clock, _announce)
    measured = 0
    for key, (in_features, run) in runners.items():
        entry = entries.get(key)
        if entry is not None and entry["complete"]:
            continue
        if measured and watch.expired():  # at least one row count per load, whatever the budget
            break
        timings = {} if entry is None else entry["timings"]
        complete = measure_shape(run, in_features, watch, timings, first=measured == 0)
        rule = choose_rule(timings) if complete else DEFAULT_RULE
        entries[key] = {"dense_above": rule.dense_above, "backend": rule.backend, "complete": complete,
                        "timings": timings}
        measured += 1
    if measured:
        try:
            write_cache(path, print_, entries)
        except OSError as error:
            warnings.warn(f"tokenmill: could not write the GEMM calibration cache {path} ({error})", RuntimeWarning)
    rules = tuple((key, GemmRule(entries[key]["dense_above"], entries[key]["backend"]))
                  for key in runners if key in entries and entries[key]["complete"])
    unfinished = sum(key not in entries or not entries[key]["complete"] for key in runners)
    return GemmPlan(f"calibrated: {len(rules)} shape(s) ({measured} measured in this load), {unfinished} not yet "
                    f"(default rule); cache {path}", rules)


def describe_machine(threads: int, kernel_build: str | None) -> dict:
    """The switches and this machine's cached rules at `threads` (for `tokenmill info --system`)."""
    try:
        forced = forced_rule()
        state = (f"forced: {forced.describe()}" if forced is not None else
                 "on" if calibration_enabled(None) else f"off ({CALIBRATION_VARIABLE}=0)")
    except ValueError as error:
        state = f"invalid setting: {error}"
    print_ = fingerprint(threads, kernel_build)
    path = cache_path(print_)
    shapes = {key: GemmRule(entry["dense_above"], entry["backend"]).describe() if entry["complete"]
              else "not finished (default rule)" for key, entry in read_cache(path, print_).items()}
    return {"state": state, "default": DEFAULT_RULE.describe(), "cache": str(path), "shapes": shapes}
