"""AsyncEngine's engine thread on a fake engine core: request ids, aborts, calls, failures, shutdown and health.

The fake has the surface AsyncEngine drives (add/abort/step), so each test runs in well under a second and pins
the loop's own logic without a model (the model-backed tests are in test_async_engine.py).
"""

import asyncio
import logging
import threading
import time
from types import SimpleNamespace

import pytest

from tokenmill.engine import SamplingParams
from tokenmill.engine import async_engine
from tokenmill.engine.async_engine import (AsyncEngine, EngineDeadError, EngineHealth, EngineStepError,
                                           RequestFailedError)
from tokenmill.engine.outputs import RequestOutput

PARAMS = SamplingParams(max_tokens=2, temperature=0)
SILENT = [7]  # a prompt whose request never produces output: its caller waits until it leaves or is failed
BROKEN = [8]  # a prompt whose request cannot be started
REFUSED = [9]  # a prompt the engine refuses (ValueError)


class FakeEngine:
    """Each request finishes after `steps` steps with one output a step (none for SILENT prompts)."""

    def __init__(self, steps: int = 2):
        self.steps = steps
        self.added: list[str] = []
        self.aborted: list[str] = []
        self.left: dict[str, int] = {}
        self.silent: set[str] = set()
        self.step_error: BaseException | None = None  # raised by the next step, once
        self.gate = threading.Event()  # a step waits for it: clear it to hold the engine inside one step
        self.gate.set()
        self.in_step = threading.Event()
        self.last_step_tokens = 0
        self.runner = SimpleNamespace(failure=None, model=SimpleNamespace(execution_policy=SimpleNamespace(threads=1)))

    def add_request(self, request_id, prompt, params):
        if prompt == BROKEN:
            raise RuntimeError("broken setup")
        if prompt == REFUSED:
            raise ValueError("prompt refused")
        self.added.append(request_id)
        self.left[request_id] = self.steps
        if prompt == SILENT:
            self.silent.add(request_id)

    def abort_request(self, request_id):
        self.aborted.append(request_id)
        self.left.pop(request_id, None)

    def abort_all(self):
        aborted, self.left = list(self.left), {}
        return aborted

    def has_unfinished_requests(self):
        return bool(self.left)

    def step(self):
        self.in_step.set()
        self.gate.wait(10)
        time.sleep(0.001)  # a silent request keeps the loop stepping: do not spin a core
        if self.step_error is not None:
            error, self.step_error = self.step_error, None
            raise error
        outputs = []
        for request_id in [r for r in self.left if r not in self.silent]:
            self.left[request_id] -= 1
            finished = self.left[request_id] == 0
            if finished:
                del self.left[request_id]
            outputs.append(RequestOutput(request_id, [1], [], finished))
        self.last_step_tokens = len(outputs)
        return outputs


@pytest.fixture
def fake():
    return FakeEngine()


@pytest.fixture
def running(fake):
    engine = AsyncEngine(fake)
    yield engine
    fake.gate.set()
    engine.shutdown()


def _until(predicate, timeout: float = 5.0) -> bool:
    """Whether `predicate` became true within `timeout` (a bound on waiting for the engine thread, not a timing)."""
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.005)
    return predicate()


async def _async_until(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    return predicate()


def _run(coroutine, timeout: float = 5.0):
    """Run one test coroutine; one that never ends fails the test instead of hanging it."""
    return asyncio.run(asyncio.wait_for(coroutine, timeout))


async def _consume(outputs):
    return [output async for output in outputs]


def _messages(caplog, level: int) -> list[str]:
    return [record.getMessage() for record in caplog.records
            if record.name == async_engine.__name__ and record.levelno == level]


def test_the_engine_thread_is_a_named_daemon_with_the_documented_stall_limit(running):
    assert running._thread.name == "tokenmill-engine"  # how the thread shows in a stack dump
    assert running._thread.daemon  # a stuck step must not keep the process from exiting
    assert running.stall_seconds == 120.0


def test_generate_uses_the_given_request_id_or_numbers_its_own(running, fake):
    async def run():
        mine = await _consume(running.generate([1], PARAMS, request_id="mine"))
        numbered = [await _consume(running.generate([1], PARAMS)) for _ in range(2)]
        return mine, numbered

    mine, numbered = _run(run())
    assert [output.request_id for output in mine] == ["mine", "mine"] and mine[-1].finished
    assert [outputs[-1].request_id for outputs in numbered] == ["req-0", "req-1"]
    assert fake.added == ["mine", "req-0", "req-1"]
    # finished requests are not aborted (each command was taken before the next request was added)
    assert fake.aborted == [] and running.num_in_flight == 0


def test_a_caller_that_leaves_before_any_output_aborts_its_request(running, fake):
    async def run():
        waiting = asyncio.create_task(_consume(running.generate(SILENT, PARAMS, request_id="gone")))
        assert await _async_until(lambda: "gone" in fake.added)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting

    _run(run())
    assert _until(lambda: fake.aborted == ["gone"])
    assert running.num_in_flight == 0 and not fake.has_unfinished_requests()


def test_abort_reaches_the_engine(running, fake):
    running.abort("some-request")
    assert _until(lambda: fake.aborted == ["some-request"])
    assert running.health() == EngineHealth(True)


def test_call_runs_on_the_engine_thread_and_hands_back_its_result_or_error(running, fake):
    async def run():
        result = await running.call(lambda engine: (engine, threading.current_thread().name, 42))
        with pytest.raises(ZeroDivisionError, match="division by zero"):
            await running.call(lambda engine: 1 / 0)
        return result

    assert _run(run()) == (fake, "tokenmill-engine", 42)
    assert fake.aborted == [] and running.health().ok


def test_a_request_that_cannot_start_is_aborted_logged_and_failed(running, fake, caplog):
    async def run():
        with pytest.raises(RequestFailedError, match=r"^the request could not be started: RuntimeError\('broken"):
            await _consume(running.generate(BROKEN, PARAMS, request_id="broken"))
        return await _consume(running.generate([1], PARAMS))

    with caplog.at_level(logging.ERROR, logger=async_engine.__name__):
        assert _run(run())[-1].finished
    assert fake.aborted == ["broken", "broken"]  # by the engine thread, then by its caller leaving unfinished
    assert _messages(caplog, logging.ERROR) == ["request broken could not be started"]


def test_a_failing_step_fails_the_requests_in_flight_and_the_loop_goes_on(running, fake, caplog):
    fake.step_error = RuntimeError("boom")

    async def run():
        with pytest.raises(EngineStepError) as failed:
            await _consume(running.generate([1], PARAMS))
        return str(failed.value), await _consume(running.generate([1], PARAMS))

    with caplog.at_level(logging.ERROR, logger=async_engine.__name__):
        message, outputs = _run(run())
    assert message == "generation failed: boom" and outputs[-1].finished
    assert _messages(caplog, logging.ERROR) == ["engine step failed"]
    assert running.health() == EngineHealth(True)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the death it simulates
def test_a_dead_engine_thread_says_so_to_its_callers_the_log_and_health(running, fake, caplog):
    fake.step_error = SystemExit("gone")  # not an Exception: escapes the loop's guard

    async def run():
        with pytest.raises(EngineDeadError) as dead:
            await _consume(running.generate([1], PARAMS))
        return str(dead.value)

    with caplog.at_level(logging.CRITICAL, logger=async_engine.__name__):
        assert _run(run()) == "the engine stopped"
    running._thread.join(5)
    assert running.health() == EngineHealth(False, "the engine thread is not running")
    assert _messages(caplog, logging.CRITICAL) == ["the engine thread stopped unexpectedly; the requests in flight fail"]

    async def refused():
        with pytest.raises(EngineDeadError) as dead:
            await _consume(running.generate([1], PARAMS))
        return str(dead.value)

    assert _run(refused()) == "the engine is not running; the server cannot generate"


def test_a_shutdown_is_not_logged_as_a_death(fake, caplog):
    with caplog.at_level(logging.CRITICAL, logger=async_engine.__name__):
        engine = AsyncEngine(fake)
        engine.shutdown()
    assert not engine._thread.is_alive() and _messages(caplog, logging.CRITICAL) == []


class _JoinRecorder:
    """The engine thread, with the timeouts it was joined with recorded."""

    def __init__(self, thread: threading.Thread):
        self.thread, self.timeouts = thread, []

    def join(self, timeout=None):
        self.timeouts.append(timeout)
        self.thread.join(timeout)

    def is_alive(self) -> bool:
        return self.thread.is_alive()


def test_shutdown_waits_for_the_engine_thread_at_most_its_timeout(fake):
    for timeout, expected in ((None, 5.0), (0.25, 0.25)):
        engine = AsyncEngine(fake)
        engine._thread = recorder = _JoinRecorder(engine._thread)
        engine.shutdown() if timeout is None else engine.shutdown(timeout)
        assert recorder.timeouts == [expected] and not recorder.is_alive()


def test_a_shutdown_that_cannot_wait_for_a_stuck_step_leaves_its_caller_to_the_step(running, fake):
    fake.steps = 1
    fake.gate.clear()

    async def run():
        waiting = asyncio.create_task(_consume(running.generate([1], PARAMS)))
        assert await _async_until(fake.in_step.is_set)
        running.shutdown(0.05)  # the thread is still inside the step: its caller is not failed
        fake.gate.set()
        return await waiting

    outputs = _run(run())
    assert outputs[-1].finished and len(outputs) == 1  # the step's output, then the loop ends on `_stopping`


def test_fail_waiting_ends_each_callers_wait_with_the_reason(running, fake):
    async def run():
        waiting = asyncio.create_task(_consume(running.generate(SILENT, PARAMS)))
        assert await _async_until(lambda: fake.added)
        running.fail_waiting("the server is stopping")
        with pytest.raises(EngineDeadError) as dead:
            await waiting
        return str(dead.value)

    assert _run(run()) == "the server is stopping"


def test_the_step_observer_sees_every_step_without_a_tuner_and_its_failure_is_logged(fake, caplog):
    seen = []
    engine = AsyncEngine(fake, on_step=lambda core, seconds: seen.append(core))
    try:
        _run(_consume(engine.generate([1], PARAMS)))
        assert _until(lambda: len(seen) == 2)  # the observer runs after the step's outputs went out
        assert seen == [fake, fake]  # two steps, one token each, and no tuner to report to
        engine.on_step = lambda core, seconds: 1 / 0
        with caplog.at_level(logging.ERROR, logger=async_engine.__name__):
            assert _run(_consume(engine.generate([1], PARAMS)))[-1].finished
            assert _until(lambda: len(_messages(caplog, logging.ERROR)) == 2)
        assert _messages(caplog, logging.ERROR) == ["engine step observer failed"] * 2
    finally:
        engine.shutdown()


class _Clock:
    """monotonic() for the async engine: a fixed time the test moves; `hold` stops the engine thread in it."""

    def __init__(self):
        self.now = 100.0
        self.hold = threading.Event()
        self.hold.set()

    def __call__(self) -> float:
        if threading.current_thread() is not threading.main_thread():
            self.hold.wait(10)
        return self.now


def test_health_reports_a_stuck_step_only_past_the_stall_limit(fake, monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(async_engine, "monotonic", clock)
    engine = AsyncEngine(fake)
    try:
        clock.now = 1000.0  # waiting for work is not being stuck, however long
        assert engine.health() == EngineHealth(True)
        fake.gate.clear()  # the next request's turn begins at 1000 and is held inside its step
        waiting = threading.Thread(target=_run, args=(_consume(engine.generate([1], PARAMS)),), daemon=True)
        waiting.start()
        assert _until(fake.in_step.is_set)
        clock.now = 1120.0
        assert engine.health() == EngineHealth(True)  # exactly the limit is not past it
        clock.now = 1121.0
        assert engine.health() == EngineHealth(False, "the engine has been in one step for 121 s")
        fake.gate.set()
        waiting.join(5)
    finally:
        fake.gate.set()
        engine.shutdown()


def test_health_before_the_engine_threads_first_turn_is_ok(fake, monkeypatch):
    clock = _Clock()
    clock.hold.clear()  # the engine thread stops in its first monotonic() call
    monkeypatch.setattr(async_engine, "monotonic", clock)
    engine = AsyncEngine(fake)
    try:
        clock.now = 1000.0
        assert engine.health() == EngineHealth(True)
    finally:
        clock.hold.set()
        engine.shutdown()


class _RecordingEvent(threading.Event):
    def __init__(self):
        super().__init__()
        self.timeouts = []

    def wait(self, timeout=None):
        self.timeouts.append(timeout)
        return super().wait(timeout)


def test_an_idle_engine_thread_polls_its_commands_every_half_second(running):
    # the poll bounds the delay of a command whose wake-up was cleared before the loop saw it
    running._wake = wake = _RecordingEvent()
    running.abort("wake")
    assert _until(lambda: len(wake.timeouts) >= 2)
    assert set(wake.timeouts) == {0.5}


def test_health_reports_the_runners_failure(running, fake):
    fake.runner.failure = "rank 1 of the tensor-parallel group died"  # no step can run again
    assert running.health() == EngineHealth(False, "rank 1 of the tensor-parallel group died")


def test_a_request_the_engine_refuses_ends_with_its_value_error(running, fake):
    async def run():
        with pytest.raises(ValueError, match="^prompt refused$"):
            await _consume(running.generate(REFUSED, PARAMS, request_id="refused"))
        return await _consume(running.generate([1], PARAMS))

    assert _run(run())[-1].finished and fake.added == ["req-0"]
