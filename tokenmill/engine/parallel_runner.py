"""The engine under tensor parallelism: the scheduler, sampler and requests live on rank 0; the other ranks
follow its steps.

Rank 0's `TensorParallelRunner` broadcasts each step's inputs (the batch layout: block tables, row starts and
counts, tokens; plain data, one object per step) before running its share of the forward; each follower
(`follow_steps`) builds the same paged pool, receives the step and runs its share, the layers' all-reduces
keeping the ranks in step. A rank that dies makes rank 0's next collective fail: the step raises
RankFailedError naming the rank, and `failure` marks the runner unhealthy for good.
"""

from __future__ import annotations

import os

import torch

from ..execution.parallel import RankFailedError, rank_failure, start_ranks
from .model_runner import ModelRunner, StepInputs

_STOP = ("stop",)


class TensorParallelRunner(ModelRunner):
    """Rank 0's runner: every step is broadcast to the followers, then run here."""

    def __init__(self, model, num_blocks: int, block_size: int, kv_dtype: torch.dtype | None = None):
        super().__init__(model, num_blocks, block_size, kv_dtype)
        self.collectives = model.execution_policy.collectives
        self._send(("pool", num_blocks, block_size, kv_dtype))

    def forward(self, step: StepInputs) -> torch.Tensor:
        self._send(("step", step))
        try:
            return super().forward(step)
        except RuntimeError as error:  # gloo / NCCL: a peer closed its connection or timed out
            failure = rank_failure(self.collectives, error)
            self.failure = str(failure)
            raise failure from error

    def stop_followers(self) -> None:
        """Let the followers return (they exit with their process); later steps are refused."""
        if self.failure is None:
            self._send(_STOP)
            self.failure = "the tensor-parallel ranks were stopped"

    def _send(self, message: tuple) -> None:
        if self.failure is not None:
            raise RankFailedError(self.failure)
        try:
            self.collectives.broadcast_object(message)
        except RuntimeError as error:
            failure = rank_failure(self.collectives, error)
            self.failure = str(failure)
            raise failure from error


def make_runner(model, num_blocks: int, block_size: int, eager: bool = False) -> ModelRunner:
    """The runner for this model's execution policy: rank 0 of a tensor-parallel group, or a plain one (eager:
    never replaying decode steps from captured graphs)."""
    if model.execution_policy.parallel == "tensor":
        return TensorParallelRunner(model, num_blocks, block_size)
    return ModelRunner(model, num_blocks, block_size, graphs=False if eager else None)


def follow_steps(model) -> None:
    """A follower rank: the pool rank 0 announces, then every step it broadcasts, until it says stop."""
    collectives = model.execution_policy.collectives
    _, num_blocks, block_size, kv_dtype = collectives.broadcast_object()
    runner = ModelRunner(model, num_blocks, block_size, kv_dtype)
    while True:
        message = collectives.broadcast_object()
        if message == _STOP:
            return
        runner.forward(message[1])


def follower_rank(collectives, source, load_kwargs: dict) -> None:
    """What a spawned rank of `LLM(..., tensor_parallel_size=N)` runs: load its share, follow rank 0."""
    from ..auto import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(source, tensor_parallel=collectives, progress=False, **load_kwargs)
    follow_steps(model)


def start_engine_ranks(size: int, source, load_kwargs: dict, threads: int | None = None, port: int | None = None):
    """Spawn the follower ranks of a tensor-parallel engine and return rank 0's group (this process)."""
    threads = threads or max(1, (os.cpu_count() or 1) // size)
    collectives = start_ranks(size, follower_rank, (source, load_kwargs), threads=threads, port=port)
    collectives.threads = threads  # rank 0's model runs on as many threads as each follower
    return collectives


def stop_ranks(collectives, runner: ModelRunner | None = None) -> None:
    """Rank 0 leaves the group: followers told to stop (if they can still hear), waited for, the group closed."""
    import torch.distributed as dist

    if isinstance(runner, TensorParallelRunner):
        try:
            runner.stop_followers()
        except RankFailedError:
            pass  # a follower is gone already: nothing to tell
    for worker in getattr(collectives, "workers", []):
        worker.join(10.0)
        if worker.is_alive():
            worker.kill()
            worker.join()
    if dist.is_initialized():
        dist.destroy_process_group()
