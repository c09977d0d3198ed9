"""Decode steps replayed from captured graphs (CUDA graphs on a GPU): one launch sequence per padded shape
instead of hundreds of Python-dispatched kernel launches per step.

A decode-only step (every row one new token, no LoRA rows) is padded to a fixed shape: its batch to the next
of BATCH_SIZES and its context columns to the next power of two (at least MIN_COLUMNS, at most the model's
context). Each (batch, columns) shape is captured once, the first time a step needs it, over static input
buffers: token ids, positions, the padding mask, every column's pool slot and every row's write slot. A step
copies its values into those buffers and replays. Padding rows and padding columns point at a scratch block
the block manager never hands out (the pool holds one block more than the engine counts), so a padding row
writes its keys there, and its own mask column lets it attend to that slot alone: no real sequence's blocks
are touched and no softmax row is empty.

Graph capture is a device feature (execution/graphs.py): CUDA graphs on a GPU; on the CPU the tests use the
stand-in that re-runs the step's forward on the buffers at each replay, to check the padding, the bucketing and
the scratch block against the eager engine, which is all of this that a CPU can check. A capture that fails (a host sync inside the forward, say) turns graphs off for the runner with one warning;
the step then runs eagerly.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from ..cache.paged import BatchLayout, PagedBatchCache, PagedKVPool, build_layout
from ..execution.graphs import CudaGraphCapture

BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)  # vLLM's capture sizes, up to the largest running batch
MIN_COLUMNS = 64  # the narrowest context a graph is captured for: shorter steps pad up to it


def padded_batch(rows: int) -> int | None:
    """The captured batch size that holds `rows`, or None past the largest."""
    return next((size for size in BATCH_SIZES if size >= rows), None)


def padded_columns(columns: int) -> int:
    """The captured context width for `columns`: a power of two, at least MIN_COLUMNS."""
    return max(MIN_COLUMNS, 1 << (columns - 1).bit_length())


@dataclass
class _StepGraph:
    """One captured shape: the static buffers a step fills and the output its replay writes."""

    input_ids: torch.Tensor  # [batch, 1]
    positions: torch.Tensor  # [batch, 1]
    mask: torch.Tensor  # [batch, columns] 1 for context, 0 for padding
    layout: BatchLayout  # its new_slots [batch] and context_slots [batch, columns] are static buffers
    replay: Callable[[], None] | None = None
    logits: torch.Tensor | None = None


class DecodeGraphs:
    """Captured decode steps for one model runner (its model, its pool with the scratch block past `blocks`)."""

    def __init__(self, model, pool: PagedKVPool, blocks: int, capture=None):
        self.model, self.pool = model, pool
        self.scratch_slot = blocks * pool.block_size  # the first slot of the block past the engine's count
        self.capture = capture if capture is not None else CudaGraphCapture()
        self.graphs: dict[tuple[int, int], _StepGraph] = {}
        self.enabled = True

    def serves(self, step) -> bool:
        """A decode-only step (one token per row, last-position logits, no LoRA row) of a captured size."""
        rows = step.rows
        return (self.enabled and step.keep == 1 and all(count == 1 for count in rows.counts)
                and not any(step.adapters) and padded_batch(len(rows.counts)) is not None)

    def run(self, step) -> torch.Tensor | None:
        """The step's logits [rows, 1, vocab] (a view of the graph's output), or None when it runs eagerly."""
        rows = step.rows
        layout, mask, positions = build_layout(rows.tables, rows.starts, rows.counts, self.pool.block_size,
                                               self.pool.device)
        batch, columns = layout.context_slots.shape
        shape = (padded_batch(batch), padded_columns(columns))
        graph = self.graphs.get(shape)
        fresh = graph is None
        if fresh:
            graph = self._buffers(*shape)
        self._fill(graph, step.tokens, layout, mask, positions)
        if fresh and not self._capture(graph, *shape):
            return None
        graph.replay()
        return graph.logits[:batch]

    def _buffers(self, batch: int, width: int) -> _StepGraph:
        device = self.pool.device
        layout = BatchLayout(past_length=width - 1, new_rows=torch.arange(batch, device=device),
                             new_slots=torch.full((batch,), self.scratch_slot, dtype=torch.long, device=device),
                             context_slots=torch.full((batch, width), self.scratch_slot, dtype=torch.long,
                                                      device=device))
        return _StepGraph(torch.zeros(batch, 1, dtype=torch.long, device=device),
                          torch.zeros(batch, 1, dtype=torch.long, device=device),
                          torch.zeros(batch, width, dtype=torch.long, device=device), layout)

    def _fill(self, graph: _StepGraph, tokens: list[int], layout: BatchLayout, mask: torch.Tensor,
              positions: torch.Tensor) -> None:
        """Copy one step into the static buffers: real rows right-aligned, the rest at the scratch slot."""
        batch, columns = layout.context_slots.shape
        width = graph.mask.shape[1]
        graph.input_ids.zero_()
        graph.input_ids[:batch, 0] = torch.tensor(tokens, dtype=torch.long, device=graph.input_ids.device)
        graph.positions.zero_()
        graph.positions[:batch] = positions
        graph.mask.zero_()
        graph.mask[:batch, width - columns:] = mask
        graph.layout.context_slots.fill_(self.scratch_slot)
        graph.layout.context_slots[:batch, width - columns:] = layout.context_slots
        graph.layout.new_slots.fill_(self.scratch_slot)
        graph.layout.new_slots[:batch] = layout.new_slots

    def _capture(self, graph: _StepGraph, batch: int, width: int) -> bool:
        def forward() -> torch.Tensor:
            cache = PagedBatchCache(self.pool, graph.layout)
            return self.model(input_ids=graph.input_ids, attention_mask=graph.mask, position_ids=graph.positions,
                              past_key_values=cache, use_cache=True, logits_to_keep=1).logits

        try:
            graph.replay, graph.logits = self.capture.capture(forward)
        except Exception as error:  # noqa: BLE001 - any capture failure means: run eagerly from now on
            self.enabled = False
            warnings.warn(f"decode steps run eagerly: capturing a step of {batch} rows x {width} columns failed "
                          f"({type(error).__name__}: {error})", RuntimeWarning, stacklevel=3)
            return False
        self.graphs[(batch, width)] = graph
        return True
