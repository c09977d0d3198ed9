"""Offline batch use: `LLM(model).generate(prompts, SamplingParams(...))` runs every prompt through the engine;
`LLM.chat(messages)` renders conversations through the chat template first."""

from __future__ import annotations

import dataclasses
import itertools

from .adapters import LoRARequest, adapter_of_request
from .engine import EngineConfig, LLMEngine
from .outputs import RequestOutput
from .sampling_params import SamplingParams
from .spec_params import speculative_config


def speculative_settings(engine_kwargs: dict) -> dict:
    """vLLM's `speculative_config={"model": source, "num_speculative_tokens": k, ...}` as the engine's
    settings: `draft_model` (a source or a loaded model) and the default `speculative` (method "draft_model"
    when a model is named, else the dict's own)."""
    settings = dict(engine_kwargs)
    given = settings.pop("speculative_config", None)
    if given is not None:
        if not isinstance(given, dict):
            raise ValueError(f"speculative_config must be a dict, got {type(given).__name__}")
        given = dict(given)
        if "model" in given:
            settings["draft_model"] = given.pop("model")
            given.setdefault("method", "draft_model")
        settings["speculative"] = given
    if "speculative" in settings:  # a SpeculativeConfig, or its dict / int spelling as a request's
        settings["speculative"] = speculative_config(settings["speculative"])
    return settings


class LLM:
    """`model`: a loaded CausalLM or anything AutoModelForCausalLM.from_pretrained accepts (folder, .gguf, hub id)."""

    def __init__(self, model, tokenizer=None, *, dtype=None, device=None, gguf_file: str | None = None,
                 skip_tokenizer_init: bool = False, tensor_parallel_size: int = 1,
                 threads_per_rank: int | None = None, **engine_kwargs):
        """tensor_parallel_size=N (a source, not a loaded model): N ranks each hold a share of the weights; the
        engine runs here as rank 0 and N-1 spawned processes follow its steps (engine/parallel_runner.py)."""
        if isinstance(model, str) or hasattr(model, "__fspath__"):
            from ..auto import AutoModelForCausalLM, AutoTokenizer

            source = model
            load_kwargs = dict(dtype=dtype, device=device, gguf_file=gguf_file)
            parallel = parallel_load_kwargs(source, load_kwargs, tensor_parallel_size, threads_per_rank)
            from .parallel_runner import stop_ranks

            try:
                model = AutoModelForCausalLM.from_pretrained(source, progress=False, **load_kwargs, **parallel)
            except BaseException:
                if parallel:
                    stop_ranks(parallel["tensor_parallel"])
                raise
            if parallel:
                model.execution_policy = model.execution_policy.with_threads(parallel["tensor_parallel"].threads)
            if tokenizer is None and not skip_tokenizer_init:
                tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file)
        self.model = model
        self.tokenizer = tokenizer
        if tensor_parallel_size != 1 and model.execution_policy.parallel != "tensor":
            raise ValueError("tensor_parallel_size needs a model source (folder, .gguf, hub id), not a loaded model")
        engine_kwargs = speculative_settings(engine_kwargs)
        self.engine = LLMEngine(model, tokenizer, EngineConfig(**engine_kwargs))
        self._ids = itertools.count()

    def shutdown(self) -> None:
        """Tensor parallelism: stop the follower ranks and leave the group (nothing to do for one process)."""
        if self.model.execution_policy.parallel == "tensor":
            from .parallel_runner import stop_ranks

            stop_ranks(self.model.execution_policy.collectives, self.engine.runner)

    def get_tokenizer(self):
        """The tokenizer prompts are encoded with (None with skip_tokenizer_init)."""
        return self.tokenizer

    def _prompt_ids(self, prompt) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("text prompts need a tokenizer; pass token ids or LLM(model, tokenizer)")
            return list(self.tokenizer.encode(prompt))
        if isinstance(prompt, dict) and "prompt_token_ids" in prompt:
            return list(prompt["prompt_token_ids"])
        if isinstance(prompt, dict) and isinstance(prompt.get("prompt"), str):
            return self._prompt_ids(prompt["prompt"])
        if isinstance(prompt, (list, tuple)) and all(isinstance(t, int) for t in prompt):
            return list(prompt)
        raise TypeError(f"a prompt is a string, a list of token ids, {{'prompt': text}} or "
                        f"{{'prompt_token_ids': [...]}}, got {type(prompt).__name__}")

    @staticmethod
    def _prompt_text(prompt) -> str | None:
        if isinstance(prompt, str):
            return prompt
        if isinstance(prompt, dict) and isinstance(prompt.get("prompt"), str):
            return prompt["prompt"]
        return None

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
            order.append((request_id, self._prompt_text(prompt)))
        finished: dict[str, RequestOutput] = {}
        while self.engine.has_unfinished_requests():
            for output in self.engine.step():
                if output.finished:
                    finished[output.request_id] = output
        results = []
        for request_id, text in order:
            finished[request_id].prompt = text
            results.append(finished[request_id])
        return results

    def chat(self, messages, sampling_params: SamplingParams | list[SamplingParams] | None = None,
             use_tqdm: bool = False, *, chat_template: str | None = None, add_generation_prompt: bool = True,
             continue_final_message: bool = False, tools: list | None = None,
             chat_template_kwargs: dict | None = None) -> list[RequestOutput]:
        """One conversation (a list of {"role", "content"} messages) or a list of them, each rendered by the chat
        template; one RequestOutput per conversation, its `prompt` the rendered text."""
        if self.tokenizer is None:
            raise ValueError("LLM.chat needs a tokenizer with a chat template; this LLM was made without one")
        conversations = [messages] if _is_conversation(messages) else list(messages)
        if not conversations or not all(_is_conversation(c) for c in conversations):
            raise TypeError("messages must be a conversation (a non-empty list of {'role': ..., 'content': ...} "
                            "dicts) or a list of conversations")
        if continue_final_message:
            add_generation_prompt = False  # continuing the last message opens no new turn (vLLM does the same)
        texts = [self.tokenizer.apply_chat_template(
            conversation, tokenize=False, chat_template=chat_template, add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message, tools=tools, **(chat_template_kwargs or {}))
            for conversation in conversations]
        # the rendered text already holds the template's special tokens: encode it without adding more
        prompts = [{"prompt_token_ids": list(self.tokenizer.encode(text, add_special_tokens=False))}
                   for text in texts]
        outputs = self.generate(prompts, sampling_params, use_tqdm=use_tqdm)
        for output, text in zip(outputs, texts):
            output.prompt = text
        return outputs


def parallel_load_kwargs(source, load_kwargs: dict, size: int, threads: int | None) -> dict:
    """{"tensor_parallel": rank 0's group} once the follower ranks are started, or {} for one process."""
    if size == 1:
        return {}
    if size < 1:
        raise ValueError(f"tensor_parallel_size must be at least 1, got {size}")
    from .parallel_runner import start_engine_ranks  # spawns processes: imported only when asked for

    collectives = start_engine_ranks(size, source, load_kwargs, threads)
    return {"tensor_parallel": collectives}


def _is_conversation(value) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) > 0
            and all(isinstance(message, dict) and "role" in message for message in value))
