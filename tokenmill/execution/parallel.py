"""Tensor parallelism's communication, on torch.distributed (gloo on the CPU, NCCL on CUDA).

`Collectives` is what a tensor-parallel model's layers are handed (through the kernel set, `ops.all_reduce`, and
the vocabulary-parallel embedding / head): the group's rank and size, an all-reduce and an all-gather, each
timed so the bench can report the communication cost per token. `SINGLE` stands for one process: identities.
Starting the ranks (from torchrun's environment, or spawned here on a free port) and the checks on the sizes
live here too, so a bad size or a taken port is refused with the reason before any weight is read.
"""

from __future__ import annotations

import datetime
import os
import signal
import socket
import sys
import time

import torch
import torch.distributed as dist

from ..errors import TokenmillError

DEFAULT_TIMEOUT_S = 60.0  # a rank that died makes the others' next collective fail after this, never hang
IDLE_TIMEOUT = datetime.timedelta(days=365)  # followers wait for rank 0's next step as long as a server idles


class TensorParallelError(ValueError):
    """A tensor-parallel request that cannot run (sizes, world, rendezvous), with what to change."""


class RankFailedError(TokenmillError, RuntimeError):
    """A rank of a tensor-parallel group died or failed; names each rank's exit."""


class Collectives:
    """One process: every collective is the identity."""

    rank = 0
    size = 1

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def all_gather_last(self, x: torch.Tensor, widths: list[int]) -> torch.Tensor:
        return x

    def broadcast_object(self, value=None):
        return value


SINGLE = Collectives()


class ProcessGroupCollectives(Collectives):
    """The default torch.distributed group; `seconds` / `calls` accumulate the time spent communicating."""

    def __init__(self):
        if not dist.is_initialized():
            raise TensorParallelError("torch.distributed is not initialized: start the ranks with "
                                      "init_from_env() (torchrun) or spawn_ranks()")
        self.rank, self.size = dist.get_rank(), dist.get_world_size()
        self.seconds, self.calls = 0.0, 0
        # objects (a step's batch layout) travel on their own gloo group: the followers wait on it while rank 0
        # idles, which the compute group's timeout would cut short; NCCL carries no Python objects anyway
        self.control = dist.new_group(backend="gloo", timeout=IDLE_TIMEOUT)
        self.workers: list = []  # the spawned ranks' processes, on the rank that spawned them (for reports)

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        started = time.perf_counter()
        x = x.contiguous()
        dist.all_reduce(x)
        self._count(started)
        return x

    def all_gather_last(self, x: torch.Tensor, widths: list[int]) -> torch.Tensor:
        """Each rank's [..., widths[rank]] piece concatenated along the last dim, in rank order; pieces are
        padded to the widest, as gloo gathers equal shapes only."""
        started = time.perf_counter()
        widest = max(widths)
        padded = torch.nn.functional.pad(x, (0, widest - x.shape[-1])).contiguous()
        pieces = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(pieces, padded)
        self._count(started)
        return torch.cat([piece[..., :width] for piece, width in zip(pieces, widths)], dim=-1)

    def broadcast_object(self, value=None):
        """Rank 0's `value` on every rank (one pickled object: a step's batch layout)."""
        started = time.perf_counter()
        box = [value]
        dist.broadcast_object_list(box, src=0, group=self.control)
        self._count(started)
        return box[0]

    def _count(self, started: float) -> None:
        self.seconds += time.perf_counter() - started
        self.calls += 1

    def __repr__(self) -> str:
        return f"ProcessGroupCollectives(rank={self.rank}, size={self.size}, backend={dist.get_backend()})"


def shard_range(total: int, rank: int, size: int) -> tuple[int, int]:
    """[start, end) of rank's share of `total` items split as evenly as possible (the first ranks get one more)."""
    base, extra = divmod(total, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def valid_tp_sizes(num_heads: int, num_kv_heads: int) -> list[int]:
    """The sizes attention splits into: up to one rank per KV head (each a contiguous range of KV heads and their
    query heads, uneven when the count does not divide), or a multiple of the KV heads that divides the query
    heads (each KV head replicated, its query heads split)."""
    return [n for n in range(1, num_heads + 1)
            if n <= num_kv_heads or (n % num_kv_heads == 0 and num_heads % n == 0)]


def check_tp_size(size: int, num_heads: int, num_kv_heads: int) -> None:
    """Refuse a size that does not split the attention heads, naming the sizes that do."""
    valid = valid_tp_sizes(num_heads, num_kv_heads)
    if size not in valid:
        raise TensorParallelError(
            f"tensor_parallel_size={size} does not split the model's {num_heads} attention heads "
            f"({num_kv_heads} key/value heads) over its ranks; sizes that do: {', '.join(map(str, valid))}")


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def init_group(rank: int, size: int, host: str, port: int, timeout_s: float = DEFAULT_TIMEOUT_S) -> Collectives:
    """Join (rank 0: host) the group at host:port; gloo on the CPU, NCCL when CUDA is visible."""
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://{host}:{port}", rank=rank, world_size=size,
                            timeout=datetime.timedelta(seconds=timeout_s))
    return ProcessGroupCollectives()


def init_from_env(expected_size: int | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> Collectives:
    """The group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT); already joined: reused."""
    if not dist.is_initialized():
        missing = [name for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
        if missing:
            raise TensorParallelError(f"tp_plan='auto' runs under torchrun (or another launcher that sets "
                                      f"RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT); missing: {', '.join(missing)}")
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    world = dist.get_world_size()
    if expected_size is not None and expected_size != world:
        raise TensorParallelError(f"tensor_parallel_size={expected_size} but the launcher started {world} "
                                  f"processes (WORLD_SIZE); make them equal")
    return ProcessGroupCollectives()


def _rank_main(rank: int, size: int, host: str, port: int, timeout_s: float, threads: int, target, args):
    torch.set_num_threads(threads)
    collectives = init_group(rank, size, host, port, timeout_s)
    try:
        return target(collectives, *args)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _spawned_rank(rank: int, *rest) -> None:
    """A spawned rank: bad input (which rank 0 reports as well) is one line on stderr and exit code 1. Ctrl-C at
    the terminal reaches every process of the group: a spawned rank ignores it, and rank 0 alone decides (it
    stops the turn for all, or exits and takes its daemon ranks with it), even while this rank still loads."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        _rank_main(rank, *rest)
    except ValueError as error:
        print(f"tokenmill rank {rank}: error: {error}", file=sys.stderr)
        sys.exit(1)


def start_ranks(size: int, target, args: tuple = (), *, threads: int = 1, host: str = "127.0.0.1",
                port: int | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> Collectives:
    """Start ranks 1..size-1 running target(collectives, *args) in spawned processes and join the group here as
    rank 0; returns rank 0's group (its `workers` the processes), for a caller that keeps running (an engine)."""
    if size < 2:
        raise TensorParallelError(f"tensor parallelism needs at least 2 ranks, got {size}")
    port = free_port(host) if port is None else port
    if not port_is_free(host, port):
        raise TensorParallelError(f"the rendezvous port {host}:{port} is in use; pick another (MASTER_PORT / "
                                  f"--master-port) or leave it unset for a free one")
    import torch.multiprocessing as mp
    context = mp.get_context("spawn")
    workers = [context.Process(target=_spawned_rank, args=(rank, size, host, port, timeout_s, threads, target, args),
                               daemon=True) for rank in range(1, size)]
    for worker in workers:
        worker.start()
    try:
        collectives = init_group(0, size, host, port, timeout_s)
    except Exception as error:
        _reap(workers, 0)
        raise RankFailedError(f"tensor parallelism: the ranks did not meet at {host}:{port} ({error}); "
                              f"{_exit_report(workers)}") from error
    collectives.workers = workers
    return collectives


def rank_failure(collectives: Collectives, error: BaseException) -> RankFailedError:
    """The error rank 0 raises when a collective failed: which spawned ranks have exited, and the cause."""
    workers = getattr(collectives, "workers", [])
    for worker in workers:
        worker.join(1.0)  # a rank that just died needs a moment to be seen as exited
    report = _exit_report(workers) if workers else "see the other ranks' logs"
    return RankFailedError(f"tensor parallelism: a collective failed ({error}); {report}")


def spawn_ranks(size: int, target, args: tuple = (), *, threads: int = 1, host: str = "127.0.0.1",
                port: int | None = None, timeout_s: float = DEFAULT_TIMEOUT_S):
    """Run target(collectives, *args) in ranks 1..size-1 (spawned processes, `threads` threads each) and in this
    process as rank 0, returning rank 0's result; a rank that fails makes the others fail within `timeout_s`,
    and is reported here. `target` must be importable (a module-level function), as spawn pickles it."""
    caller_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        collectives = start_ranks(size, target, args, threads=threads, host=host, port=port, timeout_s=timeout_s)
    except BaseException:
        torch.set_num_threads(caller_threads)
        raise
    workers = collectives.workers
    try:
        result = target(collectives, *args)
    except ValueError:  # bad input (sizes, files): the same on every rank, reported as itself
        _reap(workers, timeout_s)
        raise
    except Exception as error:
        _reap(workers, timeout_s)
        raise RankFailedError(f"tensor parallelism: rank 0 failed ({type(error).__name__}: {error}); "
                              f"{_exit_report(workers)}") from error
    finally:
        torch.set_num_threads(caller_threads)
        if dist.is_initialized():
            dist.destroy_process_group()
    _reap(workers, timeout_s)
    if any(worker.exitcode != 0 for worker in workers):
        raise RankFailedError(f"tensor parallelism: {_exit_report(workers)}")
    return result


def _reap(workers, timeout_s: float) -> None:
    """Wait for the spawned ranks, killing one still running after `timeout_s` (stuck in a collective)."""
    for worker in workers:
        worker.join(timeout_s)
        if worker.is_alive():
            worker.kill()
            worker.join()


def _exit_report(workers) -> str:
    return "; ".join(f"rank {rank} " + ("is running" if worker.exitcode is None else
                                        "ran to completion" if worker.exitcode == 0 else
                                        f"exited with code {worker.exitcode}")
                     for rank, worker in enumerate(workers, start=1))
