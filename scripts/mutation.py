"""Per-module mutation testing with mutmut: each module against the tests that exercise it (docs/testing.md).

mutmut reads one [tool.mutmut] table from the working directory, so each module runs in its own scratch folder
(.cache/mutation/<name>/) whose pyproject.toml names that module and its tests; tokenmill/ and tests/ are linked in.
Usage: python scripts/mutation.py [--max-children N] [--keep] [--only GLOB] [--all] [NAME ...]
(NAME: a key of MODULES; none: every module but the model-running ones, which --all adds)
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".cache" / "mutation"

# module -> the test files that exercise it (model-running tests only where no unit test reaches the code)
MODULES = {
    "scheduler": ("tokenmill/engine/scheduler.py", ["tests/engine/test_scheduler.py"]),
    # the model-running oracle tests are left out here: the value tests on fixed logits pin the same arithmetic
    "sampler": ("tokenmill/engine/sampler.py", ["tests/engine/test_sampler.py", "-k", "not generate and not neighbouring"]),
    "sampling_params": ("tokenmill/engine/sampling_params.py", ["tests/engine/test_sampling_params.py"]),
    "block_manager": ("tokenmill/engine/block_manager.py", ["tests/engine/test_block_manager.py"]),
    "limits": ("tokenmill/engine/limits.py", ["tests/engine/test_limits.py"]),
    "detokenize": ("tokenmill/engine/detokenize.py", ["tests/engine/test_detokenize.py"]),
    "sequence": ("tokenmill/engine/sequence.py", ["tests/engine/test_sequence.py"]),
    "outputs": ("tokenmill/engine/outputs.py", ["tests/engine/test_outputs.py"]),
    "thread_tuner": ("tokenmill/engine/thread_tuner.py", ["tests/engine/test_thread_tuner.py"]),
    "model_runner": ("tokenmill/engine/model_runner.py", ["tests/engine/test_model_runner.py"]),
    # with the tiny-Llama speculation tests, which reach _verify_drafts (the SmolLM2 ones left out, as below)
    "engine": ("tokenmill/engine/engine.py",
               ["tests/engine/test_engine.py", "tests/engine/test_speculation.py",
                "tests/engine/test_structured_engine.py", "tests/engine/test_adapters.py",
                "tests/engine/test_engine_drafts.py", "tests/engine/test_engine_accounting.py",
                "tests/engine/test_engine_text.py", "tests/engine/test_draft_model.py",
                "-k", "not one_greedy_request and not stops_inside and not eos_inside and not eight_concurrent"]),
    "llm": ("tokenmill/engine/llm.py", ["tests/engine/test_llm.py"]),
    # the fake-core loop tests run first: a mutant they kill costs no model load
    "async_engine": ("tokenmill/engine/async_engine.py",
                     ["tests/engine/test_async_engine_loop.py", "tests/engine/test_async_engine.py"]),
    "adapters": ("tokenmill/engine/adapters.py", ["tests/engine/test_adapters.py"]),
    "replica_router": ("tokenmill/engine/replica_router.py", ["tests/engine/test_replica_router.py"]),
    "spec_params": ("tokenmill/engine/spec_params.py", ["tests/engine/test_spec_params.py"]),
    # the SmolLM2 tests (about 160 s a run) and the eight-request oracle test are left out: the value tests on fixed
    # logits (verification, rollback, budgets, stops inside an accepted run) and the other tiny-Llama tests reach
    # the same branches
    "speculation": ("tokenmill/engine/speculation.py",
                    ["tests/engine/test_speculation.py", "-k", "not one_greedy_request and not stops_inside and not "
                     "eos_inside and not eight_concurrent"]),
    "cache_base": ("tokenmill/cache/base.py", ["tests/cache/test_base.py"]),
    "cache_dynamic": ("tokenmill/cache/dynamic.py", ["tests/cache/test_dynamic.py"]),
    "cache_static": ("tokenmill/cache/static.py", ["tests/cache/test_static.py"]),
    "cache_sliding": ("tokenmill/cache/sliding.py", ["tests/cache/test_sliding.py"]),
    "cache_paged": ("tokenmill/cache/paged.py", ["tests/cache/test_paged.py"]),
    "cache_quantized": ("tokenmill/cache/quantized.py",
                        ["tests/cache/test_quantized.py", "-k", "not logits and not residual_window_it and not generate"]),
    "cache_offloaded": ("tokenmill/cache/offloaded.py", ["tests/cache/test_offloaded.py"]),
    "cache_factory": ("tokenmill/cache/factory.py", ["tests/cache/test_factory.py"]),
    "bench_measure": ("tokenmill/bench/measure.py", ["tests/bench/test_measure.py", "tests/bench/test_backends.py"]),
    "detokenizer": ("tokenmill/tokenizer/detokenizer.py", ["tests/tokenizer/test_detokenizer.py"]),
}

# their tests build and run the tiny Llama for every mutant (about 20 s each here): run only when named or --all
MODEL_MODULES = {"engine", "model_runner", "async_engine", "llm", "speculation"}

BACKSTOP_CONSTANT_S = 60.0

STATUS_LINE = re.compile(r"^\s*(\S+): (\S+)")


def _config(module: str, tests: list[str]) -> str:
    """The [tool.mutmut] table of one module's run."""
    quoted = ", ".join(f'"{t}"' for t in tests)
    return (
        "[tool.mutmut]\n"
        'source_paths = ["tokenmill"]\n'
        f'only_mutate = ["{module}"]\n'
        f"pytest_add_cli_args_test_selection = [{quoted}]\n"
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-x"]\n'
        "process_isolation = \"forkserver\"\n"  # torch is not fork-safe: a forked mutant can spin on a dead thread pool
        'also_copy = ["conftest.py"]\n'  # scripts/mutation_conftest.py: the per-test watchdog (a hang reads "timeout")
        # mutmut's own limit on a mutant's whole run, (sum of its tests' clean durations + constant) x multiplier
        # from the fork, counts the session's fixtures (a model load) too: on a loaded machine its default (+1 s,
        # x15) can end a mutant whose tests pass; kept only as a backstop behind the per-test watchdog
        f"timeout_constant = {BACKSTOP_CONSTANT_S}\n"
        "timeout_multiplier = 15.0\n"
    )


def _prepare(name: str, keep: bool) -> Path:
    folder = WORK / name
    if folder.exists() and not keep:
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for linked in ("tokenmill", "tests"):
        link = folder / linked
        if not link.exists():
            link.symlink_to(ROOT / linked)
    shutil.copyfile(ROOT / "scripts" / "mutation_conftest.py", folder / "conftest.py")
    module, tests = MODULES[name]
    (folder / "pyproject.toml").write_text(_config(module, tests))
    return folder


def _statuses(folder: Path, mutmut: str) -> dict[str, int]:
    listing = subprocess.run([mutmut, "results", "--all", "true"], cwd=folder, capture_output=True, text=True)
    counts: dict[str, int] = {}
    for line in listing.stdout.splitlines():
        match = STATUS_LINE.match(line)
        if match:
            counts[match.group(2)] = counts.get(match.group(2), 0) + 1
    return counts


def _run_one(name: str, mutmut: str, children: int, keep: bool, only: list[str]) -> None:
    folder = _prepare(name, keep)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the mutated copy must be what is imported
    env["OMP_NUM_THREADS"] = "1"  # one thread per mutant process: the children are the parallelism
    started = time.monotonic()
    subprocess.run([mutmut, "run", "--max-children", str(children), *only], cwd=folder, env=env,
                   stdout=subprocess.DEVNULL, check=False)
    elapsed = time.monotonic() - started
    counts = _statuses(folder, mutmut)
    survivors = subprocess.run([mutmut, "results"], cwd=folder, capture_output=True, text=True).stdout
    (folder / "survivors.txt").write_text(survivors)
    summary = ", ".join(f"{status} {count}" for status, count in sorted(counts.items()))
    print(f"{name}: {summary} ({elapsed:.0f} s); survivors in {folder / 'survivors.txt'}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"modules to run (default: all): {', '.join(MODULES)}")
    parser.add_argument("--max-children", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    parser.add_argument("--all", action="store_true", help="with no NAME, include the model-running modules")
    parser.add_argument("--keep", action="store_true", help="reuse the last run's results (mutmut's own cache)")
    parser.add_argument("--only", action="append", default=[], metavar="GLOB",
                        help="run only the mutants matching this name pattern, e.g. 'tokenmill.engine.sampler.x_warpers*'")
    args = parser.parse_args()
    unknown = [name for name in args.names if name not in MODULES]
    if unknown:
        parser.error(f"unknown module(s) {unknown}; known: {', '.join(MODULES)}")
    mutmut = str(Path(sys.executable).parent / "mutmut")
    default = [name for name in MODULES if args.all or name not in MODEL_MODULES]
    for name in args.names or default:
        _run_one(name, mutmut, args.max_children, args.keep, args.only)


if __name__ == "__main__":
    main()
