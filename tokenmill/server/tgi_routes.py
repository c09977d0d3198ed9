"""TGI-compatible routes: /generate, /generate_stream, / (either, by `stream`), /info, /health, /tokenize;
also /detokenize and /version (vLLM's shapes)."""

from __future__ import annotations

import dataclasses

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from ..version import __version__
from ..engine.outputs import CompletionOutput, RequestOutput
from ..engine.async_engine import EngineStepError
from .errors import APIError, stream_error_event
from .sse import SSE_HEADERS, ending_in_error_event, sse_event
from .state import ServerState, final_output
from .strict_json import StrictJSONRoute
from .tgi_protocol import (MAX_BEST_OF, MAX_STOP_SEQUENCES, MAX_TOP_N_TOKENS, DetokenizeRequest, GenerateRequest,
                           sampling_params,
                           validate_parameters)

router = APIRouter(route_class=StrictJSONRoute)


def _state(request: Request) -> ServerState:
    return request.app.state.tokenmill


def _finish_reason(output: CompletionOutput) -> str:
    if output.finish_reason == "length":
        return "length"
    if output.finish_reason == "stop" and output.stop_reason is not None:
        return "stop_sequence"
    return "eos_token"


class _TokenView:
    """Token ids → TGI token objects {id, text, logprob, special}."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.special = set(getattr(tokenizer, "all_special_ids", []) or [])

    def token(self, token_id: int, logprob: float | None, text: str | None = None) -> dict:
        if text is None:
            text = self.tokenizer.decode([token_id])
        return {"id": token_id, "text": text, "logprob": logprob, "special": token_id in self.special}

    def tokens(self, output: CompletionOutput) -> list[dict]:
        return [self.token(e.token_id, e.logprob) for e in output.logprobs or []]

    def top_tokens(self, entries) -> list[list[dict]]:
        return [[self.token(t, lp) for t, lp in e.top] for e in entries]


def _prepare(state: ServerState, body: GenerateRequest):
    p = body.parameters
    validate_parameters(p)
    if not body.inputs:
        raise APIError(422, "`inputs` cannot be empty")
    prompt = list(state.tokenizer.encode(body.inputs))
    if p.truncate is not None and len(prompt) > p.truncate:
        prompt = prompt[-p.truncate:]  # TGI keeps the end of the input
    adapter = state.check_model(p.adapter_id)  # a loaded LoRA adapter's name, or the base model's (or none)
    return prompt, state.validate(prompt, dataclasses.replace(sampling_params(p, p.max_new_tokens), adapter=adapter))


def _best(final: RequestOutput) -> CompletionOutput:
    """best_of: the choice with the highest total logprob."""
    return max(final.outputs, key=lambda o: sum(e.logprob for e in o.logprobs or []))


def _details(view: _TokenView, body: GenerateRequest, final: RequestOutput, best: CompletionOutput,
             prompt: list[int]) -> dict:
    p = body.parameters
    details = {"finish_reason": _finish_reason(best), "generated_tokens": len(best.token_ids), "seed": best.seed,
               "prefill": [], "tokens": view.tokens(best)}
    if p.decoder_input_details and final.prompt_logprobs is not None:
        details["prefill"] = [view.token(prompt[i], None if e is None else e.logprob)
                              for i, e in enumerate(final.prompt_logprobs[:len(prompt)])]
    if p.top_n_tokens:
        details["top_tokens"] = view.top_tokens(best.logprobs or [])
    if len(final.outputs) > 1:
        details["best_of_sequences"] = [
            {"generated_text": o.text, "finish_reason": _finish_reason(o), "generated_tokens": len(o.token_ids),
             "seed": o.seed, "prefill": details["prefill"], "tokens": view.tokens(o)}
            for o in final.outputs if o is not best]
    return details


async def _generate(state: ServerState, body: GenerateRequest, request: Request):
    prompt, params = await run_in_threadpool(_prepare, state, body)  # tokenizing and grammar: CPU work
    outputs = state.stream(prompt, params)
    state.acquire(params.n)
    try:
        final = await final_output(request, outputs)
    finally:
        state.release(params.n)
    best = _best(final)
    if any(o.finish_reason == "error" for o in final.outputs):
        raise APIError(424, "generation failed")
    text = (body.inputs if body.parameters.return_full_text else "") + best.text
    result = {"generated_text": text}
    if body.parameters.details:
        result["details"] = _details(_TokenView(state.tokenizer), body, final, best, prompt)
    return result


async def _generate_stream(state: ServerState, body: GenerateRequest):
    if (body.parameters.best_of or 1) > 1:
        raise APIError(422, "`best_of` != 1 is not allowed for this endpoint")
    prompt, params = await run_in_threadpool(_prepare, state, body)  # tokenizing and grammar: CPU work
    outputs = state.stream(prompt, params)
    state.acquire(params.n)
    view = _TokenView(state.tokenizer)
    details_on = body.parameters.details
    prefix = body.inputs if body.parameters.return_full_text else ""

    async def events():
        try:
            index = 0
            async for output in outputs:
                o = output.outputs[0]
                for k, token_id in enumerate(o.delta_token_ids):
                    last = o.finished and k == len(o.delta_token_ids) - 1
                    entry = o.delta_logprobs[k] if k < len(o.delta_logprobs) else None
                    index += 1
                    event = {"index": index,
                             "token": view.token(token_id, entry.logprob if entry else None,
                                                 o.delta_text if k == len(o.delta_token_ids) - 1 else ""),
                             "top_tokens": view.top_tokens([entry])[0] if entry and body.parameters.top_n_tokens
                             else None,
                             "generated_text": prefix + o.text if last else None, "details": None}
                    if last and details_on:
                        event["details"] = {"finish_reason": _finish_reason(o), "generated_tokens": len(o.token_ids),
                                            "seed": o.seed, "input_length": len(prompt)}
                    yield sse_event(event)
        except EngineStepError as error:
            yield sse_event(stream_error_event("/generate_stream", str(error)))
        finally:
            state.release(params.n)

    return StreamingResponse(ending_in_error_event(events(), "/generate_stream"), media_type="text/event-stream",
                             headers=SSE_HEADERS)


@router.post("/generate")
async def generate(body: GenerateRequest, request: Request):
    return await _generate(_state(request), body, request)


@router.post("/generate_stream")
async def generate_stream(body: GenerateRequest, request: Request):
    return await _generate_stream(_state(request), body)


@router.post("/")
async def compat_generate(body: GenerateRequest, request: Request):
    state = _state(request)
    if body.stream:
        return await _generate_stream(state, body)
    return [await _generate(state, body, request)]


@router.get("/info")
async def info(request: Request):
    state = _state(request)
    model = state.engine.model_info()
    return {
        "model_id": state.settings.model_name, "model_sha": None, "model_dtype": model.dtype,
        "model_device_type": model.device_type, "model_pipeline_tag": "text-generation",
        "max_concurrent_requests": state.settings.max_concurrent_requests, "max_best_of": MAX_BEST_OF,
        "max_stop_sequences": MAX_STOP_SEQUENCES, "max_input_tokens": state.max_input_tokens,
        "max_total_tokens": state.max_total_tokens, "max_top_n_tokens": MAX_TOP_N_TOKENS,
        "validation_workers": 1, "max_client_batch_size": 1, "router": "tokenmill", "version": __version__,
        "sha": None, "docker_label": None,
    }


@router.get("/health")
async def health(request: Request):
    _state(request).check_healthy()
    return Response(status_code=200)


@router.post("/tokenize")
async def tokenize(body: GenerateRequest, request: Request):
    """TGI's token list; start/stop are character offsets into `inputs` and text is that span (the tokens of
    one character split into bytes share its span)."""
    state = _state(request)
    validate_parameters(body.parameters)  # unused here, but a request TGI refuses is refused here too
    if not body.inputs:
        raise APIError(422, "`inputs` cannot be empty")
    state.acquire()  # admitted like a generation request: it is CPU work of the same size as a prompt's
    try:
        return await run_in_threadpool(_token_spans, state, body.inputs)
    finally:
        state.release()


def _token_spans(state: ServerState, inputs: str) -> list[dict]:
    encoding = state.tokenizer(inputs, return_offsets_mapping=True)
    ids, offsets = encoding["input_ids"], encoding["offset_mapping"]
    if len(ids) > state.max_input_tokens:  # its answer grows ~50 bytes a token: bounded like a prompt
        raise APIError(422, f"the input has {len(ids)} tokens, more than the limit of {state.max_input_tokens} "
                            "input tokens")
    return [{"id": token_id, "text": inputs[start:stop], "start": start, "stop": stop}
            for token_id, (start, stop) in zip(ids, offsets)]


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, request: Request):
    """Token ids → text (vLLM's shape: {"tokens": [...]} → {"prompt": "..."}): at most max_total_tokens ids (the
    longest sequence this server makes), admitted like /tokenize and decoded off the event loop."""
    state = _state(request)
    limit = state.max_total_tokens
    if len(body.tokens) > limit:
        raise APIError(422, f"the request has {len(body.tokens)} token ids, more than the limit of {limit} (the "
                            "longest sequence this server makes)", param="tokens")
    state.acquire()
    try:
        return await run_in_threadpool(_decoded, state, body.tokens)
    finally:
        state.release()


def _decoded(state: ServerState, token_ids: list[int]) -> dict:
    vocab_size = state.vocab_size
    bad = [token_id for token_id in token_ids if not 0 <= token_id < vocab_size]
    if bad:
        raise APIError(422, f"token ids {bad[:5]} are outside the vocabulary [0, {vocab_size})", param="tokens")
    return {"prompt": state.tokenizer.decode(token_ids)}


@router.get("/version")
async def version():
    return {"version": __version__}
