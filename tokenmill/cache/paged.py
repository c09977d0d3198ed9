"""A paged KV cache: one pool of fixed-size blocks per layer, shared by every running sequence.

The model never sees blocks. Each engine step builds a `PagedBatchCache`, a per-step view laid out the way
the model's forward already understands: every row right-aligned in `past + query` columns, a 2D padding
mask marking the unused left columns, and per-row position ids. On `update`, the view writes the step's
real new keys/values into their slots, then gathers each row's whole context from its block table (rows of
one sequence may share a step: every row's keys are written before any row's context is gathered).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Cache, LayerCache


class PagedKVPool:
    """Per-layer storage [num_blocks * block_size, kv_heads, head_dim], created on first use of each layer."""

    def __init__(self, num_blocks: int, block_size: int, dtype: torch.dtype, device: torch.device):
        self.num_blocks, self.block_size = num_blocks, block_size
        self.dtype, self.device = dtype, torch.device(device)
        self.keys: list[torch.Tensor | None] = []
        self.values: list[torch.Tensor | None] = []

    @property
    def num_slots(self) -> int:
        return self.num_blocks * self.block_size

    def layer_tensors(self, layer_idx: int, kv_heads: int, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        while len(self.keys) <= layer_idx:
            self.keys.append(None)
            self.values.append(None)
        if self.keys[layer_idx] is None:
            shape = (self.num_slots, kv_heads, head_dim)
            self.keys[layer_idx] = torch.zeros(shape, dtype=self.dtype, device=self.device)
            self.values[layer_idx] = torch.zeros(shape, dtype=self.dtype, device=self.device)
        return self.keys[layer_idx], self.values[layer_idx]

    @staticmethod
    def bytes_per_token(num_layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        return 2 * num_layers * kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()


@dataclass
class BatchLayout:
    """Where this step's tokens go and what each row attends to.

    new_rows: flat indices into the [batch * query] new tokens that are real (not left padding);
    new_slots: the pool slot of each of them; context_slots [batch, past + query]: the slot every
    column reads (padding columns read slot 0 and are masked out).
    """

    past_length: int
    new_rows: torch.Tensor
    new_slots: torch.Tensor
    context_slots: torch.Tensor


class PagedLayer(LayerCache):
    def __init__(self, pool: PagedKVPool, layout: BatchLayout, layer_idx: int):
        self.pool, self.layout, self.layer_idx = pool, layout, layer_idx

    def update_slots(self, keys, values):
        batch, kv_heads, query, head_dim = keys.shape
        pool_keys, pool_values = self.pool.layer_tensors(self.layer_idx, kv_heads, head_dim)
        layout = self.layout
        new_keys = keys.transpose(1, 2).reshape(batch * query, kv_heads, head_dim)
        new_values = values.transpose(1, 2).reshape(batch * query, kv_heads, head_dim)
        if layout.new_rows.numel() != batch * query:  # some rows are left-padded: keep only the real tokens
            new_keys = new_keys.index_select(0, layout.new_rows)
            new_values = new_values.index_select(0, layout.new_rows)
        pool_keys.index_copy_(0, layout.new_slots, new_keys.to(pool_keys.dtype))
        pool_values.index_copy_(0, layout.new_slots, new_values.to(pool_values.dtype))
        return pool_keys, pool_values, layout.context_slots

    def update(self, keys, values):
        pool_keys, pool_values, slots = self.update_slots(keys, values)
        batch, columns = slots.shape
        _, kv_heads, head_dim = pool_keys.shape
        flat = slots.reshape(-1)
        full_keys = pool_keys.index_select(0, flat).view(batch, columns, kv_heads, head_dim).transpose(1, 2)
        full_values = pool_values.index_select(0, flat).view(batch, columns, kv_heads, head_dim).transpose(1, 2)
        return full_keys.to(keys.dtype), full_values.to(values.dtype)

    def seq_length(self) -> int:
        return self.layout.past_length


class PagedBatchCache(Cache):
    """The Cache a model forward receives for one engine step (built by the model runner)."""

    def __init__(self, pool: PagedKVPool, layout: BatchLayout):
        super().__init__(lambda layer_idx: PagedLayer(pool, layout, layer_idx))
        self.layout = layout

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.layout.past_length


def build_layout(block_tables: list[list[int]], starts: list[int], counts: list[int], block_size: int,
                 device: torch.device) -> tuple[BatchLayout, torch.Tensor, torch.Tensor]:
    """Layout for rows that each compute tokens [start, start + count) of their sequence.

    Returns (layout, attention_mask [batch, past + query], position_ids [batch, query]). Built with a few
    whole-batch tensor ops, once per step: per-row tensor work cost more than the model at small batches.
    """
    batch = len(counts)
    widest = max(len(table) for table in block_tables)
    tables = torch.tensor([table + [0] * (widest - len(table)) for table in block_tables], dtype=torch.long)
    start = torch.tensor(starts, dtype=torch.long)[:, None]
    count = torch.tensor(counts, dtype=torch.long)[:, None]
    total = start + count
    query, columns = int(count.max()), int(total.max())
    # right-aligned: column j of a row holds token position j - (columns - total); negative means padding
    token_positions = torch.arange(columns)[None, :] - (columns - total)
    present = token_positions >= 0
    token_positions = token_positions.clamp(min=0)
    block_ids = tables.gather(1, token_positions // block_size)
    context = torch.where(present, block_ids * block_size + token_positions % block_size, 0)
    # a row's new tokens are its last `count` columns, which are the last columns of the query window
    is_new = torch.arange(query)[None, :] >= query - count
    positions = torch.where(is_new, token_positions[:, columns - query:], 0)
    new_rows = is_new.reshape(-1).nonzero().squeeze(1)
    new_slots = context[:, columns - query:][is_new]
    layout = BatchLayout(past_length=columns - query, new_rows=new_rows.to(device), new_slots=new_slots.to(device),
                         context_slots=context.to(device))
    return layout, present.long().to(device), positions.to(device)
