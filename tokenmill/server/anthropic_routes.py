"""Anthropic Messages API: `POST /v1/messages`, whole or streamed as message_start, content_block_start /
content_block_delta / content_block_stop per block (thinking, text, tool_use), message_delta and message_stop."""

from __future__ import annotations

import uuid
from dataclasses import replace

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from ..engine.async_engine import EngineStepError
from .anthropic_protocol import MessagesRequest, content_blocks, stop_reason, tool_use_block
from .chat_plan import Piece, plan_chat
from .errors import stream_error_event
from .sse import SSE_HEADERS, sse_named_event
from .state import ServerState, final_output
from .strict_json import StrictJSONRoute

router = APIRouter(route_class=StrictJSONRoute)


def _event(payload: dict) -> str:
    return sse_named_event(payload["type"], payload)


class _BlockStream:
    """The content blocks of a streamed message: one open at a time, opened when its kind of output arrives.
    Whitespace before the first text is held so tool calls alone open no empty text block."""

    def __init__(self):
        self.index, self.kind, self.held = -1, None, ""

    def frames(self, piece: Piece) -> list[str]:
        frames = []
        if piece.reasoning:
            frames += self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""})
            frames.append(self._delta({"type": "thinking_delta", "thinking": piece.reasoning}))
        text = self.held + piece.content
        if text and (self.kind == "text" or text.strip()):
            self.held = ""
            frames += self._open("text", {"type": "text", "text": ""})
            frames.append(self._delta({"type": "text_delta", "text": text}))
        else:
            self.held = text
        for call in piece.calls:
            block = tool_use_block(call)
            frames += self._open("tool_use", {**block, "input": {}}, always=True)
            frames.append(self._delta({"type": "input_json_delta", "partial_json": call.arguments}))
        return frames

    def close(self) -> list[str]:
        if self.kind is None:
            return []
        self.kind = None
        return [_event({"type": "content_block_stop", "index": self.index})]

    def _open(self, kind: str, block: dict, always: bool = False) -> list[str]:
        if self.kind == kind and not always:
            return []
        frames = self.close()
        self.index, self.kind = self.index + 1, kind
        return frames + [_event({"type": "content_block_start", "index": self.index, "content_block": block})]

    def _delta(self, delta: dict) -> str:
        return _event({"type": "content_block_delta", "index": self.index, "delta": delta})


def _prepare(state: ServerState, body: MessagesRequest):
    tool_choice, parallel = body.openai_tool_choice()
    plan = plan_chat(state, body.chat_messages(), body.tool_specs(), tool_choice, parallel,
                     body.template_kwargs(), body.structured_output())
    return plan, state.validate(plan.prompt_ids, replace(body.sampling_params(),
                                                         structured_output=plan.structured_output,
                                                         skip_special_tokens=plan.skip_special_tokens))


@router.post("/v1/messages")
async def messages(body: MessagesRequest, request: Request):
    state: ServerState = request.app.state.tokenmill
    state.check_model(body.model)
    plan, params = await run_in_threadpool(_prepare, state, body)  # template, tokenizing and grammar: CPU work
    prompt = plan.prompt_ids
    stops = list(body.stop_sequences or [])
    message = {"id": f"msg_{uuid.uuid4().hex}", "type": "message", "role": "assistant",
               "model": state.settings.model_name}
    outputs = state.stream(prompt, params)
    state.acquire()
    if not body.stream:
        try:
            final = await final_output(request, outputs)
        finally:
            state.release()
        choice, split = final.outputs[0], plan.output()
        split.step(choice.text, finished=True)
        reason, sequence = stop_reason(choice.finish_reason, choice.stop_reason, split, stops)
        return {**message, "content": content_blocks(split), "stop_reason": reason, "stop_sequence": sequence,
                "usage": {"input_tokens": len(prompt), "output_tokens": len(choice.token_ids)}}

    async def events():
        try:
            yield _event({"type": "message_start", "message": {
                **message, "content": [], "stop_reason": None, "stop_sequence": None,
                "usage": {"input_tokens": len(prompt), "output_tokens": 0}}})
            blocks, split, last = _BlockStream(), plan.output(), None
            async for output in outputs:
                last = output.outputs[0]
                for frame in blocks.frames(split.step(last.delta_text, last.finished)):
                    yield frame
            for frame in blocks.close():
                yield frame
            reason, sequence = stop_reason(last.finish_reason, last.stop_reason, split, stops)
            yield _event({"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": sequence},
                          "usage": {"output_tokens": len(last.token_ids)}})
            yield _event({"type": "message_stop"})
        except EngineStepError as error:
            yield sse_named_event("error", stream_error_event(request.url.path, str(error)))
        finally:
            state.release()

    return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)
