"""Routing over replicas: least loaded, ties taken in turn, and prefix-cache affinity within its slack."""

import pytest

from tokenmill.engine.replica_router import ReplicaRouter

BLOCK = 4


def prompt(first: int, length: int = 3 * BLOCK) -> list[int]:
    return [first] + list(range(1, length))


def test_least_loaded_and_ties_in_turn():
    router = ReplicaRouter(3, block_size=BLOCK)
    short = [1, 2]  # under one block: no affinity key
    chosen = []
    for _ in range(3):
        replica = router.choose(short, [True] * 3)
        router.assign(replica, short, 1)
        chosen.append(replica)
    assert sorted(chosen) == [0, 1, 2]
    router.release(1, 1)
    assert router.choose(short, [True] * 3) == 1


def test_prefix_affinity_within_slack():
    router = ReplicaRouter(2, block_size=BLOCK, slack=2)
    router.assign(1, prompt(7), 1)  # replica 1 holds this prefix and is the busier one
    shared = prompt(7) + [99, 98]
    assert router.choose(shared, [True, True]) == 1
    router.assign(1, shared, 2)  # now 3 sequences against 0: beyond the slack of 2
    assert router.choose(shared, [True, True]) == 0
    assert router.choose(prompt(8), [True, True]) == 0  # an unseen prefix: the least loaded


def test_longest_prefix_wins():
    router = ReplicaRouter(2, block_size=BLOCK)
    router.assign(0, prompt(5)[:BLOCK], 0)
    router.assign(1, prompt(5), 0)  # the longer match
    assert router.choose(prompt(5) + [1], [True, True]) == 1


def test_dead_replicas_are_skipped_and_forgotten():
    router = ReplicaRouter(2, block_size=BLOCK)
    router.assign(0, prompt(3), 1)
    assert router.choose(prompt(3), [False, True]) == 1
    router.forget(0)
    assert router.loads[0] == 0 and router.prefix_keys(prompt(3))[0] not in router._owners
    with pytest.raises(ValueError, match="^no replica is running$"):
        router.choose(prompt(3), [False, False])


def test_remembered_prefixes_are_bounded():
    router = ReplicaRouter(2, block_size=BLOCK, max_keys=5)
    for first in range(10):
        router.assign(first % 2, prompt(first), 1)
    assert len(router._owners) == 5


def test_equal_loads_are_taken_in_turn_from_replica_0():
    router = ReplicaRouter(3, block_size=BLOCK)
    assert router.loads == [0, 0, 0]
    assert [router.choose([1], [True] * 3) for _ in range(4)] == [0, 1, 2, 0]  # nothing assigned: all stay tied
    assert router.choose([1], [True, False, True]) == 2  # the turn passes over a dead replica


def test_affinity_holds_at_exactly_the_slack():
    router = ReplicaRouter(2, block_size=BLOCK, slack=2)
    router.assign(1, prompt(7), 2)  # 2 busier than replica 0: exactly the slack
    assert router.choose(prompt(7), [True, True]) == 1


def test_default_block_size_slack_and_depth():
    router = ReplicaRouter(2)
    assert [len(router.prefix_keys(list(range(n)))) for n in (15, 16, 33)] == [0, 1, 2]  # blocks of 16 tokens
    assert len(router.prefix_keys(list(range(16 * 65)))) == 64  # at most 64 blocks deep
    router.assign(1, list(range(16)), 4)  # 4 sequences busier: still within the default slack
    assert router.choose(list(range(16)), [True, True]) == 1
    router.assign(1, [], 1)  # 5: beyond it
    assert router.choose(list(range(16)), [True, True]) == 0
    assert router.max_keys == 65536


def test_the_oldest_prefixes_are_forgotten_first():
    router = ReplicaRouter(2, block_size=BLOCK, max_keys=3)
    router.assign(0, prompt(1), 0)  # 3 keys
    router.assign(1, prompt(2)[:BLOCK], 0)  # 1 more: the oldest goes
    assert list(router._owners) == router.prefix_keys(prompt(1))[1:] + router.prefix_keys(prompt(2)[:BLOCK])
    assert router.choose(prompt(2), [True, True]) == 1  # the newest key still routes
