"""`--tensor-parallel-size N`: a command run by N ranks, each loading its share of the model.

Without a launcher the command starts its ranks itself (spawned processes on this machine, gloo, a free port
unless --master-port); under torchrun (WORLD_SIZE set) this process is one of the launcher's ranks. Every rank
runs the same command; only rank 0 writes to standard output. A sampling seed is shared, so every rank draws
the same tokens.
"""

from __future__ import annotations

import argparse
import os
import random
import sys

from ..execution.parallel import Collectives, TensorParallelError, init_from_env, spawn_ranks


def add_parallel_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tensor-parallel-size", "--tp", type=int, default=1, metavar="N",
                        help="split the model over N ranks (processes; gloo on the CPU, NCCL on CUDA)")
    parser.add_argument("--threads-per-rank", type=int, default=None, metavar="T",
                        help="intra-op threads of each rank (default: this machine's cores / N)")
    parser.add_argument("--master-port", type=int, default=None, metavar="PORT",
                        help="rendezvous port of the spawned ranks (default: a free one)")


def wants_ranks(args: argparse.Namespace) -> bool:
    """Whether the command runs on ranks: it takes --tensor-parallel-size, and asked for N != 1 or runs under
    a launcher (WORLD_SIZE set)."""
    if not hasattr(args, "tensor_parallel_size"):
        return False
    return args.tensor_parallel_size != 1 or "WORLD_SIZE" in os.environ


def run_on_ranks(args: argparse.Namespace) -> int:
    """args.run(args) on every rank, with args.tensor_parallel set to the rank's group; rank 0's exit code.
    A command's `refuse_on_ranks(args)` (if it has one) refuses what it cannot run on ranks, before any starts."""
    if getattr(args, "refuse_on_ranks", None) is not None:
        args.refuse_on_ranks(args)
    if "WORLD_SIZE" in os.environ:  # torchrun (or another launcher) started the ranks
        size = args.tensor_parallel_size if args.tensor_parallel_size != 1 else None
        return _rank_command(init_from_env(size), args)
    size = args.tensor_parallel_size
    if size < 1:
        raise TensorParallelError(f"--tensor-parallel-size must be at least 1, got {size}")
    threads = args.threads_per_rank or max(1, (os.cpu_count() or 1) // size)
    if getattr(args, "seed", "absent") is None:
        args.seed = random.randrange(2**31)  # every rank samples with the same generator state
    return spawn_ranks(size, _rank_command, (args,), threads=threads, port=args.master_port)


def _rank_command(collectives: Collectives, args: argparse.Namespace) -> int:
    if getattr(args, "seed", "absent") is None:
        args.seed = collectives.broadcast_object(random.randrange(2**31))
    args.tensor_parallel = collectives
    if collectives.rank != 0:
        sys.stdout = open(os.devnull, "w")  # one copy of the output: rank 0's
    return args.run(args) or 0
