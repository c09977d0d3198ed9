"""OpenAI-compatible routes: /v1/chat/completions, /v1/completions (streaming via SSE), /v1/models."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import replace

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from ..engine.outputs import CompletionOutput, RequestOutput
from ..engine.async_engine import EngineStepError
from .chat_plan import ChatPlan, chat_delta, chat_message, finish_reason, function_tools, plan_chat
from .errors import APIError, stream_error_event
from .lora_routes import adapter_models
from .openai_protocol import ChatCompletionRequest, CompletionRequest
from .sse import SSE_DONE, SSE_HEADERS, ending_in_error_event, sse_event
from .state import ServerState, final_output, merge
from .strict_json import StrictJSONRoute

router = APIRouter(route_class=StrictJSONRoute)
# huggingface_hub's InferenceClient names the model itself ("tgi" for TGI endpoints, "dummy" with base_url)
INFERENCE_CLIENT_MODEL_NAMES = ("tgi", "dummy")


def _state(request: Request) -> ServerState:
    return request.app.state.tokenmill


def _finish_reason(output: CompletionOutput) -> str | None:
    if output.finish_reason in ("abort", "error"):
        return "stop"
    return output.finish_reason


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _token_text(tokenizer, token_id: int) -> str:
    return tokenizer.decode([token_id])


def _chat_logprobs(tokenizer, entries) -> dict | None:
    if entries is None:
        return None
    content = []
    for entry in entries:
        text = _token_text(tokenizer, entry.token_id)
        top = [{"token": _token_text(tokenizer, t), "logprob": lp, "bytes": list(_token_text(tokenizer, t).encode())}
               for t, lp in entry.top]
        content.append({"token": text, "logprob": entry.logprob, "bytes": list(text.encode()), "top_logprobs": top})
    return {"content": content}


def _completion_logprobs(tokenizer, entries, offset: int) -> dict | None:
    if entries is None:
        return None
    tokens, token_logprobs, top, offsets = [], [], [], []
    for entry in entries:
        text = _token_text(tokenizer, entry.token_id)
        tokens.append(text)
        token_logprobs.append(entry.logprob)
        top.append({_token_text(tokenizer, t): lp for t, lp in entry.top})
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top, "text_offset": offsets}


def _chat_plan(state: ServerState, body: ChatCompletionRequest) -> ChatPlan:
    tools, tool_choice = body.tool_dicts()
    return plan_chat(state, body.plain_messages(), function_tools(tools), tool_choice,
                     body.parallel_tool_calls, body.template_kwargs(), body.structured_output())


def _prepare_chat(state: ServerState, body: ChatCompletionRequest, adapter: str | None):
    plan = _chat_plan(state, body)
    requested = body.sampling_params(body.requested_max_tokens(), body.logprobs_count(), state.vocab_size)
    return plan, state.validate(plan.prompt_ids, replace(requested, structured_output=plan.structured_output,
                                                         skip_special_tokens=plan.skip_special_tokens,
                                                         adapter=adapter))


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request):
    state = _state(request)
    adapter = state.check_model(body.model, client_defaults=INFERENCE_CLIENT_MODEL_NAMES)
    plan, params = await run_in_threadpool(_prepare_chat, state, body, adapter)  # template and grammar: CPU work
    prompt = plan.prompt_ids
    meta = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()),
            "model": adapter or state.settings.model_name}
    tokenizer = state.tokenizer
    outputs = state.stream(prompt, params)
    state.acquire(body.n)
    if not body.stream:
        try:
            final = await final_output(request, outputs)
        finally:
            state.release(body.n)
        parsed = [plan.output() for _ in final.outputs]
        for o, split in zip(final.outputs, parsed):
            split.step(o.text, finished=True)
        choices = [{"index": o.index, "message": chat_message(split),
                    "logprobs": _chat_logprobs(tokenizer, o.logprobs), "finish_reason": finish_reason(o.finish_reason,
                                                                                                      split)}
                   for o, split in zip(final.outputs, parsed)]
        return {**meta, "object": "chat.completion", "choices": choices,
                "usage": _usage(len(prompt), final.num_generated_tokens)}
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    async def events():
        try:
            chunk = {**meta, "object": "chat.completion.chunk"}
            for i in range(body.n):
                yield sse_event({**chunk, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                                       "logprobs": None, "finish_reason": None}]})
            generated = 0
            parsed = [plan.output() for _ in range(body.n)]
            async for output in outputs:
                generated = output.num_generated_tokens
                for o in output.outputs:
                    split = parsed[o.index]
                    delta = chat_delta(split.step(o.delta_text, o.finished), split)
                    if not delta and not o.finished and not (o.logprobs is not None and o.delta_logprobs):
                        continue
                    choice = {"index": o.index, "delta": delta,
                              "logprobs": _chat_logprobs(tokenizer, o.delta_logprobs if o.logprobs is not None
                                                         else None),
                              "finish_reason": finish_reason(o.finish_reason, split) if o.finished else None}
                    yield sse_event({**chunk, "choices": [choice]})
            if include_usage:
                yield sse_event({**chunk, "choices": [], "usage": _usage(len(prompt), generated)})
            yield SSE_DONE
        except EngineStepError as error:
            yield sse_event(stream_error_event(request.url.path, str(error)))
        finally:
            state.release(body.n)

    return StreamingResponse(ending_in_error_event(events(), request.url.path), media_type="text/event-stream",
                             headers=SSE_HEADERS)


def _completion_prompt_ids(state: ServerState, prompt) -> list[int]:
    if isinstance(prompt, str):
        return state.encode(prompt)
    return list(prompt)


def _prepare_completions(state: ServerState, body: CompletionRequest, adapter: str | None):
    prompts = [_completion_prompt_ids(state, p) for p in body.prompts()]
    requested = replace(body.sampling_params(body.max_tokens, body.logprobs, state.vocab_size), adapter=adapter)
    params = [state.validate(p, requested) for p in prompts]
    echoes = [state.tokenizer.decode(p) if body.echo else "" for p in prompts]
    return prompts, params, echoes


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request):
    state = _state(request)
    adapter = state.check_model(body.model)
    if body.suffix:
        raise APIError(422, "suffix is not supported", param="suffix")
    if body.best_of is not None and body.best_of != body.n:
        raise APIError(422, f"best_of={body.best_of} with n={body.n} is not supported: tokenmill returns every "
                            "candidate it generates (best_of must equal n)", param="best_of")
    sequences = state.check_sequences(len(body.prompts()), body.n, param="prompt")  # before encoding any
    prompts, params, echoes = await run_in_threadpool(_prepare_completions, state, body, adapter)  # CPU work
    tokenizer = state.tokenizer
    meta = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()),
            "model": adapter or state.settings.model_name, "object": "text_completion"}
    prompt_tokens = sum(len(p) for p in prompts)
    streams = [state.stream(p, q) for p, q in zip(prompts, params)]
    state.acquire(sequences)
    if not body.stream:
        try:
            finals: list[RequestOutput] = await asyncio.gather(*(final_output(request, s) for s in streams))
        finally:
            state.release(sequences)
        choices = []
        for k, final in enumerate(finals):
            for o in final.outputs:
                choices.append({"index": k * body.n + o.index, "text": echoes[k] + o.text,
                                "logprobs": _completion_logprobs(tokenizer, o.logprobs, len(echoes[k])),
                                "finish_reason": _finish_reason(o)})
        generated = sum(f.num_generated_tokens for f in finals)
        return {**meta, "choices": choices, "usage": _usage(prompt_tokens, generated)}
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    async def events():
        try:
            generated = [0] * len(streams)
            sent_echo = set()
            offsets = {}
            async for k, output in merge(streams):
                generated[k] = output.num_generated_tokens
                for o in output.outputs:
                    index = k * body.n + o.index
                    text = o.delta_text
                    if index not in sent_echo:
                        sent_echo.add(index)
                        text = echoes[k] + text
                    if not text and not o.finished:
                        continue
                    logprobs = None
                    if o.logprobs is not None:
                        logprobs = _completion_logprobs(tokenizer, o.delta_logprobs, offsets.get(index, 0))
                    offsets[index] = offsets.get(index, 0) + len(text)
                    yield sse_event({**meta, "choices": [{"index": index, "text": text, "logprobs": logprobs,
                                                          "finish_reason": _finish_reason(o) if o.finished
                                                          else None}]})
            if include_usage:
                yield sse_event({**meta, "choices": [], "usage": _usage(prompt_tokens, sum(generated))})
            yield SSE_DONE
        except EngineStepError as error:
            yield sse_event(stream_error_event(request.url.path, str(error)))
        finally:
            state.release(sequences)

    return StreamingResponse(ending_in_error_event(events(), request.url.path), media_type="text/event-stream",
                             headers=SSE_HEADERS)


@router.get("/v1/models")
async def list_models(request: Request):
    state = _state(request)
    return {"object": "list", "data": [{"id": state.settings.model_name, "object": "model", "created": 0,
                                        "owned_by": "tokenmill",
                                        "max_model_len": state.max_total_tokens}, *adapter_models(state)]}
