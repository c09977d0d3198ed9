"""The GEMM calibration's choices, budget and cache, on a fake clock: each fake backend advances it by a cost
model, so what is "faster" is fixed by the test, never by this machine's load."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from tokenmill.execution import calibration
from tokenmill.execution.calibration import (DEFAULT_RULE, MIN_DENSE_ABOVE, ROW_COUNTS, GemmPlan, GemmRule,
                                             choose_rule, gemm_plan, shape_key)
from tokenmill.execution.policy import ExecutionPolicy, ExecutionPolicyError, dequantized_policy, moved_policy

KEY = shape_key(3072, 576, 3, False)
OTHER = shape_key(576, 1536, 3, False)


class FakeMachine:
    """A clock and backends whose cost per call is `costs[backend](rows)` fake seconds."""

    def __init__(self, costs):
        self.now, self.costs, self.calls = 0.0, costs, []

    def clock(self) -> float:
        return self.now

    def runner(self, key: str):
        def run(backend: str, x: torch.Tensor) -> None:
            self.calls.append((key, backend, x.shape[0]))
            self.now += self.costs[backend](x.shape[0])
        return run


def linear_costs(block_per_row: float, onednn: tuple[float, float], torch_: tuple[float, float]):
    """block: rows * per-row; a dense backend: dequantization (fixed) + rows * per-row."""
    return {"block": lambda rows: block_per_row * rows, "onednn": lambda rows: onednn[0] + onednn[1] * rows,
            "torch": lambda rows: torch_[0] + torch_[1] * rows}


@pytest.fixture(autouse=True)
def machine_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENMILL_CACHE", str(tmp_path))
    monkeypatch.delenv("TOKENMILL_GEMM_BACKEND", raising=False)
    monkeypatch.delenv("TOKENMILL_GEMM_CALIBRATION_BUDGET", raising=False)
    monkeypatch.setattr(calibration, "ONEDNN_LINEAR", True)  # both dense backends, whatever this torch has
    return tmp_path


def plan_for(machine: FakeMachine, keys=(KEY,), threads: int = 2, budget: float = 1e9, **kwargs) -> GemmPlan:
    runners = {key: (16, machine.runner(key)) for key in keys}
    return gemm_plan(runners, threads, "build-a", enabled=True, clock=machine.clock, budget=budget, **kwargs)


def test_choose_rule_takes_the_largest_row_count_the_block_kernel_wins_and_the_faster_dense_backend():
    timings = {512: {"block": 5.0, "onednn": 2.0, "torch": 3.0}, 256: {"block": 2.5, "onednn": 1.5, "torch": 1.4},
               128: {"block": 0.9, "onednn": 1.1, "torch": 1.2}}
    assert choose_rule(timings) == GemmRule(128, "onednn")  # 2.0 + 1.5 against 3.0 + 1.4 over the dense rows
    timings[512]["torch"] = 1.0
    assert choose_rule(timings) == GemmRule(128, "torch")


def test_choose_rule_extrapolates_no_win_of_the_block_kernel_and_never_goes_below_the_floor():
    assert choose_rule({512: {"block": 1.0, "onednn": 2.0, "torch": 3.0}}) == GemmRule(512, "onednn")
    always_dense = {rows: {"block": 9.0, "onednn": 1.0, "torch": 2.0} for rows in ROW_COUNTS}
    assert choose_rule(always_dense) == GemmRule(MIN_DENSE_ABOVE, "onednn")


@pytest.mark.parametrize("block_per_row, expected", [(1.0, GemmRule(96, "onednn")), (0.4, GemmRule(256, "onednn")),
                                                      (0.01, GemmRule(512, "onednn")),
                                                      (10.0, GemmRule(MIN_DENSE_ABOVE, "onednn"))])
def test_the_plan_picks_the_crossover_of_the_cost_model(block_per_row, expected):
    # dense: 100 fake seconds of dequantization + 0.1 per row (oneDNN) or 0.3 per row (torch)
    machine = FakeMachine(linear_costs(block_per_row, (100.0, 0.1), (100.0, 0.3)))
    plan = plan_for(machine, budget=1e9)
    assert plan.rule(KEY) == expected and plan.rule(OTHER) == DEFAULT_RULE
    measured = [rows for _, backend, rows in machine.calls if backend == "block"]
    assert measured[0] == ROW_COUNTS[-1] and measured[1] == ROW_COUNTS[0]  # the warm-up, then largest first


def test_differences_within_the_margin_keep_the_default_rule():
    # every row count a near tie (block 4% slower, or 3% faster; torch 4% faster than oneDNN): noise, not a finding
    timings = {rows: {"block": rows * (1.04 if rows % 256 else 0.97), "onednn": float(rows),
                      "torch": rows * 0.96} for rows in ROW_COUNTS}
    assert choose_rule(timings) == GemmRule(96, "onednn") == DEFAULT_RULE


def test_torch_wins_the_dense_side_where_it_is_faster():
    machine = FakeMachine(linear_costs(1.0, (100.0, 0.3), (100.0, 0.1)))
    assert plan_for(machine, budget=1e9).rule(KEY) == GemmRule(96, "torch")


def test_the_budget_stops_measuring_and_a_later_load_resumes_where_it_stopped(machine_cache):
    machine = FakeMachine(linear_costs(1.0, (100.0, 0.1), (100.0, 0.3)))
    # a budget smaller than one row count: the first load still measures one (each load makes progress)
    first = plan_for(machine, keys=(KEY, OTHER), budget=1.0)
    assert first.rule(KEY) == DEFAULT_RULE and first.rule(OTHER) == DEFAULT_RULE
    stored = json.loads(next(machine_cache.glob("kernels/gemm-*.json")).read_text())["shapes"]
    assert list(stored) == [KEY] and list(stored[KEY]["ms"]) == ["512"] and not stored[KEY]["complete"]
    for _ in range(7):  # one row count per load: three more for the first shape, four for the second
        plan = plan_for(machine, keys=(KEY, OTHER), budget=1.0)
    assert plan.rule(KEY) == GemmRule(96, "onednn") and plan.rule(OTHER) == GemmRule(96, "onednn")
    timed_512 = [call for call in machine.calls if call[0] == KEY and call[2] == 512]
    assert len(timed_512) == 3 * calibration.REPEATS  # 512 rows measured once, never again after resuming


def test_the_cache_is_read_back_without_measuring(machine_cache, capsys):
    machine = FakeMachine(linear_costs(1.0, (100.0, 0.1), (100.0, 0.3)))
    assert plan_for(machine).rule(KEY) == GemmRule(96, "onednn")
    assert capsys.readouterr().err.count("timing the GEMM backends") == 1  # past 1 (fake) second: said once
    machine.calls.clear()
    again = plan_for(machine)
    assert again.rule(KEY) == GemmRule(96, "onednn") and machine.calls == []
    assert "0 measured in this load" in again.source


def test_another_fingerprint_measures_anew(machine_cache, monkeypatch):
    machine = FakeMachine(linear_costs(1.0, (100.0, 0.1), (100.0, 0.3)))
    plan_for(machine)
    for change in ({"threads": 3}, {"kernel_build": "build-b"}):
        machine.calls.clear()
        runners = {KEY: (16, machine.runner(KEY))}
        arguments = {"threads": 2, "kernel_build": "build-a", **change}
        gemm_plan(runners, arguments["threads"], arguments["kernel_build"], enabled=True, clock=machine.clock,
                  budget=1e9)
        assert machine.calls, change
    # a file whose recorded fingerprint is not this machine's (copied from another host) is not believed
    path = next(iter(sorted(machine_cache.glob("kernels/gemm-*.json"))))
    data = json.loads(path.read_text())
    data["fingerprint"]["cpu"] = "another CPU"
    for candidate in machine_cache.glob("kernels/gemm-*.json"):
        candidate.write_text(json.dumps(data))
    machine.calls.clear()
    plan_for(machine)
    assert machine.calls


@pytest.mark.parametrize("content", ["{not json", "[]", "NO-SHAPES", "BROKEN-ENTRY"])
def test_a_corrupt_cache_is_ignored_with_a_warning_and_rewritten(machine_cache, content):
    machine = FakeMachine(linear_costs(1.0, (100.0, 0.1), (100.0, 0.3)))
    plan_for(machine)
    path = next(machine_cache.glob("kernels/gemm-*.json"))
    if content in ("NO-SHAPES", "BROKEN-ENTRY"):  # this machine's fingerprint, its shapes unreadable
        data = json.loads(path.read_text())
        if content == "NO-SHAPES":
            data["shapes"] = 5
        else:
            data["shapes"][KEY]["backend"] = "mkl-by-hand"
        content = json.dumps(data)
    path.write_text(content)
    machine.calls.clear()
    with pytest.warns(RuntimeWarning, match="corrupt GEMM calibration cache"):
        assert plan_for(machine).rule(KEY) == GemmRule(96, "onednn")
    assert machine.calls
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rewritten: read back silently
        machine.calls.clear()
        plan_for(machine)
    assert machine.calls == []


def test_calibration_off_keeps_the_constants_and_measures_nothing(monkeypatch):
    machine = FakeMachine(linear_costs(10.0, (1.0, 0.1), (1.0, 0.3)))
    runners = {KEY: (16, machine.runner(KEY))}
    plan = gemm_plan(runners, 2, "build-a", enabled=False, clock=machine.clock)
    assert plan.rule(KEY) == DEFAULT_RULE == GemmRule(96, calibration.default_backend()) and not machine.calls
    monkeypatch.setenv("TOKENMILL_GEMM_CALIBRATION", "0")
    assert gemm_plan(runners, 2, "build-a", clock=machine.clock).rule(KEY) == DEFAULT_RULE and not machine.calls
    monkeypatch.setenv("TOKENMILL_GEMM_CALIBRATION", "maybe")
    with pytest.raises(ValueError, match="TOKENMILL_GEMM_CALIBRATION"):
        gemm_plan(runners, 2, "build-a", clock=machine.clock)


@pytest.mark.parametrize("name, rule", [("block", GemmRule(None, "onednn")), ("torch", GemmRule(0, "torch")),
                                        ("oneDNN", GemmRule(0, "onednn"))])
def test_a_forced_backend_applies_to_every_shape_and_row_count(monkeypatch, name, rule):
    monkeypatch.setenv("TOKENMILL_GEMM_BACKEND", name)
    machine = FakeMachine(linear_costs(1.0, (100.0, 0.1), (100.0, 0.3)))
    plan = plan_for(machine)
    assert plan.rule(KEY) == plan.rule(OTHER) == rule and not machine.calls and "forced" in plan.source


def test_bad_switches_are_refused(monkeypatch):
    monkeypatch.setenv("TOKENMILL_GEMM_BACKEND", "mkl")
    with pytest.raises(ValueError, match="TOKENMILL_GEMM_BACKEND='mkl'"):
        plan_for(FakeMachine({}))
    monkeypatch.setattr(calibration, "ONEDNN_LINEAR", False)
    monkeypatch.setenv("TOKENMILL_GEMM_BACKEND", "onednn")
    with pytest.raises(ValueError, match="no oneDNN"):
        plan_for(FakeMachine({}))
    monkeypatch.delenv("TOKENMILL_GEMM_BACKEND")
    monkeypatch.setenv("TOKENMILL_GEMM_CALIBRATION_BUDGET", "-1")
    with pytest.raises(ValueError, match="BUDGET"):
        gemm_plan({}, 2, None, enabled=True)
    with pytest.raises(ValueError, match="dense GEMM backend"):
        GemmRule(96, "block")


def test_the_policy_carries_a_plan_for_block_weights_only():
    plan = GemmPlan("test", ((KEY, GemmRule(32, "torch")),))
    policy = ExecutionPolicy(weight_format="gguf-blocks", kernels="native").with_gemm(plan)
    assert policy.gemm.rule(KEY) == GemmRule(32, "torch") and policy.as_dict()["gemm"][KEY].endswith("F.linear (MKL)")
    assert hash(policy) == hash(ExecutionPolicy(weight_format="gguf-blocks", kernels="native").with_gemm(plan))
    with pytest.raises(ExecutionPolicyError, match="GGUF block weights"):
        ExecutionPolicy().with_gemm(plan)
    assert "gemm" not in ExecutionPolicy().as_dict()
    # weights made dense (dequantized, or moved off the CPU kernels) drop the plan with the blocks
    assert dequantized_policy(policy).gemm is None and moved_policy(policy, "cpu", torch.bfloat16).gemm is None
    assert moved_policy(policy, "cpu", None).gemm == plan
