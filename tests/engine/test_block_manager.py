"""BlockManager: allocation, free, reference counts, prefix-cache hashing and LRU eviction (pure Python)."""

import pytest

from tokenmill.engine.block_manager import BlockManager, NoFreeBlocksError, block_hash


def test_allocate_until_exhausted_then_free_returns_blocks():
    manager = BlockManager(num_blocks=3, block_size=4, enable_prefix_caching=False)
    blocks = [manager.allocate() for _ in range(3)]
    assert sorted(blocks) == [0, 1, 2]
    assert manager.num_free_blocks == 0 and manager.num_used_blocks == 3
    with pytest.raises(NoFreeBlocksError, match="all 3 KV blocks are in use"):
        manager.allocate()
    manager.free(blocks[1])
    assert manager.num_free_blocks == 1
    assert manager.allocate() == blocks[1]


def test_reference_counts_keep_shared_blocks_alive():
    manager = BlockManager(num_blocks=2, block_size=4, enable_prefix_caching=False)
    block = manager.allocate()
    manager.share(block)
    assert manager.ref_counts[block] == 2
    manager.free(block)
    assert manager.num_free_blocks == 1  # still held by the second owner
    manager.free(block)
    assert manager.num_free_blocks == 2
    with pytest.raises(ValueError, match="freed more often"):
        manager.free(block)


def _fill(manager, tokens):
    """Allocate and register blocks for `tokens` as a sequence would; returns the block table."""
    table, parent = [], None
    for start in range(0, len(tokens), manager.block_size):
        block = manager.allocate()
        table.append(block)
        chunk = tuple(tokens[start:start + manager.block_size])
        if len(chunk) == manager.block_size:
            parent = manager.register_full_block(block, parent, chunk)
    return table


def test_prefix_lookup_reuses_full_blocks_and_counts_hits():
    manager = BlockManager(num_blocks=8, block_size=4)
    first = list(range(10))  # two full blocks + a partial one
    table = _fill(manager, first)
    blocks, hashes = manager.lookup_prefix(first[:8] + [99, 98, 97], max_tokens=10)
    assert blocks == table[:2]
    assert hashes[0] == block_hash(None, (0, 1, 2, 3))
    assert hashes[1] == block_hash(hashes[0], (4, 5, 6, 7))
    assert manager.ref_counts[table[0]] == 2
    assert manager.prefix_hits == 2 and manager.prefix_queries == 2
    # a different first block breaks the chain even if the second block's tokens match
    assert manager.lookup_prefix([9, 9, 9, 9, 4, 5, 6, 7], max_tokens=8) == ([], [])
    assert manager.prefix_hit_rate == pytest.approx(2 / 3)  # one float64 division; approx's rel 1e-6 is ample


def test_freed_cached_blocks_stay_reusable_until_evicted_lru():
    manager = BlockManager(num_blocks=3, block_size=2)
    table_a = _fill(manager, [1, 2, 3, 4])  # 2 hashed blocks
    manager.free_all(table_a)
    assert manager.num_free_blocks == 3
    blocks, _ = manager.lookup_prefix([1, 2, 3, 4, 5], max_tokens=4)
    assert blocks == table_a  # content survived the free
    manager.free_all(blocks)
    # exhausting the pool evicts cached blocks; then the prefix is gone
    taken = [manager.allocate() for _ in range(3)]
    assert sorted(taken) == [0, 1, 2]
    manager.free_all(taken)
    assert manager.lookup_prefix([1, 2, 3, 4], max_tokens=4) == ([], [])


def test_lookup_never_covers_more_than_max_tokens():
    manager = BlockManager(num_blocks=4, block_size=2)
    _fill(manager, [1, 2, 3, 4])
    blocks, _ = manager.lookup_prefix([1, 2, 3, 4], max_tokens=3)  # the last token must be recomputed
    assert len(blocks) == 1


def test_bad_pool_sizes_are_rejected():
    with pytest.raises(ValueError, match="num_blocks >= 1"):
        BlockManager(num_blocks=0, block_size=4)
