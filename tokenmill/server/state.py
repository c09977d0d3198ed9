"""What every route shares: the async engine, tokenizer, limits, metrics; admission (429/503) and token limits."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import AsyncIterator

from fastapi import Request

from ..engine.async_engine import AsyncEngine
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
    in_flight: int = 0

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    @property
    def max_total_tokens(self) -> int:
        engine = self.engine.engine
        limit = min(engine.max_model_len, engine.capacity_tokens)
        return min(limit, self.settings.max_total_tokens or limit)

    @property
    def max_input_tokens(self) -> int:
        return min(self.max_total_tokens - 1, self.settings.max_input_tokens or self.max_total_tokens - 1)

    def acquire(self) -> None:
        """Admit one generation request: 503 while draining, 429 beyond the concurrency limit."""
        if self.draining:
            raise APIError(503, "the server is shutting down and accepts no new requests")
        if self.in_flight >= self.settings.max_concurrent_requests:
            self.metrics.requests.labels(outcome="overloaded").inc()
            raise APIError(429, f"too many concurrent requests (limit {self.settings.max_concurrent_requests}); "
                                "retry later")
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1

    def check_model(self, name: str | None) -> None:
        if name and name != self.settings.model_name:
            raise APIError(404, f"the model {name!r} does not exist; this server serves "
                                f"{self.settings.model_name!r}", param="model")

    def encode(self, text: str, what: str = "prompt") -> list[int]:
        if not isinstance(text, str) or not text:
            raise APIError(422, f"the {what} is empty", param=what)
        return list(self.tokenizer.encode(text))

    def resolve_max_tokens(self, prompt_len: int, requested: int | None) -> int:
        """Check the prompt and the new-token count against the limits; 422 with the numbers otherwise."""
        if prompt_len == 0:
            raise APIError(422, "the prompt is empty (it encodes to zero tokens)", param="prompt")
        if prompt_len > self.max_input_tokens:
            raise APIError(422, f"the input has {prompt_len} tokens, more than the limit of "
                                f"{self.max_input_tokens} input tokens", param="prompt")
        room = self.max_total_tokens - prompt_len
        if requested is None:
            return min(self.settings.default_max_tokens, room)
        if requested < 1:
            raise APIError(422, f"max tokens must be at least 1, got {requested}", param="max_tokens")
        if requested > room:
            raise APIError(422, f"inputs tokens + max_new_tokens must be <= {self.max_total_tokens}: "
                                f"the input has {prompt_len} tokens and {requested} new tokens were asked for "
                                f"({prompt_len + requested} in total)", param="max_tokens")
        return requested

    def stream(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[RequestOutput]:
        try:
            self.engine.engine.validate(prompt_ids, params)
        except ValueError as error:
            raise APIError(422, str(error)) from None
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
