"""AsyncEngine's surface for servers: validate (one limit check), limits, model_info, and generate."""

import asyncio

import pytest
import torch

from tokenmill.engine import EngineConfig, LLMEngine, SamplingParams
from tokenmill.engine.async_engine import AsyncEngine
from tokenmill.engine.limits import RequestLimitError, RequestLimits
from tokenmill.engine.thread_tuner import ThreadTuner


@pytest.fixture
def engine(tiny_model):
    running = AsyncEngine(LLMEngine(tiny_model, config=EngineConfig(num_blocks=16, block_size=4)))
    yield running
    running.shutdown()


def test_limits_and_model_info(engine):
    assert engine.limits == RequestLimits(64, 63)  # 16 blocks of 4 tokens < the model's 128 positions
    info = engine.model_info()
    assert (info.dtype, info.device_type, info.vocab_size, info.kv_blocks, info.block_size) == \
        ("float32", "cpu", 96, 16, 4)


def test_validate_resolves_max_tokens_within_the_given_limits(engine):
    params = SamplingParams(max_tokens=None, temperature=0)
    assert engine.validate([1, 2, 3], params).max_tokens == 61
    assert engine.validate([1, 2, 3], params, engine.limits.narrowed(default_max_tokens=5)).max_tokens == 5
    asked = SamplingParams(max_tokens=7, temperature=0)
    assert engine.validate([1, 2, 3], asked) is asked
    with pytest.raises(RequestLimitError, match="must be <= 9") as refused:
        engine.validate([1, 2, 3], asked, engine.limits.narrowed(max_total_tokens=9))
    assert refused.value.param == "max_tokens"
    with pytest.raises(ValueError, match="out of range"):
        engine.validate([1, 500], asked)


def test_generate_streams_a_validated_request_and_refuses_an_unchecked_bad_one(engine):
    async def run(prompt, params):
        return [output async for output in engine.generate(prompt, params)]

    params = engine.validate([1, 2, 3], SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))
    outputs = asyncio.run(run([1, 2, 3], params))
    assert outputs[-1].finished and len(outputs[-1].outputs[0].token_ids) == 4
    with pytest.raises(ValueError, match="exceeds the limit of 64 tokens"):
        asyncio.run(run([1, 2, 3], SamplingParams(max_tokens=100)))


class _FakeStepClock:
    """perf_counter for the engine thread: a step on 2 torch threads takes a quarter of the time on 1."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        import torch

        self.now += 0.01 / torch.get_num_threads() ** 2
        return self.now


@pytest.fixture
def restore_torch_threads(tiny_model):
    import torch

    before, policy = torch.get_num_threads(), tiny_model.execution_policy
    yield
    torch.set_num_threads(before)
    tiny_model.set_execution_policy(policy)  # the tuner changes threads through the model's policy


def test_the_thread_tuner_switches_the_engine_thread_to_the_faster_count(tiny_model, monkeypatch,
                                                                          restore_torch_threads):
    import torch

    from tokenmill.engine import async_engine
    from tokenmill.engine.thread_tuner import ThreadTuner

    monkeypatch.setattr(async_engine, "time", _FakeStepClock())
    tuner = ThreadTuner([1, 2], min_interval=2)
    seen = []  # torch's thread count inside the engine thread, right after each step
    running = AsyncEngine(LLMEngine(tiny_model, config=EngineConfig(num_blocks=16, block_size=4)),
                          on_step=lambda engine, seconds: seen.append((torch.get_num_threads(), seconds)), tuner=tuner)
    try:
        params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)

        async def run():
            return [output async for output in running.generate([1, 2, 3], params)]

        asyncio.run(run())
    finally:
        running.shutdown()
    # 3 steps on 1 thread fill the median, the 2-thread probe wins twice in a row and takes over; 3 steps later
    # a probe of 1 thread loses (4x the cost) and 2 stays
    assert [threads for threads, _ in seen] == [1, 1, 1, 2, 2, 2, 2, 2, 1, 2, 2, 2]
    assert [seconds for _, seconds in seen[:4]] == pytest.approx([0.01, 0.01, 0.01, 0.0025])
    assert tuner.current == 2 and tuner.switches == 1


def test_the_engine_reports_each_steps_threads_and_tokens_to_the_tuner(tiny_model, restore_torch_threads):
    class RecordingTuner:
        def __init__(self):
            self.handed_out, self.recorded = [], []

        def threads_for_next_step(self) -> int:
            self.handed_out.append(2 if len(self.handed_out) % 2 else 1)
            return self.handed_out[-1]

        def record(self, threads: int, seconds: float, tokens: int) -> None:
            self.recorded.append((threads, tokens))

    tuner = RecordingTuner()
    config = EngineConfig(num_blocks=16, block_size=4, max_num_batched_tokens=4)  # the 6-token prompt takes 2 steps
    running = AsyncEngine(LLMEngine(tiny_model, config=config), tuner=tuner)
    try:
        params = SamplingParams(max_tokens=3, temperature=0, ignore_eos=True)

        async def run():
            return [output async for output in running.generate([1, 2, 3, 4, 5, 6], params)]

        asyncio.run(run())
    finally:
        running.shutdown()
    assert [threads for threads, _ in tuner.recorded] == tuner.handed_out == [1, 2, 1, 2]
    assert [tokens for _, tokens in tuner.recorded] == [4, 2, 1, 1]  # two prompt chunks, then one token a step


def test_the_tuners_thread_count_is_the_models_execution_policy(tiny_model):
    """The tuner changes threads through the policy, and the runner applies the policy: after each step the
    engine thread's torch count and `model.execution_policy.threads` agree on the tuner's choice."""
    loaded = tiny_model.execution_policy
    target = 1 if loaded.threads != 1 else 2
    seen = []
    running = AsyncEngine(LLMEngine(tiny_model, config=EngineConfig(num_blocks=16, block_size=4)),
                          on_step=lambda engine, seconds: seen.append(
                              (torch.get_num_threads(), engine.runner.model.execution_policy.threads)),
                          tuner=ThreadTuner([target]))

    async def run():
        params = running.validate([1, 2, 3], SamplingParams(max_tokens=3, temperature=0, ignore_eos=True))
        return [output async for output in running.generate([1, 2, 3], params)]

    try:
        assert asyncio.run(run())[-1].finished
        assert seen and all(pair == (target, target) for pair in seen)
        assert tiny_model.execution_policy == loaded.with_threads(target)
    finally:
        running.shutdown()
        tiny_model.set_execution_policy(loaded)


def _collect(engine, prompt, params):
    """All outputs of one request; a request that never ends fails the test instead of hanging it."""
    return asyncio.run(asyncio.wait_for(_consume(engine.generate(prompt, params)), 30))


GREEDY = SamplingParams(max_tokens=3, temperature=0, ignore_eos=True)


def test_a_request_that_cannot_start_fails_alone_and_the_loop_goes_on(engine, monkeypatch):
    from tokenmill.engine.async_engine import RequestFailedError

    add = engine.engine.add_request

    def add_or_break(request_id, prompt, params):
        if prompt == [9, 9]:
            raise RuntimeError("broken setup")
        return add(request_id, prompt, params)

    monkeypatch.setattr(engine.engine, "add_request", add_or_break)
    with pytest.raises(RequestFailedError, match="could not be started.*broken setup"):
        _collect(engine, [9, 9], GREEDY)
    assert _collect(engine, [1, 2, 3], GREEDY)[-1].finished
    assert engine.health().ok and engine.engine.stats()["num_running"] == 0


def test_a_failing_step_observer_does_not_fail_requests(tiny_model):
    def observer(engine, seconds):
        raise ZeroDivisionError("observer bug")

    running = AsyncEngine(LLMEngine(tiny_model, config=EngineConfig(num_blocks=16, block_size=4)), on_step=observer)
    try:
        for _ in range(2):
            assert len(_collect(running, [1, 2, 3], GREEDY)[-1].outputs[0].token_ids) == 3
        assert running.health().ok
    finally:
        running.shutdown()


def test_a_request_whose_row_fails_raises_its_error(engine, monkeypatch):
    from tokenmill.engine.async_engine import RequestFailedError

    run = engine.engine.runner.run

    def nan_logits(chunks, all_rows):
        last_logits, every_position = run(chunks, all_rows)
        return last_logits * float("nan"), every_position

    monkeypatch.setattr(engine.engine.runner, "run", nan_logits)
    with pytest.raises(RequestFailedError, match="no finite next-token distribution"):
        _collect(engine, [1, 2, 3], GREEDY)
    monkeypatch.setattr(engine.engine.runner, "run", run)
    assert _collect(engine, [1, 2, 3], GREEDY)[-1].finished and engine.engine.blocks.num_used_blocks == 0


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the death it simulates
def test_a_dead_engine_thread_fails_its_waiters_and_reports_unhealthy(tiny_model, monkeypatch):
    """Issue 18: the server accepted requests it never answered while /health said 200."""
    from tokenmill.engine.async_engine import EngineDeadError

    running = AsyncEngine(LLMEngine(tiny_model, config=EngineConfig(num_blocks=16, block_size=4)))

    def die():
        raise SystemExit("the engine thread is gone")  # not an Exception: escapes the loop's guard

    monkeypatch.setattr(running.engine, "step", die)
    with pytest.raises(EngineDeadError):
        _collect(running, [1, 2, 3], GREEDY)
    running._thread.join(5)
    health = running.health()
    assert not health.ok and "not running" in health.reason
    with pytest.raises(EngineDeadError):
        _collect(running, [1, 2, 3], GREEDY)


def test_a_stuck_step_reports_unhealthy_until_it_returns(tiny_model, monkeypatch):
    import threading
    import time

    running = AsyncEngine(LLMEngine(tiny_model, config=EngineConfig(num_blocks=16, block_size=4)), stall_seconds=0.2)
    release = threading.Event()
    step = running.engine.step

    def stuck_step():
        release.wait(10)
        return step()

    monkeypatch.setattr(running.engine, "step", stuck_step)
    try:
        async def run():
            task = asyncio.create_task(_consume(running.generate([1, 2, 3], GREEDY)))
            await asyncio.sleep(0.5)
            stuck = running.health()
            release.set()
            return stuck, await task

        stuck, outputs = asyncio.run(run())
        assert not stuck.ok and "in one step" in stuck.reason
        assert outputs[-1].finished
        time.sleep(0.05)
        assert running.health().ok
    finally:
        release.set()
        running.shutdown()


async def _consume(outputs):
    return [output async for output in outputs]


def test_outputs_for_a_closed_event_loop_do_not_fail_the_others(engine):
    closed = asyncio.new_event_loop()
    closed.close()
    engine._streams["gone"] = async_engine_stream(closed)
    try:
        engine._deliver_all([("gone", None)])  # raised "Event loop is closed" in the engine thread before
    finally:
        engine._streams.pop("gone")
    assert len(_collect(engine, [1, 2, 3], GREEDY)[-1].outputs[0].token_ids) == 3


def async_engine_stream(loop):
    from tokenmill.engine.async_engine import _Stream

    return _Stream(loop, None)
