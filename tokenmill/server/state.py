"""What every route shares: the async engine, tokenizer, limits, metrics; admission (429/503) and token limits."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import AsyncIterator

from fastapi import Request

from ..engine.adapters import UnknownAdapterError
from ..engine.async_engine import AsyncEngine
from ..engine.limits import RequestLimitError, RequestLimits
from ..engine.outputs import RequestOutput
from ..engine.sampling_params import SamplingParams
from .errors import APIError
from .metrics import ServerMetrics
from .settings import ServerSettings


@dataclass
class ServerState:
    engine: AsyncEngine
    settings: ServerSettings
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    draining: bool = False
    in_flight: int = 0  # admitted requests not yet finished
    in_flight_sequences: int = 0  # their sequences (what admission counts)
    adapter_sources: dict[str, str] = field(default_factory=dict)  # LoRA adapter name → the folder it came from

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    @property
    def limits(self) -> RequestLimits:
        """The engine's limits narrowed by the server's settings."""
        s = self.settings
        return self.engine.limits.narrowed(s.max_total_tokens, s.max_input_tokens, s.default_max_tokens)

    @property
    def max_total_tokens(self) -> int:
        return self.limits.max_total_tokens

    @property
    def max_input_tokens(self) -> int:
        return self.limits.max_input_tokens

    @property
    def vocab_size(self) -> int:
        return self.engine.model_info().vocab_size

    @property
    def max_sequences_per_request(self) -> int:
        # a one-sequence request is always well formed: a server at its limit answers it 429, not 422
        return min(self.settings.max_sequences_per_request, max(1, self.settings.max_concurrent_requests))

    def check_sequences(self, prompts: int, n: int, param: str = "n") -> int:
        """The sequences a request asks for (prompts x n); 422 beyond the per-request cap, before any work."""
        count = prompts * n
        if count > self.max_sequences_per_request:
            raise APIError(422, f"this request asks for {count} sequences ({prompts} prompt(s) x n={n}), more than "
                                f"the limit of {self.max_sequences_per_request} per request", param=param)
        return count

    def check_healthy(self) -> None:
        """503 while draining or while the engine thread is dead or stuck in one step."""
        if self.draining:
            raise APIError(503, "the server is shutting down and accepts no new requests")
        health = self.engine.health()
        if not health.ok:
            raise APIError(503, f"the engine is unhealthy: {health.reason}")

    def acquire(self, sequences: int = 1) -> None:
        """Admit one generation request of `sequences` sequences: 503 while draining or unhealthy, 429 beyond
        the concurrency limit (counted in sequences, so one request of many choices cannot take every slot)."""
        self.check_healthy()
        self.check_sequences(1, sequences)
        limit = self.settings.max_concurrent_requests
        if self.in_flight_sequences + sequences > limit:
            self.metrics.requests.labels(outcome="overloaded").inc()
            raise APIError(429, f"too many concurrent sequences ({self.in_flight_sequences} running, this request "
                                f"{sequences}, limit {limit}); retry later")
        self.in_flight += 1
        self.in_flight_sequences += sequences

    def release(self, sequences: int = 1) -> None:
        self.in_flight -= 1
        self.in_flight_sequences -= sequences

    def check_model(self, name: str | None, client_defaults: tuple[str, ...] = ()) -> str | None:
        """The LoRA adapter a request's model name selects (None: the base model); 404 for a name that is neither
        this server's model nor a loaded adapter. `client_defaults` are names a client sends on its own
        (huggingface_hub's InferenceClient: "tgi", "dummy"), accepted like TGI accepts any name on chat."""
        if not name or name == self.settings.model_name or name in client_defaults:
            return None
        if name in self.adapter_sources:
            return name
        served = ", ".join(repr(n) for n in [self.settings.model_name, *self.adapter_sources])
        raise APIError(404, f"the model {name!r} does not exist; this server serves {served}", param="model")

    def encode(self, text: str, what: str = "prompt") -> list[int]:
        if not isinstance(text, str) or not text:
            raise APIError(422, f"the {what} is empty", param=what)
        return list(self.tokenizer.encode(text))

    def validate(self, prompt_ids: list[int], params: SamplingParams) -> SamplingParams:
        """The engine's one check against the server's limits; 422 naming the field and the numbers otherwise.
        Returns `params` with max_tokens resolved (the server's default when the request sets none)."""
        try:
            return self.engine.validate(prompt_ids, params, self.limits)
        except RequestLimitError as error:
            raise APIError(422, str(error), param=error.param) from None
        except UnknownAdapterError as error:  # unloaded since the model name was checked
            raise APIError(404, str(error), param="model") from None
        except ValueError as error:
            raise APIError(422, str(error)) from None

    def stream(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[RequestOutput]:
        """A validated request's outputs (see `validate`), observed by the metrics."""
        return self.metrics.track(self.engine.generate(prompt_ids, params), len(prompt_ids))


async def final_output(request: Request, outputs: AsyncIterator[RequestOutput]) -> RequestOutput:
    """Consume a request to its end; abort it if the client goes away meanwhile."""
    last = None
    async for output in outputs:
        last = output
        if not output.finished and await request.is_disconnected():
            await outputs.aclose()  # aborts the request and frees its blocks
            raise APIError(499, "the client closed the connection")
    return last


async def merge(streams: list[AsyncIterator]) -> AsyncIterator[tuple[int, object]]:
    """Interleave several async iterators as (stream index, item), in arrival order."""
    if len(streams) == 1:  # the common case: no pump task and queue hop per item
        try:
            async for item in streams[0]:
                yield 0, item
        finally:
            await streams[0].aclose()
        return
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(index: int, stream: AsyncIterator) -> None:
        try:
            async for item in stream:
                await queue.put((index, item))
            await queue.put((index, done))
        except BaseException as error:  # noqa: BLE001 - forwarded to the consumer
            await queue.put((index, error))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    remaining = len(tasks)
    try:
        while remaining:
            index, item = await queue.get()
            if item is done:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
