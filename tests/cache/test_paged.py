"""The paged cache on tensors: the step layout by hand, and a step's writes and gathers through the pool."""

import torch

from tokenmill.cache.paged import PagedBatchCache, PagedKVPool, PagedLayer, build_layout

CPU = torch.device("cpu")


def test_pool_tensors_are_made_per_layer_on_first_use():
    pool = PagedKVPool(num_blocks=3, block_size=4, dtype=torch.float16, device="cpu")
    assert pool.num_slots == 12 and pool.device == CPU
    keys, values = pool.layer_tensors(2, kv_heads=2, head_dim=5)
    assert keys.shape == values.shape == (12, 2, 5) and keys.dtype == values.dtype == torch.float16
    assert not keys.any() and not values.any()
    assert keys is not values and pool.keys[:2] == [None, None] and pool.values[:2] == [None, None]
    assert pool.layer_tensors(2, 2, 5)[0] is keys and pool.layer_tensors(2, 2, 5)[1] is values
    assert PagedKVPool.bytes_per_token(2, 3, 4, torch.float16) == 2 * 2 * 3 * 4 * 2


def test_layout_of_a_decode_row_beside_a_prefill_row():
    layout, mask, positions = build_layout([[3, 1], [0, 2]], starts=[5, 0], counts=[1, 6], block_size=4, device=CPU)
    assert layout.past_length == 0
    assert layout.context_slots.tolist() == [[12, 13, 14, 15, 4, 5], [0, 1, 2, 3, 8, 9]]
    assert layout.new_rows.tolist() == [5, 6, 7, 8, 9, 10, 11]
    assert layout.new_slots.tolist() == [5, 0, 1, 2, 3, 8, 9]
    assert mask.tolist() == [[1] * 6, [1] * 6]
    assert positions.tolist() == [[0, 0, 0, 0, 0, 5], [0, 1, 2, 3, 4, 5]]


def test_layout_right_aligns_shorter_rows():
    layout, mask, positions = build_layout([[3], [0]], starts=[2, 0], counts=[1, 2], block_size=4, device=CPU)
    assert layout.past_length == 1
    assert layout.context_slots.tolist() == [[12, 13, 14], [0, 0, 1]]
    assert layout.new_rows.tolist() == [1, 2, 3] and layout.new_slots.tolist() == [14, 0, 1]
    assert mask.tolist() == [[1, 1, 1], [0, 1, 1]]
    assert positions.tolist() == [[0, 2], [0, 1]]


def test_a_step_writes_only_real_tokens_and_gathers_each_rows_context():
    pool = PagedKVPool(num_blocks=4, block_size=4, dtype=torch.float64, device="cpu")
    pool_keys, pool_values = pool.layer_tensors(0, kv_heads=1, head_dim=2)
    pool_keys[12:14], pool_values[12:14] = torch.tensor([[[1.0, 1.0]], [[2.0, 2.0]]]), -7.0  # row 0's past
    layout, _, _ = build_layout([[3], [0]], starts=[2, 0], counts=[1, 2], block_size=4, device=CPU)
    cache = PagedBatchCache(pool, layout)
    assert cache.get_seq_length() == 1 and cache.layer(0).seq_length() == 1
    keys = torch.tensor([[9.0, 9.0], [3.0, 3.0], [4.0, 4.0], [5.0, 5.0]]).reshape(2, 2, 1, 2).transpose(1, 2)
    full_keys, full_values = cache.update(keys, keys * 10, 0)  # row 0's first query column is padding (9)
    assert full_keys.dtype == full_values.dtype == torch.float32 and full_keys.shape == (2, 1, 3, 2)
    assert full_keys[:, 0, :, 0].tolist() == [[1.0, 2.0, 3.0], [4.0, 4.0, 5.0]]  # padding column reads slot 0
    assert full_values[:, 0, :, 0].tolist() == [[-7.0, -7.0, 30.0], [40.0, 40.0, 50.0]]
    assert not (pool_keys == 9.0).any()
    assert pool_keys[14, 0].tolist() == [3.0, 3.0] and pool_values[1, 0].tolist() == [50.0, 50.0]


def test_update_slots_hands_back_the_pool_and_the_slots():
    pool = PagedKVPool(num_blocks=2, block_size=2, dtype=torch.float32, device="cpu")
    layout, _, _ = build_layout([[1]], starts=[0], counts=[2], block_size=2, device=CPU)
    layer = PagedLayer(pool, layout, 1)
    keys = torch.arange(4, dtype=torch.float32).reshape(1, 1, 2, 2)
    pool_keys, pool_values, slots = layer.update_slots(keys, -keys)
    assert pool_keys is pool.keys[1] and pool_values is pool.values[1] and slots is layout.context_slots
    assert pool_keys[2:4, 0].tolist() == [[0.0, 1.0], [2.0, 3.0]] and pool_values[2, 0].tolist() == [-0.0, -1.0]


def test_heads_stay_apart_when_written():
    pool = PagedKVPool(num_blocks=1, block_size=4, dtype=torch.float32, device="cpu")
    layout, _, _ = build_layout([[0]], starts=[0], counts=[2], block_size=4, device=CPU)
    keys = torch.tensor([[[[0.0], [1.0]], [[10.0], [11.0]]]])  # [batch 1, heads 2, query 2, dim 1]
    full_keys, full_values = PagedLayer(pool, layout, 0).update(keys, keys + 0.5)
    assert pool.keys[0][:2, :, 0].tolist() == [[0.0, 10.0], [1.0, 11.0]]  # slot = position, then heads
    assert torch.equal(full_keys, keys) and torch.equal(full_values, keys + 0.5)
