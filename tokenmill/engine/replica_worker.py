"""One data-parallel replica: a process that loads the model, runs an AsyncEngine over it, and relays
requests and outputs over a multiprocessing connection to the front (engine/replicas.py).

Messages to the replica: ("add", id, prompt_ids, params), ("abort", id), ("stop",).
Messages from it: ("ready", ReplicaInfo), ("outputs", [RequestOutput, ...]), ("error", id, kind, message, param),
("step", stats, seconds, threads), ("health", ok, reason); ("failed", message) when it cannot start.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from dataclasses import dataclass, field

from .async_engine import AsyncEngine, EngineDeadError, EngineStepError, ModelInfo, RequestFailedError
from .adapters import UnknownAdapterError
from .engine import EngineConfig
from .limits import RequestLimitError, RequestLimits

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 1.0


@dataclass(frozen=True)
class ReplicaSpec:
    """Everything a replica process needs to build its engine (picklable: sent to the new process)."""

    source: str
    load_kwargs: dict = field(default_factory=dict)  # from_pretrained's keywords (gguf_file, dtype, device, ...)
    engine_config: EngineConfig | None = None
    threads: int = 1  # torch threads of this replica
    lora_adapters: dict = field(default_factory=dict)  # name → PEFT folder, loaded before serving
    stall_seconds: float = 120.0


@dataclass(frozen=True)
class ReplicaInfo:
    """What a started replica reports, so the front can validate requests without a round trip."""

    model_info: ModelInfo
    limits: RequestLimits
    adapters: tuple[str, ...]
    structured_output_ok: bool  # the engine has a tokenizer and eos ids
    pid: int


# the errors a replica may report for one request, rebuilt by name on the front
ERROR_KINDS = {cls.__name__: cls for cls in (ValueError, UnknownAdapterError, RequestFailedError,
                                             EngineStepError, EngineDeadError)}


def error_message(request_id: str, error: BaseException) -> tuple:
    kind = type(error).__name__
    if isinstance(error, RequestLimitError):
        return ("error", request_id, "RequestLimitError", str(error), error.param)
    if kind not in ERROR_KINDS:
        kind = "ValueError" if isinstance(error, ValueError) else "EngineStepError"
    return ("error", request_id, kind, str(error), None)


def rebuild_error(kind: str, message: str, param: str | None) -> Exception:
    if kind == "RequestLimitError":
        return RequestLimitError(message, param)
    return ERROR_KINDS.get(kind, EngineStepError)(message)


def build_engine(spec: ReplicaSpec) -> AsyncEngine:
    import torch

    from ..auto import AutoModelForCausalLM, AutoTokenizer
    from .engine import LLMEngine

    torch.set_num_threads(spec.threads)  # before loading, so the model's execution policy records it
    tokenizer = AutoTokenizer.from_pretrained(spec.source, **_tokenizer_kwargs(spec.load_kwargs))
    model = AutoModelForCausalLM.from_pretrained(spec.source, progress=False, **spec.load_kwargs)
    engine = LLMEngine(model, tokenizer, spec.engine_config)
    for name, path in spec.lora_adapters.items():
        engine.load_adapter(name, path)
    return AsyncEngine(engine, stall_seconds=spec.stall_seconds)


def _tokenizer_kwargs(load_kwargs: dict) -> dict:
    return {"gguf_file": load_kwargs["gguf_file"]} if load_kwargs.get("gguf_file") else {}


def replica_info(engine: AsyncEngine) -> ReplicaInfo:
    import os

    inner = engine.engine
    return ReplicaInfo(engine.model_info(), engine.limits, tuple(inner.runner.model.lora_adapters.names()),
                       inner.tokenizer is not None and bool(inner.eos_token_ids), os.getpid())


def run_replica(spec: ReplicaSpec, conn) -> None:
    """The replica process's entry point: serve `conn` until told to stop or the front goes away."""
    # Ctrl-C reaches the whole process group: the front drains first, then stops its replicas itself
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        engine = build_engine(spec)
    except Exception as error:  # noqa: BLE001 - reported to the front, which names it
        conn.send(("failed", f"{type(error).__name__}: {error}"))
        return
    relay = _Relay(engine, conn)
    engine.on_step = relay.on_step
    conn.send(("ready", replica_info(engine)))
    try:
        asyncio.run(relay.serve())
    finally:
        engine.shutdown()


class _Relay:
    """Runs in the replica: commands from the front become engine requests; outputs go back batched per step."""

    def __init__(self, engine: AsyncEngine, conn):
        self.engine = engine
        self.conn = conn
        self.send_lock = threading.Lock()  # the engine thread (step stats) and the event loop both send
        self.tasks: dict[str, asyncio.Task] = {}
        self.pending: list = []

    def send(self, message) -> None:
        with self.send_lock:
            self.conn.send(message)

    def on_step(self, engine, seconds: float) -> None:
        self.send(("step", engine.stats(), seconds, engine.runner.model.execution_policy.threads))

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        self.stopped = loop.create_future()
        threading.Thread(target=self._receive, args=(loop,), name="tokenmill-replica-commands", daemon=True).start()
        beat = asyncio.create_task(self._heartbeat())
        await self.stopped
        beat.cancel()
        for task in list(self.tasks.values()):
            task.cancel()

    def _receive(self, loop) -> None:
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):  # the front is gone: nobody is left to serve
                message = ("stop",)
            loop.call_soon_threadsafe(self._handle, message)
            if message[0] == "stop":
                return

    def _handle(self, message) -> None:
        if message[0] == "add":
            _, request_id, prompt, params = message
            self.tasks[request_id] = asyncio.create_task(self._run(request_id, prompt, params))
        elif message[0] == "abort":
            task = self.tasks.pop(message[1], None)
            if task is not None:
                task.cancel()  # closing the generator aborts the request in the engine
        elif not self.stopped.done():
            self.stopped.set_result(None)

    async def _run(self, request_id: str, prompt: list[int], params) -> None:
        try:
            async for output in self.engine.generate(prompt, params, request_id):
                self._queue(output)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - handed to the front's caller
            self.send(error_message(request_id, error))
        finally:
            self.tasks.pop(request_id, None)

    def _queue(self, output) -> None:
        """Outputs of one step wake every request's task before any runs: one flush sends them all."""
        if not self.pending:
            asyncio.get_running_loop().call_soon(self._flush)
        self.pending.append(output)

    def _flush(self) -> None:
        outputs, self.pending = self.pending, []
        try:
            self.send(("outputs", outputs))
        except (BrokenPipeError, OSError):
            log.warning("the front went away; %d output(s) dropped", len(outputs))

    async def _heartbeat(self) -> None:
        while True:
            health = self.engine.health()
            try:
                self.send(("health", health.ok, health.reason))
            except (BrokenPipeError, OSError):
                return
            await asyncio.sleep(HEARTBEAT_SECONDS)
