"""Data parallelism: N engine replicas, each its own process (engine/replica_worker.py), behind one client with
the AsyncEngine interface the server's routes use (generate, abort, validate, health, limits, model_info, ...).

Requests go to the replica chosen by `ReplicaRouter` (least loaded, prefix-cache affinity). A reader thread per
replica hands its outputs to the callers' asyncio queues. A replica that dies fails its own requests at once with
EngineDeadError (the others go on) and is restarted, at most `max_restarts` times; beyond that `health()` is bad.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import multiprocessing
import threading
import time
from dataclasses import dataclass
from typing import AsyncIterator, Callable

from .adapters import UnknownAdapterError
from .async_engine import EngineDeadError, EngineHealth, ModelInfo, outputs_until_finished
from .engine import EngineConfig, default_kv_memory
from .limits import RequestLimits, check_per_step_costs, check_request
from .outputs import RequestOutput
from .replica_router import ReplicaRouter
from .replica_worker import ReplicaInfo, ReplicaSpec, rebuild_error, run_replica
from .sampling_params import SamplingParams

log = logging.getLogger(__name__)


class ReplicaStartError(RuntimeError):
    """A replica process could not load its model or did not report ready in time."""


@dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    outputs: asyncio.Queue
    replica: int
    sequences: int


class _Replica:
    def __init__(self, index: int):
        self.index = index
        self.process = None
        self.conn = None
        self.info: ReplicaInfo | None = None
        self.state = "starting"  # starting | up | failed | stopped
        self.restarts = 0
        self.health = EngineHealth(True)
        self.heard = time.monotonic()  # when it last reported anything
        self.send_lock = threading.Lock()

    def send(self, message) -> None:
        with self.send_lock:
            self.conn.send(message)


def _context():
    """forkserver: each replica forks from a clean server that imported torch once (fast starts and restarts,
    no OpenMP pool inherited from the front); spawn where forkserver does not exist."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["tokenmill.engine.replica_worker"])
    return context


def shared_pool(config: EngineConfig | None, num_replicas: int) -> EngineConfig:
    """Each replica's share of the server's KV pool: a block count or memory budget given for the server, or the
    one engine's default budget, divided evenly (each replica sizing its own from free memory would take N times
    as much)."""
    config = config or EngineConfig()
    if config.num_blocks is not None:
        return dataclasses.replace(config, num_blocks=max(1, config.num_blocks // num_replicas))
    budget = config.kv_cache_memory or default_kv_memory()
    return dataclasses.replace(config, kv_cache_memory=max(1, budget // num_replicas))


class ReplicaEngine:
    """`on_step(replica, stats, seconds, threads)`: each replica step's engine stats; `on_event(replica, event,
    detail)`: "died", "restarted", "failed" (no restart left or the restart failed)."""

    def __init__(self, spec: ReplicaSpec, num_replicas: int, tokenizer, *,
                 on_step: Callable | None = None, on_event: Callable | None = None, max_restarts: int = 3,
                 start_seconds: float = 600.0, affinity_slack: int = 4):
        if num_replicas < 1:
            raise ValueError(f"the number of replicas must be at least 1, got {num_replicas}")
        spec = dataclasses.replace(spec, engine_config=shared_pool(spec.engine_config, num_replicas))
        self.spec = spec
        self.tokenizer = tokenizer
        self.on_step = on_step
        self.on_event = on_event
        self.max_restarts = max_restarts
        self.start_seconds = start_seconds
        block_size = spec.engine_config.block_size if spec.engine_config is not None else 16
        self.router = ReplicaRouter(num_replicas, block_size=block_size, slack=affinity_slack)
        self.replicas = [_Replica(i) for i in range(num_replicas)]
        self._streams: dict[str, _Stream] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._stopping = False
        self._context = _context()
        for replica in self.replicas:  # all load at once; then wait for each
            self._launch(replica)
        try:
            for replica in self.replicas:
                self._await_ready(replica)
        except ReplicaStartError:
            self.shutdown()
            raise

    # ---- what the routes use (AsyncEngine's interface) ----
    @property
    def limits(self) -> RequestLimits:
        return self._info().limits

    def model_info(self) -> ModelInfo:
        """The first replica's model; the KV pool summed over every replica."""
        first = self._info().model_info
        blocks = sum(r.info.model_info.kv_blocks for r in self.replicas if r.info is not None)
        return dataclasses.replace(first, kv_blocks=blocks)

    def validate(self, prompt_token_ids: list[int], params: SamplingParams,
                 limits: RequestLimits | None = None) -> SamplingParams:
        """The checks of LLMEngine.validate, on what the replicas reported (no round trip to a replica)."""
        info = self._info()
        vocab = info.model_info.vocab_size
        bad = [t for t in prompt_token_ids if not 0 <= int(t) < vocab]
        if bad:
            raise ValueError(f"prompt token ids out of range [0, {vocab}): {bad[:5]}")
        max_tokens = check_request(len(prompt_token_ids), params.max_tokens, limits or info.limits)
        check_per_step_costs(params.stop, params.stop_token_ids, params.logit_bias)
        if params.adapter is not None and params.adapter not in info.adapters:
            loaded = ", ".join(repr(n) for n in info.adapters) or "none"
            raise UnknownAdapterError(f"no LoRA adapter named {params.adapter!r} is loaded (loaded: {loaded})")
        if params.structured_output is not None and not info.structured_output_ok:
            raise ValueError("structured output needs the engine to have a tokenizer and the model's eos token id")
        return params if params.max_tokens == max_tokens else dataclasses.replace(params, max_tokens=max_tokens)

    @property
    def num_in_flight(self) -> int:
        return len(self._streams)

    def new_request_id(self) -> str:
        return f"req-{next(self._ids)}"

    async def generate(self, prompt_token_ids: list[int], params: SamplingParams,
                       request_id: str | None = None) -> AsyncIterator[RequestOutput]:
        """As AsyncEngine.generate, on the replica the router picks."""
        request_id = request_id or self.new_request_id()
        if self._stopping:
            raise EngineDeadError("the engine replicas were shut down; the server cannot generate")
        stream = self._open(request_id, list(prompt_token_ids), params)
        finished = False
        try:  # the stream is closed whatever happens from here, a send that raises included
            try:
                self.replicas[stream.replica].send(("add", request_id, list(prompt_token_ids), params))
            except (OSError, AttributeError):  # died in between: its reader thread fails the stream
                pass
            async for item in outputs_until_finished(stream.outputs):
                finished = item.finished
                yield item
        finally:
            self._close(request_id)
            if not finished:
                self._send_quietly(stream.replica, ("abort", request_id))

    def abort(self, request_id: str) -> None:
        stream = self._streams.get(request_id)
        if stream is not None:
            self._send_quietly(stream.replica, ("abort", request_id))

    async def call(self, function):
        raise RuntimeError("running a function on the engine (runtime LoRA loading) is not available with several "
                           "data-parallel replicas; load adapters at start with --lora")

    def health(self) -> EngineHealth:
        """Bad when a replica died and could not be restarted, when none is running, or when a replica reports
        its engine stuck or has not been heard from in its stall time."""
        if self._stopping:
            return EngineHealth(False, "the engine replicas were shut down")
        for replica in self.replicas:
            if replica.state == "failed":
                return EngineHealth(False, f"engine replica {replica.index} died and could not be restarted "
                                           f"({replica.restarts} restart(s))")
            if replica.state == "up" and not replica.health.ok:
                return EngineHealth(False, f"engine replica {replica.index}: {replica.health.reason}")
            silent = time.monotonic() - replica.heard
            if replica.state == "up" and silent > self.spec.stall_seconds:
                return EngineHealth(False, f"engine replica {replica.index} has not answered for {silent:.0f} s")
        if not any(r.state == "up" for r in self.replicas):
            return EngineHealth(False, "no engine replica is running (restarting)")
        return EngineHealth(True)

    def fail_waiting(self, reason: str) -> None:
        self._fail_streams(lambda stream: True, EngineDeadError(reason))

    def shutdown(self, timeout: float = 5.0) -> None:
        self._stopping = True
        for replica in self.replicas:
            self._send_quietly(replica.index, ("stop",))
        for replica in self.replicas:
            if replica.process is not None:
                replica.process.join(timeout)
                if replica.process.is_alive():
                    replica.process.kill()
            replica.state = "stopped"
        self._fail_streams(lambda stream: True, EngineDeadError("the engine was shut down"))

    # ---- streams ----
    def _info(self) -> ReplicaInfo:
        info = next((r.info for r in self.replicas if r.info is not None), None)
        if info is None:
            raise EngineDeadError("no engine replica has started")
        return info

    def _open(self, request_id: str, prompt: list[int], params: SamplingParams) -> _Stream:
        with self._lock:
            try:
                replica = self.router.choose(prompt, [r.state == "up" for r in self.replicas])
            except ValueError:
                raise EngineDeadError("no engine replica is running; retry later") from None
            self.router.assign(replica, prompt, params.n)
            stream = _Stream(asyncio.get_running_loop(), asyncio.Queue(), replica, params.n)
            self._streams[request_id] = stream
            return stream

    def _close(self, request_id: str) -> None:
        with self._lock:
            stream = self._streams.pop(request_id, None)
            if stream is not None:
                self.router.release(stream.replica, stream.sequences)

    def _send_quietly(self, index: int, message) -> None:
        try:
            self.replicas[index].send(message)
        except (OSError, AttributeError):  # the replica is gone; its requests were failed already
            pass

    def _deliver(self, items: list[tuple[str, object]]) -> None:
        """Hand items to their callers, one wake-up per event loop."""
        batches: dict[asyncio.AbstractEventLoop, list] = {}
        with self._lock:
            for request_id, item in items:
                stream = self._streams.get(request_id)
                if stream is not None:
                    batches.setdefault(stream.loop, []).append((stream.outputs, item))
        for loop, batch in batches.items():
            try:
                loop.call_soon_threadsafe(_put_all, batch)
            except RuntimeError:  # that caller's event loop closed meanwhile
                pass

    def _fail_streams(self, which: Callable[[_Stream], bool], error: Exception) -> None:
        """End the matching callers' waits with `error`; their sequences no longer count as load."""
        with self._lock:
            failed = [(request_id, stream) for request_id, stream in self._streams.items() if which(stream)]
            for request_id, stream in failed:
                del self._streams[request_id]
                self.router.release(stream.replica, stream.sequences)
        for request_id, stream in failed:
            try:
                stream.loop.call_soon_threadsafe(stream.outputs.put_nowait, error)
            except RuntimeError:
                pass

    # ---- replica processes ----
    def _launch(self, replica: _Replica) -> None:
        ours, theirs = self._context.Pipe()
        process = self._context.Process(target=run_replica, args=(self.spec, theirs), daemon=True,
                                        name=f"tokenmill-replica-{replica.index}")
        process.start()
        theirs.close()  # only the child holds its end: its death closes the pipe
        replica.process, replica.conn, replica.state = process, ours, "starting"

    def _await_ready(self, replica: _Replica) -> None:
        """Wait for the replica's "ready", then start its reader thread; ReplicaStartError otherwise."""
        deadline = time.monotonic() + self.start_seconds
        try:
            while not replica.conn.poll(0.2):
                if time.monotonic() > deadline:
                    replica.process.kill()
                    raise ReplicaStartError(f"engine replica {replica.index} did not start in "
                                            f"{self.start_seconds:.0f} s")
            message = replica.conn.recv()
        except (EOFError, OSError):
            replica.process.join(5)
            raise ReplicaStartError(f"engine replica {replica.index} exited while starting "
                                    f"(exit code {replica.process.exitcode})") from None
        if message[0] != "ready":
            raise ReplicaStartError(f"engine replica {replica.index} could not start: {message[1]}")
        replica.info, replica.health, replica.heard = message[1], EngineHealth(True), time.monotonic()
        replica.state = "up"
        threading.Thread(target=self._read, args=(replica, replica.conn), daemon=True,
                         name=f"tokenmill-replica-{replica.index}-reader").start()

    def _read(self, replica: _Replica, conn) -> None:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                break
            replica.heard = time.monotonic()
            self._dispatch(replica, message)
        conn.close()
        if not self._stopping:
            self._replace(replica)

    def _dispatch(self, replica: _Replica, message) -> None:
        kind = message[0]
        if kind == "outputs":
            self._deliver([(output.request_id, output) for output in message[1]])
        elif kind == "error":
            _, request_id, error_kind, text, param = message
            self._deliver([(request_id, rebuild_error(error_kind, text, param))])
        elif kind == "health":
            replica.health = EngineHealth(message[1], message[2])
        elif kind == "step" and self.on_step is not None:
            try:
                self.on_step(replica.index, *message[1:])
            except Exception:  # noqa: BLE001 - observers must not stop the outputs
                log.exception("replica step observer failed")

    def _replace(self, replica: _Replica) -> None:
        """The replica died: fail its requests now, then restart it while restarts are left."""
        replica.process.join(5)
        code = replica.process.exitcode
        replica.state = "starting"
        with self._lock:
            self.router.forget(replica.index)
        self._fail_streams(lambda stream: stream.replica == replica.index, EngineDeadError(
            f"engine replica {replica.index} stopped (exit code {code}) while this request ran; retry it"))
        log.error("engine replica %d (pid %s) stopped with exit code %s", replica.index, replica.process.pid, code)
        self._event(replica.index, "died", f"exit code {code}")
        if replica.restarts >= self.max_restarts:
            replica.state = "failed"
            self._event(replica.index, "failed", f"{replica.restarts} restart(s) used")
            return
        replica.restarts += 1
        try:
            self._launch(replica)
            self._await_ready(replica)
        except ReplicaStartError as error:
            log.error("%s", error)
            replica.state = "failed"
            self._event(replica.index, "failed", str(error))
            return
        if self._stopping:  # shut down while it started: stop it too
            self._send_quietly(replica.index, ("stop",))
            return
        log.warning("engine replica %d restarted (pid %s, restart %d of %d)", replica.index, replica.process.pid,
                    replica.restarts, self.max_restarts)
        self._event(replica.index, "restarted", f"pid {replica.process.pid}")

    def _event(self, index: int, event: str, detail: str) -> None:
        if self.on_event is not None:
            try:
                self.on_event(index, event, detail)
            except Exception:  # noqa: BLE001
                log.exception("replica event observer failed")


def _put_all(batch: list[tuple[asyncio.Queue, object]]) -> None:
    for outputs, item in batch:
        outputs.put_nowait(item)
