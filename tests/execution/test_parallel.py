"""The collectives and the rank launcher (2 ranks x 1 thread, gloo) and their refusals."""

from __future__ import annotations

import socket
import time

import pytest
import torch
from tp_ranks import rank_one_dies, sum_of_ranks

from tokenmill.execution.parallel import (SINGLE, RankFailedError, TensorParallelError, check_tp_size, init_from_env,
                                          shard_range, spawn_ranks, valid_tp_sizes)
from tokenmill.execution.policy import ExecutionPolicy, ExecutionPolicyError


def test_collectives_across_two_ranks():
    total, gathered, shared = spawn_ranks(2, sum_of_ranks, timeout_s=20)
    assert total == 3.0  # 1 + 2
    assert gathered == [0.0, 1.0, 1.0]  # rank 0's one column, rank 1's two, padding dropped
    assert shared == {"step": 7}


def test_dead_rank_is_reported_not_a_hang():
    started = time.monotonic()
    with pytest.raises(RankFailedError, match="rank 1 exited with code 3"):
        spawn_ranks(2, rank_one_dies, timeout_s=10)
    assert time.monotonic() - started < 30  # the process-group timeout bounds the wait


def test_rendezvous_port_in_use_is_refused():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(TensorParallelError, match=f"port 127.0.0.1:{port} is in use"):
            spawn_ranks(2, sum_of_ranks, port=port)


def test_world_size_mismatch_is_refused(monkeypatch):
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    free = port.getsockname()[1]
    port.close()
    for name, value in {"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free)}.items():
        monkeypatch.setenv(name, value)
    import torch.distributed as dist

    try:
        with pytest.raises(TensorParallelError, match="tensor_parallel_size=2 but the launcher started 1"):
            init_from_env(expected_size=2)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_sizes_that_split_the_heads():
    assert valid_tp_sizes(9, 3) == [1, 2, 3, 9]  # SmolLM2-135M
    assert valid_tp_sizes(4, 1) == [1, 2, 4]  # Gemma 3 270M: the one KV head replicated
    with pytest.raises(TensorParallelError, match="sizes that do: 1, 2, 4"):
        check_tp_size(3, 4, 1)


def test_shard_ranges_cover_every_item_once():
    for total in (1, 7, 101, 49152):
        for size in (1, 2, 3, 4):
            ranges = [shard_range(total, rank, size) for rank in range(size)]
            assert ranges[0][0] == 0 and ranges[-1][1] == total
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
            assert max(e - s for s, e in ranges) - min(e - s for s, e in ranges) <= 1


def test_policy_parallel_layout_matches_its_group():
    assert ExecutionPolicy().ops.all_reduce(torch.ones(2)).tolist() == [1.0, 1.0]  # one process: identity
    with pytest.raises(ExecutionPolicyError, match="'tensor' needs 2 or more"):
        ExecutionPolicy(parallel="tensor")
    assert ExecutionPolicy().with_collectives(SINGLE).parallel == "single"
