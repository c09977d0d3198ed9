"""The root conftest.py of a mutation run (scripts/mutation.py copies it into each module's scratch folder).

While a mutant is under test (mutmut's MUTANT_UNDER_TEST names one) it
- bounds each test's call: a test still running after TIMEOUT_FACTOR x its clean duration + TIMEOUT_SLACK_S
  (the clean duration mutmut measured in its stats run, mutants/mutmut-stats.json) ends the process with
  mutmut's own timeout code, so a mutant that hangs a test reads as "timeout", never as a pass; the watchdog is
  a thread, so it fires inside a Python loop and inside a blocked C call alike;
- runs the selected tests fastest first, so that a killed mutant stops (-x) at the cheapest failing test.
The clean run and the stats run are left alone. It also imports transformers' Llama classes once, in mutmut's
fork server, so each mutant's forked test process does not import them again (the engine tests' tiny Llama).
"""

import json
import os
import threading
from pathlib import Path

import pytest

TIMEOUT_EXIT_CODE = 36  # mutmut 3.8's exit code for "timeout" (mutmut.stats.status_by_exit_code)
TIMEOUT_FACTOR = 10
TIMEOUT_SLACK_S = 30.0

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


def test_limit_s(nodeid: str) -> float:
    return TIMEOUT_FACTOR * _clean_durations().get(nodeid, 0.0) + TIMEOUT_SLACK_S


def pytest_collection_modifyitems(items):
    if _mutant_under_test():
        durations = _clean_durations()
        items.sort(key=lambda item: durations.get(item.nodeid, 0.0))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    if not _mutant_under_test():
        yield
        return
    watchdog = threading.Timer(test_limit_s(item.nodeid), os._exit, (TIMEOUT_EXIT_CODE,))
    watchdog.daemon = True
    watchdog.start()
    try:
        yield
    finally:
        watchdog.cancel()
