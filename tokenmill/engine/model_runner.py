"""Runs one engine step through the model: scheduled chunks → batch tensors + paged cache view → logits."""

from __future__ import annotations

import torch

from ..cache.paged import PagedBatchCache, PagedKVPool, build_layout
from .scheduler import ScheduledChunk


class ModelRunner:
    def __init__(self, model, num_blocks: int, block_size: int, kv_dtype: torch.dtype | None = None):
        self.model = model.eval()
        self.device = model.device
        self.block_size = block_size
        self.pool = PagedKVPool(num_blocks, block_size, kv_dtype or model.dtype, self.device)

    @torch.inference_mode()
    def run(self, chunks: list[ScheduledChunk], all_logits_rows: set[int] = frozenset()
            ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """(last-token logits [chunks, vocab] float32, {row: [count, vocab]} for rows in `all_logits_rows`,
        whose prompt logprobs need every position)."""
        counts = [chunk.count for chunk in chunks]
        starts = [chunk.start for chunk in chunks]
        layout, attention_mask, positions = build_layout(
            [chunk.seq.block_table for chunk in chunks], starts, counts, self.block_size, self.device)
        query = max(counts)
        input_ids = torch.zeros(len(chunks), query, dtype=torch.long)
        for row, chunk in enumerate(chunks):
            tokens = chunk.seq.all_token_ids[chunk.start:chunk.start + chunk.count]
            input_ids[row, query - chunk.count:] = torch.tensor(tokens, dtype=torch.long)
        cache = PagedBatchCache(self.pool, layout)
        keep = 0 if all_logits_rows else 1
        out = self.model(input_ids=input_ids.to(self.device), attention_mask=attention_mask,
                         position_ids=positions, past_key_values=cache, use_cache=True, logits_to_keep=keep)
        logits = out.logits.float()
        every_position = {row: logits[row, query - chunks[row].count:] for row in all_logits_rows}
        return logits[:, -1], every_position
