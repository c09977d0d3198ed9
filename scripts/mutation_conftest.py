"""The root conftest.py of a mutation run (scripts/mutation.py copies it into each module's scratch folder).

While a mutant is under test (mutmut's MUTANT_UNDER_TEST names one) it
- bounds each test's call: a test whose call has used more CPU time than TIMEOUT_FACTOR x its clean duration +
  TIMEOUT_SLACK_S (the clean duration mutmut measured in its stats run, mutants/mutmut-stats.json) ends the
  process with mutmut's own timeout code, so a mutant that spins a test for ever reads as "timeout", never as a
  pass. CPU time, not wall time: at `nice -n 15` on a shared machine a test can wait many times its clean
  duration for a core, and a wall-clock bound then ends mutants whose tests pass (false kills). The watchdog is a
  thread, so it fires inside a Python loop and inside a busy C call alike; a test that waits for ever without
  spinning is left to mutmut's own wall-clock limit;
- runs the selected tests fastest first, so that a killed mutant stops (-x) at the cheapest failing test.
The clean run and the stats run are left alone. It also imports transformers' Llama classes once, in mutmut's
fork server, so each mutant's forked test process does not import them again (the engine tests' tiny Llama).
"""

import json
import os
import threading
import time
from pathlib import Path

import pytest

TIMEOUT_EXIT_CODE = 36  # mutmut 3.8's exit code for "timeout" (mutmut.stats.status_by_exit_code)
TIMEOUT_FACTOR = 5
TIMEOUT_SLACK_S = 10.0
POLL_S = 1.0

try:  # preload in the fork server: the engine tests build a tiny Llama with these classes for every mutant
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM  # noqa: F401 - the import is the point
except ImportError:  # modules whose tests do not need transformers
    transformers = None

_durations: dict[str, float] | None = None


def _clean_durations() -> dict[str, float]:
    global _durations
    if _durations is None:
        try:
            _durations = json.loads(Path("mutmut-stats.json").read_text())["duration_by_test"]
        except (OSError, KeyError, ValueError):
            _durations = {}
    return _durations


def _mutant_under_test() -> bool:
    return os.environ.get("MUTANT_UNDER_TEST", "") not in ("", "stats", "fail")


def _call_limit_s(nodeid: str) -> float:
    return TIMEOUT_FACTOR * _clean_durations().get(nodeid, 0.0) + TIMEOUT_SLACK_S


def pytest_collection_modifyitems(items):
    if _mutant_under_test():
        durations = _clean_durations()
        items.sort(key=lambda item: durations.get(item.nodeid, 0.0))


def _watch(limit_s: float, done: threading.Event) -> None:
    """End the process as a timeout once this test's call has used `limit_s` of CPU time."""
    start = time.process_time()
    while not done.wait(POLL_S):
        if time.process_time() - start > limit_s:
            os._exit(TIMEOUT_EXIT_CODE)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    if not _mutant_under_test():
        yield
        return
    done = threading.Event()
    threading.Thread(target=_watch, args=(_call_limit_s(item.nodeid), done), daemon=True).start()
    try:
        yield
    finally:
        done.set()
