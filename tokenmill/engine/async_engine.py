"""The engine behind the server: one background thread steps the engine; asyncio callers stream outputs.

Callers never touch the engine directly: add/abort are commands queued to the engine thread, outputs come
back through per-request asyncio queues. A caller that stops iterating (client disconnect, cancellation)
aborts its request, which frees its KV blocks at the next step.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import queue
import threading
import time
from time import monotonic  # bound here: tests replace the module `time` to fake step durations
from dataclasses import dataclass
from typing import AsyncIterator, Callable

from .engine import LLMEngine
from .limits import RequestLimits
from .outputs import RequestOutput
from .sampling_params import SamplingParams
from .thread_tuner import ThreadTuner

log = logging.getLogger(__name__)


class EngineStepError(RuntimeError):
    """The model step failed; every request in flight at that moment fails with this."""


class RequestFailedError(EngineStepError):
    """One request failed on its own (e.g. its next-token distribution was not finite); the others went on."""


class EngineDeadError(EngineStepError):
    """The engine thread is gone (or was shut down): nothing in flight can finish."""


@dataclass(frozen=True)
class EngineHealth:
    ok: bool
    reason: str = ""


@dataclass(frozen=True)
class ModelInfo:
    """What a server reports about the model and the engine's pool."""

    dtype: str
    device_type: str
    vocab_size: int
    kv_blocks: int
    block_size: int


@dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    outputs: asyncio.Queue


class AsyncEngine:
    """`tuner`: picks the engine thread's torch thread count from step times, through the model's execution
    policy (None: the policy keeps its count). `stall_seconds`: with work pending, a loop turn (one step) longer
    than this makes `health()` report the engine stuck."""

    def __init__(self, engine: LLMEngine, on_step: Callable[[LLMEngine, float], None] | None = None,
                 tuner: ThreadTuner | None = None, stall_seconds: float = 120.0):
        self.engine = engine
        self.stall_seconds = stall_seconds
        self._beat = monotonic()  # when the engine thread last began a loop turn
        self._busy = False  # whether that turn has work (commands or a step) rather than waiting for some
        self.on_step = on_step
        self.tuner = tuner
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._streams: dict[str, _Stream] = {}
        self._wake = threading.Event()
        self._stopping = False
        self._ids = itertools.count()
        self._thread = threading.Thread(target=self._loop, name="tokenmill-engine", daemon=True)
        self._thread.start()

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    @property
    def limits(self) -> RequestLimits:
        return self.engine.limits

    def model_info(self) -> ModelInfo:
        model = self.engine.runner.model
        return ModelInfo(dtype=str(model.dtype).replace("torch.", ""), device_type=model.device.type,
                         vocab_size=self.engine.vocab_size, kv_blocks=self.engine.blocks.num_blocks,
                         block_size=self.engine.config.block_size)

    def validate(self, prompt_token_ids: list[int], params: SamplingParams,
                 limits: RequestLimits | None = None) -> SamplingParams:
        """Check a request before it is queued (ValueError naming the problem; RequestLimitError for a limit)
        against `limits` (default: the engine's); returns `params` with its max_tokens resolved."""
        max_tokens = self.engine.validate(prompt_token_ids, params, limits)
        return params if params.max_tokens == max_tokens else dataclasses.replace(params, max_tokens=max_tokens)

    @property
    def num_in_flight(self) -> int:
        return len(self._streams)

    def new_request_id(self) -> str:
        return f"req-{next(self._ids)}"

    async def generate(self, prompt_token_ids: list[int], params: SamplingParams,
                       request_id: str | None = None) -> AsyncIterator[RequestOutput]:
        """Yield a RequestOutput after every step that produced something for this request. Call `validate`
        first: a request the engine refuses ends the iteration with its ValueError."""
        request_id = request_id or self.new_request_id()
        if not self._thread.is_alive() or self._stopping:
            raise EngineDeadError("the engine is not running; the server cannot generate")
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue())
        self._streams[request_id] = stream
        self._send(("add", request_id, prompt_token_ids, params))
        finished = False
        try:
            async for item in outputs_until_finished(stream.outputs):
                finished = item.finished
                yield item
        finally:
            self._streams.pop(request_id, None)
            if not finished:
                self._send(("abort", request_id))

    def abort(self, request_id: str) -> None:
        self._send(("abort", request_id))

    async def call(self, function: Callable[[LLMEngine], object]):
        """`function(engine)` run on the engine thread between steps (e.g. loading an adapter); its result, or
        its exception raised here."""
        future = asyncio.get_running_loop().create_future()
        self._send(("call", function, future))
        return await future

    def shutdown(self, timeout: float = 5.0) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self._fail_streams(EngineDeadError("the engine was shut down"))

    def fail_waiting(self, reason: str) -> None:
        """End every caller's wait with EngineDeadError(reason) (a shutdown that cannot wait for a stuck engine)."""
        self._fail_streams(EngineDeadError(reason))

    def health(self) -> EngineHealth:
        """Unhealthy when the engine thread has died or one step has run longer than `stall_seconds`."""
        if not self._thread.is_alive():
            return EngineHealth(False, "the engine thread is not running")
        if self.engine.runner.failure is not None:  # a tensor-parallel rank died: no step can run again
            return EngineHealth(False, self.engine.runner.failure)
        stalled = monotonic() - self._beat
        if self._busy and stalled > self.stall_seconds:
            return EngineHealth(False, f"the engine has been in one step for {stalled:.0f} s")
        return EngineHealth(True)

    # ---- the engine thread ----
    def _send(self, command) -> None:
        self._commands.put(command)
        self._wake.set()

    def _deliver(self, request_id: str, item) -> None:
        self._deliver_all([(request_id, item)])

    def _deliver_all(self, items: list[tuple[str, object]]) -> None:
        """Hand a step's outputs over with one wake-up per event loop, not one per request."""
        batches: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, object]]] = {}
        for request_id, item in items:
            stream = self._streams.get(request_id)
            if stream is not None:
                batches.setdefault(stream.loop, []).append((stream.outputs, item))
        for loop, batch in batches.items():
            try:
                loop.call_soon_threadsafe(_put_all, batch)
            except RuntimeError:  # that caller's event loop closed meanwhile: nobody is left to read these
                pass

    def _drain_commands(self) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            if command[0] == "add":
                self._add(*command[1:])
            elif command[0] == "call":
                _run_call(self.engine, *command[1:])
            else:
                self.engine.abort_request(command[1])

    def _add(self, request_id: str, prompt: list[int], params: SamplingParams) -> None:
        if request_id not in self._streams:
            return  # the caller left before the request started
        try:
            self.engine.add_request(request_id, prompt, params)
        except ValueError as error:
            self._deliver(request_id, error)
        except Exception as error:  # noqa: BLE001 - one request that cannot start must not stop the engine
            log.exception("request %s could not be started", request_id)
            self.engine.abort_request(request_id)
            self._deliver(request_id, RequestFailedError(f"the request could not be started: {error!r}"))

    def _loop(self) -> None:
        try:
            while not self._stopping:
                self._beat, self._busy = monotonic(), True
                try:
                    self._turn()
                except Exception as error:  # noqa: BLE001 - the loop outlives any one failure
                    log.exception("engine step failed")
                    self._fail_all(EngineStepError(f"generation failed: {error}"))
        finally:
            if not self._stopping:
                log.critical("the engine thread stopped unexpectedly; the requests in flight fail")
            self._fail_streams(EngineDeadError("the engine stopped"))

    def _turn(self) -> None:
        """One turn of the engine thread: take commands, then one step (or wait for work)."""
        self._drain_commands()
        if not self.engine.has_unfinished_requests():
            self._busy = False
            self._wake.wait(0.5)
            self._wake.clear()
            return
        threads = self._set_threads()
        started = time.perf_counter()
        outputs = self.engine.step()
        self._deliver_all([(output.request_id, output) for output in outputs])
        seconds = time.perf_counter() - started
        try:
            if self.tuner is not None and self.engine.last_step_tokens:
                self.tuner.record(threads, seconds, self.engine.last_step_tokens)
            if self.on_step is not None:
                self.on_step(self.engine, seconds)
        except Exception:  # noqa: BLE001 - observers must not fail the requests of a step that worked
            log.exception("engine step observer failed")

    def _set_threads(self) -> int:
        """The thread count of the next step: the tuner's choice, written into the model's execution policy,
        which the runner applies in this thread (torch's OpenMP thread count is per calling thread)."""
        model = self.engine.runner.model
        if self.tuner is None:
            return model.execution_policy.threads
        threads = self.tuner.threads_for_next_step()
        if threads != model.execution_policy.threads:
            model.set_execution_policy(model.execution_policy.with_threads(threads))
        return threads

    def _fail_all(self, error: Exception) -> None:
        self._deliver_all([(request_id, error) for request_id in self.engine.abort_all()])

    def _fail_streams(self, error: Exception) -> None:
        """Wake every caller still waiting (the engine is gone: nothing more will come)."""
        self._deliver_all([(request_id, error) for request_id in list(self._streams)])


async def outputs_until_finished(outputs: asyncio.Queue) -> AsyncIterator[RequestOutput]:
    """A request's outputs from its queue up to the finished one; an exception put there, or an output carrying
    a failure, is raised."""
    while True:
        item = await outputs.get()
        if isinstance(item, BaseException):
            raise item
        if item.error is not None:
            raise RequestFailedError(item.error)
        yield item
        if item.finished:
            return


def _run_call(engine: LLMEngine, function, future: asyncio.Future) -> None:
    try:
        result, error = function(engine), None
    except Exception as failure:  # noqa: BLE001 - handed to the caller, never kills the engine thread
        result, error = None, failure
    loop = future.get_loop()
    if not loop.is_closed():
        loop.call_soon_threadsafe(_settle, future, result, error)


def _settle(future: asyncio.Future, result, error) -> None:
    if future.done():  # the caller was cancelled
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _put_all(batch: list[tuple[asyncio.Queue, object]]) -> None:
    for outputs, item in batch:
        outputs.put_nowait(item)
