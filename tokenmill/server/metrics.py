"""Prometheus metrics, one registry per app (so several apps in one process never collide)."""

from __future__ import annotations

import time
from typing import AsyncIterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class ServerMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("tokenmill_requests", "finished requests by outcome", ["outcome"], registry=r)
        self.queue_length = Gauge("tokenmill_queue_length", "sequences waiting to be scheduled", registry=r)
        self.batch_size = Gauge("tokenmill_running_batch_size", "sequences in the running batch", registry=r)
        self.ttft = Histogram("tokenmill_time_to_first_token_seconds", "request arrival to first token",
                              buckets=_LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("tokenmill_inter_token_latency_seconds", "time between generated tokens",
                             buckets=_LATENCY_BUCKETS, registry=r)
        self.tokens_in = Counter("tokenmill_prompt_tokens", "prompt tokens received", registry=r)
        self.tokens_out = Counter("tokenmill_generated_tokens", "tokens generated", registry=r)
        self.kv_used = Gauge("tokenmill_kv_blocks_used", "KV-cache blocks in use", registry=r)
        self.kv_total = Gauge("tokenmill_kv_blocks_total", "KV-cache blocks in the pool", registry=r)
        self.prefix_hit_rate = Gauge("tokenmill_prefix_cache_hit_rate", "prefix-cache block hit rate", registry=r)
        self.preemptions = Gauge("tokenmill_preemptions", "sequences preempted so far (recomputed)", registry=r)
        self.step_seconds = Histogram("tokenmill_engine_step_seconds", "duration of one engine step",
                                      buckets=_LATENCY_BUCKETS, registry=r)
        self.engine_threads = Gauge("tokenmill_engine_threads", "torch threads the engine steps with", registry=r)
        self.in_flight = Gauge("tokenmill_requests_in_flight", "generation requests admitted and not finished",
                               registry=r)
        self.spec_draft_tokens = Counter("tokenmill_spec_draft_tokens", "speculative draft tokens verified",
                                         registry=r)
        self.spec_accepted_tokens = Counter("tokenmill_spec_accepted_tokens", "draft tokens the model accepted",
                                            registry=r)
        self.spec_acceptance_rate = Gauge("tokenmill_spec_acceptance_rate", "accepted / drafted tokens so far",
                                          registry=r)
        self.spec_tokens_per_step = Gauge("tokenmill_spec_tokens_per_step", "tokens a speculating sequence gains "
                                          "per forward (accepted drafts + 1; 1 without speculation)", registry=r)
        self._spec_seen = {"spec_draft_tokens": 0, "spec_accepted_tokens": 0}  # engine totals already counted
        self.sequences_in_flight = Gauge("tokenmill_sequences_in_flight",
                                         "sequences of the requests in flight (what admission counts)", registry=r)

    def watch(self, state, kv_blocks_total: int) -> None:
        """Read the in-flight counts from the server state at each scrape; the pool size is known up front."""
        self.in_flight.set_function(lambda: state.in_flight)
        self.sequences_in_flight.set_function(lambda: state.in_flight_sequences)
        self.kv_total.set(kv_blocks_total)

    def on_step(self, engine, seconds: float) -> None:
        """Called by the engine thread after each step."""
        stats = engine.stats()
        self.queue_length.set(stats["num_waiting"])
        self.batch_size.set(stats["num_running"])
        self.kv_used.set(stats["kv_blocks_used"])
        self.kv_total.set(stats["kv_blocks_total"])
        self.prefix_hit_rate.set(stats["prefix_cache_hit_rate"])
        self.preemptions.set(stats["preemptions"])
        self._count_speculation(stats)
        self.step_seconds.observe(seconds)
        self.engine_threads.set(engine.runner.model.execution_policy.threads)  # what the runner applied

    def _count_speculation(self, stats: dict) -> None:
        """The engine keeps running totals; the counters take what was added since the last step."""
        for name, counter in (("spec_draft_tokens", self.spec_draft_tokens),
                              ("spec_accepted_tokens", self.spec_accepted_tokens)):
            total = stats.get(name, 0)
            if total > self._spec_seen[name]:
                counter.inc(total - self._spec_seen[name])
                self._spec_seen[name] = total
        self.spec_acceptance_rate.set(stats.get("spec_acceptance_rate", 0.0))
        self.spec_tokens_per_step.set(stats.get("spec_tokens_per_step", 1.0))

    async def track(self, outputs: AsyncIterator, prompt_tokens: int) -> AsyncIterator:
        """Pass a request's outputs through, observing TTFT, inter-token latency, tokens and the outcome."""
        started = last = time.perf_counter()
        outcome = "cancelled"
        self.tokens_in.inc(prompt_tokens)
        try:
            async for output in outputs:
                new = sum(len(o.delta_token_ids) for o in output.outputs)
                if new:
                    now = time.perf_counter()
                    if last == started:
                        self.ttft.observe(now - started)
                    else:
                        self.itl.observe((now - last) / new)
                    last = now
                    self.tokens_out.inc(new)
                if output.finished:
                    outcome = "aborted" if any(o.finish_reason == "abort" for o in output.outputs) else "success"
                yield output
        except Exception:
            outcome = "error"
            raise
        finally:
            self.requests.labels(outcome=outcome).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
