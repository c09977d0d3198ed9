"""Offline batch use: `LLM(model).generate(prompts, SamplingParams(...))` runs every prompt through the engine."""

from __future__ import annotations

import dataclasses
import itertools

from .adapters import LoRARequest, adapter_of_request
from .engine import EngineConfig, LLMEngine
from .outputs import RequestOutput
from .sampling_params import SamplingParams


class LLM:
    """`model`: a loaded CausalLM or anything AutoModelForCausalLM.from_pretrained accepts (folder, .gguf, hub id)."""

    def __init__(self, model, tokenizer=None, *, dtype=None, device=None, gguf_file: str | None = None,
                 skip_tokenizer_init: bool = False, **engine_kwargs):
        if isinstance(model, str) or hasattr(model, "__fspath__"):
            from ..auto import AutoModelForCausalLM, AutoTokenizer

            source = model
            model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, device=device, gguf_file=gguf_file,
                                                         progress=False)
            if tokenizer is None and not skip_tokenizer_init:
                tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file)
        self.model = model
        self.tokenizer = tokenizer
        self.engine = LLMEngine(model, tokenizer, EngineConfig(**engine_kwargs))
        self._ids = itertools.count()

    def _prompt_ids(self, prompt) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("text prompts need a tokenizer; pass token ids or LLM(model, tokenizer)")
            return list(self.tokenizer.encode(prompt))
        if isinstance(prompt, dict) and "prompt_token_ids" in prompt:
            return list(prompt["prompt_token_ids"])
        if isinstance(prompt, (list, tuple)) and all(isinstance(t, int) for t in prompt):
            return list(prompt)
        raise TypeError(f"a prompt is a string, a list of token ids or {{'prompt_token_ids': [...]}}, "
                        f"got {type(prompt).__name__}")

    def generate(self, prompts, sampling_params: SamplingParams | list[SamplingParams] | None = None,
                 use_tqdm: bool = False, lora_request: LoRARequest | None = None) -> list[RequestOutput]:
        """One RequestOutput per prompt, in input order; `lora_request` runs them all through that adapter."""
        if isinstance(prompts, (str, dict)) or (isinstance(prompts, list) and prompts
                                                 and isinstance(prompts[0], int)):
            prompts = [prompts]
        params = sampling_params or SamplingParams()
        params_list = params if isinstance(params, list) else [params] * len(prompts)
        if len(params_list) != len(prompts):
            raise ValueError(f"{len(params_list)} SamplingParams for {len(prompts)} prompts")
        if lora_request is not None:
            adapter = adapter_of_request(self.engine, lora_request)
            params_list = [dataclasses.replace(p, adapter=adapter) for p in params_list]
        order = []
        for prompt, prompt_params in zip(prompts, params_list):
            request_id = f"offline-{next(self._ids)}"
            self.engine.add_request(request_id, self._prompt_ids(prompt), prompt_params)
            order.append(request_id)
        finished: dict[str, RequestOutput] = {}
        while self.engine.has_unfinished_requests():
            for output in self.engine.step():
                if output.finished:
                    finished[output.request_id] = output
        return [finished[request_id] for request_id in order]
