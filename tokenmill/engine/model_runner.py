"""Runs one engine step through the model: scheduled chunks → batch tensors + paged cache view → logits.

A step mixes decode rows (one token) with prefill chunks (many). The forward takes a rectangular batch, so
chunks are cut into segments of at most `segment` tokens, one row each: a 20-token chunk next to 32 decode
rows becomes 20 one-token rows rather than padding every decode row to 20 columns. This is exact: each row
attends to its own sequence's context, and the paged view writes every row's new keys/values before any row
gathers its context, so a segment sees the keys of the earlier segments of its chunk computed in the same step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..cache.paged import PagedBatchCache, PagedKVPool, build_layout
from .decode_graphs import DecodeGraphs
from .scheduler import ScheduledChunk

# relative cost of one gathered context slot (keys + values read, copied, attended, in every layer), and of the
# vocabulary projection of one row's last position, both in units of one token's pass through the layers
SLOT_COST = 0.01
LOGITS_ROW_COST = 0.2


def chunk_token_ids(chunk: ScheduledChunk) -> list[int]:
    """The chunk's tokens, without concatenating prompt + output (a decode chunk is one output token), then
    the drafts it verifies."""
    seq, end = chunk.seq, chunk.start + chunk.count
    if end > seq.num_tokens:
        drafts = seq.draft_token_ids[:end - seq.num_tokens]
        return chunk_token_ids(ScheduledChunk(seq, chunk.start, seq.num_tokens - chunk.start)) + drafts
    prompt_len = len(seq.prompt_token_ids)
    if chunk.start >= prompt_len:
        return seq.output_token_ids[chunk.start - prompt_len:end - prompt_len]
    if end <= prompt_len:
        return seq.prompt_token_ids[chunk.start:end]
    return seq.prompt_token_ids[chunk.start:] + seq.output_token_ids[:end - prompt_len]


def segment_length(counts: list[int], columns: int) -> int:
    """The row length (a power of two, or the longest chunk) with the least padded work for these chunks."""
    longest = max(counts)
    candidates = [1 << k for k in range(longest.bit_length()) if 1 << k < longest] + [longest]

    def cost(segment: int) -> float:
        rows = sum(-(-count // segment) for count in counts)
        return rows * (segment + columns * SLOT_COST + LOGITS_ROW_COST)

    return min(candidates, key=cost)


@dataclass
class StepRows:
    """Rows of one forward: row r computes tokens [starts[r], starts[r] + counts[r]) of chunk owners[r]."""

    tables: list[list[int]]
    starts: list[int]
    counts: list[int]
    owners: list[int]
    last_row: list[int]  # per chunk: the row holding its last token


def split_rows(chunks: list[ScheduledChunk], segment: int) -> StepRows:
    rows = StepRows([], [], [], [], [])
    for index, chunk in enumerate(chunks):
        end = chunk.start + chunk.count
        for start in range(chunk.start, end, segment):
            rows.tables.append(chunk.seq.block_table)
            rows.starts.append(start)
            rows.counts.append(min(segment, end - start))
            rows.owners.append(index)
        rows.last_row.append(len(rows.owners) - 1)
    return rows


@dataclass
class StepInputs:
    """What one forward needs, as plain data (tensor-parallel rank 0 broadcasts it to the other ranks)."""

    rows: StepRows
    tokens: list[int]  # every row's new tokens, in row order
    keep: int  # logits_to_keep: the last positions of each row (1, or a verified draft's width), 0: every one
    adapters: list[str | None]  # each row's LoRA adapter


class ModelRunner:
    failure: str | None = None  # why steps can no longer run (a tensor-parallel rank died), for health checks

    def __init__(self, model, num_blocks: int, block_size: int, kv_dtype: torch.dtype | None = None,
                 graphs: bool | None = None, capture=None):
        """graphs: replay decode steps from captured graphs (decode_graphs.py); None: where the model's execution
        policy captures them (CUDA). capture: how (default CUDA graphs; the tests pass the CPU stand-in)."""
        self.model = model.eval()
        self.device = model.device
        self.block_size = block_size
        if graphs is None:
            graphs = capture is not None or model.execution_policy.captures_decode_steps
        # with graphs, one block more than the engine counts: padding rows of a captured step write there
        self.pool = PagedKVPool(num_blocks + int(graphs), block_size, kv_dtype or model.dtype, self.device)
        self.graphs = DecodeGraphs(model, self.pool, num_blocks, capture) if graphs else None

    @torch.inference_mode()
    def run(self, chunks: list[ScheduledChunk], all_logits_rows: set[int] = frozenset()
            ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """(last-token logits [chunks, vocab] float32, {chunk: [count, vocab]} for chunks in `all_logits_rows`,
        whose prompt logprobs need every position, and for chunks verifying drafts: each is kept in one row, so
        only the last positions of every row need logits)."""
        columns = max(chunk.start + chunk.count for chunk in chunks)
        whole_rows = {i for i, chunk in enumerate(chunks) if chunk.seq.draft_token_ids}
        widest = max((chunks[i].count for i in whole_rows), default=1)
        segment = max(segment_length([chunk.count for chunk in chunks], columns), widest)
        rows = split_rows(chunks, segment)
        tokens = [token for chunk in chunks for token in chunk_token_ids(chunk)]  # row order = chunk order
        adapters = [chunks[owner].seq.params.adapter for owner in rows.owners]  # each row's LoRA adapter, if any
        logits = self.forward(StepInputs(rows, tokens, 0 if all_logits_rows else widest, adapters))
        if len(rows.last_row) == logits.shape[0]:  # one row per chunk (decode steps): no gather copy
            last = logits[:, -1].float()
        else:
            last = logits[torch.tensor(rows.last_row, device=logits.device), -1].float()
        every_position = {}
        kept = logits.shape[1]  # rows are right-aligned: a row's tokens are its last counts[row] positions
        for index in set(all_logits_rows) | set(whole_rows):
            parts = [logits[row, kept - rows.counts[row]:] for row, owner in enumerate(rows.owners) if owner == index]
            every_position[index] = torch.cat(parts).float()
        return last, every_position

    @torch.inference_mode()
    def forward(self, step: StepInputs) -> torch.Tensor:
        """The model's logits [rows, kept positions, vocab] for one step, its keys/values written to the pool."""
        self.model.execution_policy.apply_threads()  # the policy is the one place the thread count is decided
        if self.graphs is not None and self.graphs.serves(step):
            logits = self.graphs.run(step)
            if logits is not None:
                return logits
        rows = step.rows
        layout, attention_mask, positions = build_layout(rows.tables, rows.starts, rows.counts, self.block_size,
                                                         self.device)
        query = max(rows.counts)
        input_ids = torch.zeros(len(rows.counts) * query, dtype=torch.long)
        input_ids[layout.new_rows.cpu()] = torch.tensor(step.tokens, dtype=torch.long)
        cache = PagedBatchCache(self.pool, layout)
        out = self.model(input_ids=input_ids.view(-1, query).to(self.device), attention_mask=attention_mask,
                         position_ids=positions, past_key_values=cache, use_cache=True, logits_to_keep=step.keep,
                         adapter_names=step.adapters)
        return out.logits
