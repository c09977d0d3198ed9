"""The synchronous engine: add requests, call step() repeatedly, read per-request outputs.

One step = schedule (continuous batching) → one model forward over every scheduled chunk → sample the
sequences whose tokens are all computed → stop checks → outputs. Requests join and leave at any step.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import torch

from ..cache.paged import PagedKVPool
from ..generation.constrained import StructuredOutputProcessor
from ..kernels.system import available_memory
from .adapters import check_adapter, load_adapter, prefix_root, unload_adapter
from .block_manager import BlockManager
from .detokenize import SequenceText
from .draft_model import DraftModelProposer, check_draft_model
from .limits import RequestLimits, check_per_step_costs, check_request
from .parallel_runner import make_runner
from .outputs import CompletionOutput, RequestOutput
from .sampler import NO_TOKEN, choice_seed, prompt_logprobs, sample
from .sampling_params import SamplingParams
from .scheduler import Scheduler
from .sequence import Sequence, SequenceStatus
from .spec_params import SpeculativeConfig
from .speculation import Speculator

DEFAULT_KV_MEMORY_CAP = 2 << 30


@dataclass
class EngineConfig:
    block_size: int = 16
    num_blocks: int | None = None  # None: from kv_cache_memory, else from available memory
    kv_cache_memory: int | None = None  # bytes
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 512
    max_model_len: int | None = None  # None: the model's context length
    enable_prefix_caching: bool = True
    speculative: SpeculativeConfig | None = None  # the default for requests that set no `speculative` of their own
    # drafts run only while a step's positions stay within this (speculation.Speculator): a busy batch skips them
    speculative_step_tokens: int = 8  # measured: a 16-position step already cost 2.6x an 8-row one (docs/decoding.md)
    # a model with the target's tokenizer (a loaded CausalLM, or a source loaded like the target) drafting for
    # speculative method "draft_model"
    draft_model: object | None = None
    enforce_eager: bool = False  # vLLM's switch: no CUDA graphs for decode steps (the policy captures them on CUDA)


def draft_proposer(draft_model, target) -> DraftModelProposer | None:
    if draft_model is None:
        return None
    if isinstance(draft_model, str) or hasattr(draft_model, "__fspath__"):
        from ..auto import AutoModelForCausalLM

        draft_model = AutoModelForCausalLM.from_pretrained(draft_model, progress=False, dtype=target.dtype,
                                                           device=target.device)
    check_draft_model(draft_model, target)
    return DraftModelProposer(draft_model)


def _available_memory() -> int:
    available = available_memory()
    return 4 << 30 if available is None else available


def default_kv_memory() -> int:
    """The KV pool's budget when none is given: a fifth of available memory, capped."""
    return min(_available_memory() // 5, DEFAULT_KV_MEMORY_CAP)


def pool_blocks(model, config: EngineConfig) -> int:
    """Blocks from the explicit count, else from a memory budget (a fifth of available memory, capped)."""
    if config.num_blocks is not None:
        return config.num_blocks
    mc = model.config
    per_token = PagedKVPool.bytes_per_token(mc.num_hidden_layers, mc.num_key_value_heads, mc.head_dim, model.dtype)
    budget = config.kv_cache_memory or default_kv_memory()
    return max(1, budget // (per_token * config.block_size))


@dataclass
class _Request:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    seqs: list[Sequence]
    texts: list[SequenceText | None]
    reported_tokens: list[int]
    reported_logprobs: list[int]
    seeds: list[int | None]
    constraints: list[StructuredOutputProcessor] | None = None  # one per choice: each keeps its own state


class LLMEngine:
    def __init__(self, model, tokenizer=None, config: EngineConfig | None = None,
                 eos_token_ids: list[int] | None = None):
        self.config = config or EngineConfig()
        self.tokenizer = tokenizer
        self.max_model_len = self.config.max_model_len or model.config.max_position_embeddings
        self.vocab_size = model.config.vocab_size
        self.eos_token_ids = self._eos_ids(model, tokenizer) if eos_token_ids is None else list(eos_token_ids)
        num_blocks = pool_blocks(model, self.config)
        self.blocks = BlockManager(num_blocks, self.config.block_size, self.config.enable_prefix_caching)
        self.scheduler = Scheduler(self.blocks, self.config.max_num_seqs, self.config.max_num_batched_tokens)
        # tensor-parallel rank 0 or plain
        self.runner = make_runner(model, num_blocks, self.config.block_size, self.config.enforce_eager)
        self.capacity_tokens = num_blocks * self.config.block_size
        self.limits = RequestLimits.of_engine(self.max_model_len, self.capacity_tokens)
        self._requests: dict[str, _Request] = {}
        self._pending_final: list[RequestOutput] = []
        self.speculator = Speculator(self.config.speculative, self.config.speculative_step_tokens,
                                     draft_proposer(self.config.draft_model, model))
        self.tokens_in = 0
        self.tokens_out = 0
        self.last_step_tokens = 0  # tokens computed by the latest step (prompt chunks + decodes)

    @staticmethod
    def _eos_ids(model, tokenizer) -> list[int]:
        ids = []
        generation = getattr(model, "generation_config", None)
        value = getattr(generation, "eos_token_id", None) if generation is not None else None
        if value is None:
            value = getattr(model.config, "eos_token_id", None)
        ids += value if isinstance(value, (list, tuple)) else ([] if value is None else [value])
        token = getattr(tokenizer, "eos_token_id", None) if tokenizer is not None else None
        if token is not None and token not in ids:
            ids.append(token)
        return [int(i) for i in ids]

    # ---- requests ----
    def validate(self, prompt_token_ids: list[int], params: SamplingParams,
                 limits: RequestLimits | None = None) -> int:
        """Check a request against the model and `limits` (default: the engine's own); returns its effective
        max_tokens. ValueError (RequestLimitError for a limit) naming the problem otherwise."""
        bad = [t for t in prompt_token_ids if not 0 <= int(t) < self.vocab_size]
        if bad:
            raise ValueError(f"prompt token ids out of range [0, {self.vocab_size}): {bad[:5]}")
        max_tokens = check_request(len(prompt_token_ids), params.max_tokens, limits or self.limits)
        check_per_step_costs(params.stop, params.stop_token_ids, params.logit_bias)
        check_adapter(self.runner.model, params.adapter)
        self.speculator.check(params.speculative)
        if params.structured_output is not None and (self.tokenizer is None or not self.eos_token_ids):
            raise ValueError("structured output needs the engine to have a tokenizer and the model's eos token id")
        return max_tokens

    def _constraints(self, prompt_len: int, params: SamplingParams) -> list[StructuredOutputProcessor] | None:
        if params.structured_output is None:
            return None
        kind, value = params.structured_output
        return [StructuredOutputProcessor.from_spec(kind, value, self.tokenizer, self.vocab_size, self.eos_token_ids,
                                                    prompt_length=prompt_len) for _ in range(params.n)]

    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams) -> None:
        if request_id in self._requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        prompt_token_ids = [int(t) for t in prompt_token_ids]
        max_tokens = self.validate(prompt_token_ids, params)
        if params.max_tokens != max_tokens:
            params = SamplingParams(**{**params.__dict__, "max_tokens": max_tokens})
        constraints = self._constraints(len(prompt_token_ids), params)  # before any state: a bad spec raises here
        request = self._new_request(request_id, prompt_token_ids, params, constraints)
        # only now, with nothing left that can fail, does the request enter the engine's state
        for seq in request.seqs:
            self.scheduler.add(seq)
        self._requests[request_id] = request
        self.tokens_in += len(prompt_token_ids)

    def _new_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
                     constraints) -> _Request:
        """A request's sequences, seeded generators and stop-string state, touching no engine state."""
        seqs, texts, seeds = [], [], []
        for index in range(params.n):
            seq = Sequence(request_id, index, list(prompt_token_ids), params,
                           prefix_root=prefix_root(self.runner.model, params.adapter))
            seed = None
            if params.sampled:
                seed = choice_seed(params.seed, index) if params.seed is not None else random.getrandbits(63)
                seq.generator = torch.Generator().manual_seed(seed)
            if params.prompt_logprobs is not None:
                seq.prompt_logprobs = [None]
            seqs.append(seq)
            seeds.append(seed)
            texts.append(SequenceText(self.tokenizer, params.stop, params.skip_special_tokens,
                                      params.include_stop_str_in_output) if self.tokenizer is not None else None)
        return _Request(request_id, prompt_token_ids, params, seqs, texts, [0] * params.n, [0] * params.n, seeds,
                        constraints)

    def load_adapter(self, name: str, path) -> None:
        """Load a PEFT LoRA folder as `name` (call between steps: the async engine runs it on its thread)."""
        load_adapter(self.runner.model, name, path)

    def unload_adapter(self, name: str) -> None:
        in_use = sum(1 for request in self._requests.values() if request.params.adapter == name)
        unload_adapter(self.runner.model, name, in_use)

    def abort_request(self, request_id: str) -> None:
        request = self._requests.get(request_id)
        if request is None:
            return
        for seq in request.seqs:
            self.scheduler.finish(seq, "abort")
        self._pending_final.append(self._report(request))

    def fail_request(self, request_id: str, message: str) -> None:
        """End one request with an error (its sequences finished, blocks freed); reported at the next step."""
        request = self._requests.get(request_id)
        if request is None:
            return
        for seq in request.seqs:
            seq.error = message
            self.scheduler.finish(seq, "error")
        self._pending_final.append(self._report(request))

    def abort_all(self) -> list[str]:
        """Abort every request without reporting (after a failed step); returns their ids. Any sequence left in
        the scheduler without a request is finished too, so every block goes back to the pool."""
        request_ids = list(self._requests)
        for request_id in request_ids:
            self.abort_request(request_id)
        for seq in list(self.scheduler.running) + list(self.scheduler.waiting):
            self.scheduler.finish(seq, "abort")
        self._pending_final.clear()
        return request_ids

    def has_unfinished_requests(self) -> bool:
        return bool(self._requests) or bool(self._pending_final)

    # ---- one step ----
    def step(self) -> list[RequestOutput]:
        reports, self._pending_final = self._pending_final, []
        self.speculator.propose(self.scheduler.running, self.max_model_len)
        plan = self.scheduler.schedule()
        self.last_step_tokens = plan.num_tokens
        if not plan.chunks:
            return reports
        all_rows = {i for i, chunk in enumerate(plan.chunks)
                    if chunk.seq.prompt_logprobs is not None and chunk.start < len(chunk.seq.prompt_token_ids)}
        drafted = {i for i, chunk in enumerate(plan.chunks) if chunk.seq.draft_token_ids}
        last_logits, every_position = self.runner.run(plan.chunks, all_rows)
        ready, rows = [], []
        touched: dict[str, _Request] = {}
        for i, chunk in enumerate(plan.chunks):
            if i in drafted:
                self._verify_drafts(chunk, every_position[i], touched)
                continue
            self.scheduler.record_computed(chunk)
            if i in all_rows:
                self._record_prompt_logprobs(chunk, every_position[i])
            if chunk.seq.request_id not in self._requests:  # nothing will read it: give its blocks back
                self.scheduler.finish(chunk.seq, "abort")
            elif chunk.completes_sequence:
                ready.append(chunk.seq)
                rows.append(i)
        if ready:
            logits = last_logits if len(rows) == len(plan.chunks) else last_logits[torch.tensor(rows)]
            ops = self.runner.model.execution_policy.ops  # the model's kernel set takes the greedy argmax too
            tokens = sample(logits, ready, self.eos_token_ids, ops, self._ready_constraints(ready))
            for seq, token in zip(ready, tokens):
                if token == NO_TOKEN:
                    self.fail_request(seq.request_id, seq.error or _not_finite_message(seq))
            for seq, token in zip(ready, tokens):
                request = self._requests.get(seq.request_id)
                if request is None or seq.is_finished:
                    continue  # its request failed in this step
                try:
                    self._append_token(seq, token)
                except Exception as error:  # noqa: BLE001 - one request's text or grammar must not fail the step
                    self.fail_request(seq.request_id, f"generation failed for this request: {error!r}")
                    continue
                touched[seq.request_id] = request
        for request in touched.values():
            if request.request_id in self._requests:
                reports.append(self._report(request))
        return reports

    def _verify_drafts(self, chunk, logits: torch.Tensor, touched: dict[str, _Request]) -> None:
        """Tokens from a chunk that ran drafts (speculation.py), picked by the same sampler as any other row."""
        seq, request = chunk.seq, self._requests.get(chunk.seq.request_id)
        if request is None:  # aborted during the step: nothing will read it
            seq.draft_token_ids = []
            self.scheduler.finish(seq, "abort")
            return
        constraint = request.constraints[seq.index] if request.constraints else None
        ops = self.runner.model.execution_policy.ops

        def choose(rows, seqs):
            return sample(rows, seqs, self.eos_token_ids, ops, [constraint] * len(seqs) if constraint else None)

        try:
            usable = self.speculator.verify(chunk, logits, choose, lambda token: self._append_token(seq, token),
                                            self.scheduler, constraint is not None)
        except Exception as error:  # noqa: BLE001 - one request's text or grammar must not fail the step
            self.fail_request(seq.request_id, f"generation failed for this request: {error!r}")
            return
        if not usable:
            self.fail_request(seq.request_id, seq.error or _not_finite_message(seq))
        touched[seq.request_id] = request

    def _ready_constraints(self, ready: list[Sequence]) -> list[StructuredOutputProcessor | None] | None:
        constraints = [self._requests[seq.request_id].constraints for seq in ready]
        if not any(constraints):
            return None
        return [c[seq.index] if c else None for c, seq in zip(constraints, ready)]

    def _record_prompt_logprobs(self, chunk, logits: torch.Tensor) -> None:
        seq = chunk.seq
        entries = prompt_logprobs(logits, seq, chunk.start, seq.params.prompt_logprobs)
        skip = len(seq.prompt_logprobs) - (chunk.start + 1)  # positions already recorded (recompute)
        if skip >= 0:
            seq.prompt_logprobs.extend(entries[skip:])

    def _append_token(self, seq: Sequence, token: int) -> None:
        request = self._requests[seq.request_id]
        seq.output_token_ids.append(token)
        self.tokens_out += 1
        if seq.first_token_time is None:
            seq.first_token_time = time.monotonic()
        params = seq.params
        text = request.texts[seq.index]
        reason, stop_reason = None, None
        if token in self.eos_token_ids and not params.ignore_eos:
            reason = "stop"
        elif token in params.stop_token_ids:
            reason, stop_reason = "stop", token
        if reason is None and text is not None:
            text.add(seq.output_token_ids)
            if text.stopped_by is not None:
                reason, stop_reason = "stop", text.stopped_by
        if reason is None and (len(seq.output_token_ids) >= params.max_tokens
                               or seq.num_tokens >= self.max_model_len):
            reason = "length"
        if reason is not None:
            seq.stop_text = stop_reason
            self.scheduler.finish(seq, reason)

    # ---- outputs ----
    def _report(self, request: _Request) -> RequestOutput:
        outputs = []
        for i, seq in enumerate(request.seqs):
            text = request.texts[i]
            finished = seq.status is SequenceStatus.FINISHED
            if text is not None and finished:
                text.finish(seq.output_token_ids)
            new_ids = seq.output_token_ids[request.reported_tokens[i]:]
            new_logprobs = seq.output_logprobs[request.reported_logprobs[i]:]
            request.reported_tokens[i] = len(seq.output_token_ids)
            request.reported_logprobs[i] = len(seq.output_logprobs)
            outputs.append(CompletionOutput(
                index=i, text=text.text if text is not None else "", token_ids=list(seq.output_token_ids),
                delta_text=text.take_delta(finished) if text is not None else "", delta_token_ids=new_ids,
                delta_logprobs=new_logprobs,
                logprobs=list(seq.output_logprobs) if seq.params.logprobs is not None else None,
                finish_reason=seq.finish_reason, stop_reason=seq.stop_text, seed=request.seeds[i],
            ))
        done = all(seq.is_finished for seq in request.seqs)
        if done:
            self._requests.pop(request.request_id, None)
        return RequestOutput(request.request_id, request.prompt_token_ids, outputs, done,
                             num_cached_tokens=request.seqs[0].num_cached_prompt_tokens,
                             prompt_logprobs=request.seqs[0].prompt_logprobs,
                             error=next((seq.error for seq in request.seqs if seq.error), None))

    # ---- observability ----
    def stats(self) -> dict[str, float]:
        return {
            "num_running": len(self.scheduler.running),
            "num_waiting": len(self.scheduler.waiting),
            "kv_blocks_used": self.blocks.num_used_blocks,
            "kv_blocks_total": self.blocks.num_blocks,
            "prefix_cache_hit_rate": self.blocks.prefix_hit_rate,
            "preemptions": self.scheduler.num_preemptions,
            **self.speculator.stats(),
        }


def _not_finite_message(seq: Sequence) -> str:
    p = seq.params
    return (f"choice {seq.index} has no finite next-token distribution (NaN or infinite logits): the model's "
            f"logits or this request's own parameters (temperature={p.temperature}, "
            f"repetition_penalty={p.repetition_penalty}, presence_penalty={p.presence_penalty}, "
            f"frequency_penalty={p.frequency_penalty}) overflowed; only this request was stopped")
