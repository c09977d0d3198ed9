"""OpenAI Responses API: `POST /v1/responses` (whole, or streamed as response.created, response.in_progress,
then per output item output_item.added, content_part.added, *.delta, *.done, content_part.done,
output_item.done, and response.completed), `GET /v1/responses/{id}` from the bounded in-memory store."""

from __future__ import annotations

from dataclasses import replace

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from ..engine.async_engine import EngineStepError
from .chat_plan import Piece, plan_chat
from .errors import APIError, stream_error_event
from .responses_protocol import (ResponsesRequest, ResponseStore, conversation_after, created_now, function_call_item,
                                 item_id, message_item, output_items, output_text_part, reasoning_item,
                                 response_object, usage_of)
from .sse import SSE_HEADERS, sse_named_event
from .state import ServerState, final_output
from .strict_json import StrictJSONRoute

router = APIRouter(route_class=StrictJSONRoute)


def _store(request: Request) -> ResponseStore:
    """One store per app, made on first use."""
    store = getattr(request.app.state, "tokenmill_responses", None)
    if store is None:
        store = ResponseStore(request.app.state.tokenmill.settings.stored_responses)
        request.app.state.tokenmill_responses = store
    return store


class _ItemStream:
    """The output items of a streamed response and their events, numbered in order; one item open at a time."""

    def __init__(self):
        self.sequence = 0
        self.items: list[dict] = []  # finished items, as the final response lists them
        self.open: dict | None = None  # {"kind", "id", "text"}
        self.held = ""

    def event(self, payload: dict) -> str:
        payload = {**payload, "sequence_number": self.sequence}
        self.sequence += 1
        return sse_named_event(payload["type"], payload)

    def frames(self, piece: Piece) -> list[str]:
        frames = []
        if piece.reasoning:
            frames += self._text("reasoning", piece.reasoning)
        text = self.held + piece.content
        if text and (self._kind() == "message" or text.strip()):
            self.held = ""
            frames += self._text("message", text)
        else:  # whitespace before the first words (or before tool calls) opens no message
            self.held = text
        for call in piece.calls:
            frames += self.close()
            item = function_call_item(call, status="in_progress")
            index = len(self.items)
            frames.append(self.event({"type": "response.output_item.added", "output_index": index, "item": item}))
            frames.append(self.event({"type": "response.function_call_arguments.delta", "item_id": item["id"],
                                      "output_index": index, "delta": call.arguments}))
            frames.append(self.event({"type": "response.function_call_arguments.done", "item_id": item["id"],
                                      "output_index": index, "arguments": call.arguments}))
            done = function_call_item(call, item=item["id"])
            self.items.append(done)
            frames.append(self.event({"type": "response.output_item.done", "output_index": index, "item": done}))
        return frames

    def _kind(self) -> str | None:
        return self.open["kind"] if self.open else None

    def _text(self, kind: str, delta: str) -> list[str]:
        frames = []
        if self._kind() != kind:
            frames += self.close()
            self.open = {"kind": kind, "id": item_id("rs" if kind == "reasoning" else "msg"), "text": ""}
            make = reasoning_item if kind == "reasoning" else message_item
            frames.append(self.event({"type": "response.output_item.added", "output_index": len(self.items),
                                      "item": make("", status="in_progress", item=self.open["id"])}))
            frames.append(self.event({"type": "response.content_part.added", **self._where(),
                                      "part": self._part("")}))
        self.open["text"] += delta
        name = "reasoning_text" if kind == "reasoning" else "output_text"
        extra = {} if kind == "reasoning" else {"logprobs": []}
        frames.append(self.event({"type": f"response.{name}.delta", **self._where(), "delta": delta, **extra}))
        return frames

    def close(self) -> list[str]:
        if self.open is None:
            return []
        text, kind = self.open["text"], self.open["kind"]
        name = "reasoning_text" if kind == "reasoning" else "output_text"
        extra = {} if kind == "reasoning" else {"logprobs": []}
        frames = [self.event({"type": f"response.{name}.done", **self._where(), "text": text, **extra}),
                  self.event({"type": "response.content_part.done", **self._where(), "part": self._part(text)})]
        make = reasoning_item if kind == "reasoning" else message_item
        item = make(text, item=self.open["id"])
        frames.append(self.event({"type": "response.output_item.done", "output_index": len(self.items),
                                  "item": item}))
        self.items.append(item)
        self.open = None
        return frames

    def _where(self) -> dict:
        return {"item_id": self.open["id"], "output_index": len(self.items), "content_index": 0}

    def _part(self, text: str) -> dict:
        if self.open["kind"] == "reasoning":
            return {"type": "reasoning_text", "text": text}
        return output_text_part(text)


def _prepare(state: ServerState, body: ResponsesRequest, messages: list[dict]):
    plan = plan_chat(state, messages, body.tool_specs(), body.chat_tool_choice(), body.parallel_tool_calls,
                     body.template_kwargs(), structured_output=body.structured_output())
    return plan, state.validate(plan.prompt_ids, replace(body.sampling_params(),
                                                         structured_output=plan.structured_output,
                                                         skip_special_tokens=plan.skip_special_tokens))


@router.post("/v1/responses")
async def create_response(body: ResponsesRequest, request: Request):
    state: ServerState = request.app.state.tokenmill
    state.check_model(body.model)
    body.refuse_unsupported()
    store = _store(request)
    history = store.get(body.previous_response_id)[1] if body.previous_response_id else []
    history = [*history, *body.input_messages()]
    if not history:
        raise APIError(422, "the input is empty: send text or at least one input item", param="input")
    messages = ([{"role": "system", "content": body.instructions}] if body.instructions else []) + history
    plan, params = await run_in_threadpool(_prepare, state, body, messages)  # template and grammar: CPU work
    prompt = plan.prompt_ids
    response_id, created, model = item_id("resp"), created_now(), state.settings.model_name
    outputs = state.stream(prompt, params)
    state.acquire()

    def finished(split, choice) -> dict:
        status = "incomplete" if choice.finish_reason == "length" else "completed"
        items = streamed.items if body.stream else output_items(split)
        response = response_object(response_id, created, model, body, status, items,
                                   usage_of(len(prompt), len(choice.token_ids)))
        if body.store:
            store.put(response, conversation_after(history, split))
        return response

    if not body.stream:
        try:
            final = await final_output(request, outputs)
        finally:
            state.release()
        split = plan.output()
        split.step(final.outputs[0].text, finished=True)
        return finished(split, final.outputs[0])
    streamed = _ItemStream()

    async def events():
        try:
            started = response_object(response_id, created, model, body, "in_progress", [], None)
            yield streamed.event({"type": "response.created", "response": started})
            yield streamed.event({"type": "response.in_progress", "response": started})
            split, last = plan.output(), None
            async for output in outputs:
                last = output.outputs[0]
                for frame in streamed.frames(split.step(last.delta_text, last.finished)):
                    yield frame
            for frame in streamed.close():
                yield frame
            response = finished(split, last)
            kind = "response.completed" if response["status"] == "completed" else "response.incomplete"
            yield streamed.event({"type": kind, "response": response})
        except EngineStepError as error:
            yield streamed.event({"type": "error", "code": "server_error", "message": str(error), "param": None,
                                  **{"error": stream_error_event(request.url.path, str(error))["error"]}})
        finally:
            state.release()

    return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)


@router.get("/v1/responses/{response_id}")
async def get_response(response_id: str, request: Request):
    return _store(request).get(response_id, param="response_id")[0]
