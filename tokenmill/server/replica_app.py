"""The server over data-parallel engine replicas: the same app as with one engine, its engine a ReplicaEngine,
its metrics summed over the replicas plus per-replica series (up, deaths, restarts, load)."""

from __future__ import annotations

import threading

from fastapi import FastAPI
from prometheus_client import Counter, Gauge

from ..engine.replica_worker import ReplicaSpec
from ..engine.replicas import ReplicaEngine
from .app import create_app
from .metrics import ServerMetrics
from .settings import ServerSettings


class ReplicaMetrics:
    """Feeds the server's metrics from every replica's steps: gauges are sums over the replicas (the prefix-cache
    hit rate their mean), step durations one histogram; replica-labelled series beside them."""

    def __init__(self, metrics: ServerMetrics, num_replicas: int):
        self.metrics = metrics
        r = metrics.registry
        self.up = Gauge("tokenmill_replica_up", "1 while the engine replica runs", ["replica"], registry=r)
        self.deaths = Counter("tokenmill_replica_deaths", "engine replica processes that stopped unexpectedly",
                              ["replica"], registry=r)
        self.restarts = Counter("tokenmill_replica_restarts", "engine replicas restarted after dying", ["replica"],
                                registry=r)
        self.running = Gauge("tokenmill_replica_running_batch_size", "sequences in a replica's running batch",
                             ["replica"], registry=r)
        self.load = Gauge("tokenmill_replica_sequences_in_flight", "sequences routed to a replica and not finished",
                          ["replica"], registry=r)
        self._stats: list[dict | None] = [None] * num_replicas
        self._threads = [0] * num_replicas
        self._lock = threading.Lock()  # each replica's reader thread reports here
        for index in range(num_replicas):
            self.up.labels(replica=str(index)).set(1)
            self.deaths.labels(replica=str(index))
            self.restarts.labels(replica=str(index))

    def watch(self, engine: ReplicaEngine) -> None:
        for index in range(len(self._stats)):
            self.load.labels(replica=str(index)).set_function(lambda index=index: engine.router.loads[index])

    def on_step(self, replica: int, stats: dict, seconds: float, threads: int) -> None:
        m = self.metrics
        with self._lock:
            self._stats[replica], self._threads[replica] = stats, threads
            known = [s for s in self._stats if s is not None]
            total = {key: sum(s[key] for s in known) for key in stats}
            m.queue_length.set(total["num_waiting"])
            m.batch_size.set(total["num_running"])
            m.kv_used.set(total["kv_blocks_used"])
            m.kv_total.set(total["kv_blocks_total"])
            m.prefix_hit_rate.set(total["prefix_cache_hit_rate"] / len(known))
            m.preemptions.set(total["preemptions"])
            m.engine_threads.set(sum(self._threads))
        m.step_seconds.observe(seconds)
        self.running.labels(replica=str(replica)).set(stats["num_running"])

    def on_event(self, replica: int, event: str, detail: str) -> None:
        label = str(replica)
        if event == "died":
            self.deaths.labels(replica=label).inc()
            self.up.labels(replica=label).set(0)
            with self._lock:
                self._stats[replica] = None  # its pool and batch are gone
        elif event == "restarted":
            self.restarts.labels(replica=label).inc()
            self.up.labels(replica=label).set(1)


def build_replica_app(spec: ReplicaSpec, num_replicas: int, tokenizer, settings: ServerSettings | None = None,
                      max_restarts: int = 3) -> FastAPI:
    """Start `num_replicas` engine processes from `spec` and serve them as one engine; `spec.lora_adapters` are
    loaded by every replica."""
    metrics = ServerMetrics()
    replica_metrics = ReplicaMetrics(metrics, num_replicas)
    engine = ReplicaEngine(spec, num_replicas, tokenizer, on_step=replica_metrics.on_step,
                           on_event=replica_metrics.on_event, max_restarts=max_restarts)
    replica_metrics.watch(engine)
    app = create_app(engine, settings, metrics)
    app.state.tokenmill.adapter_sources.update({name: str(path) for name, path in spec.lora_adapters.items()})
    return app
