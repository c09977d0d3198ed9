"""Row-wise argmax and top-k over a large vocabulary: greedy decoding's per-step reductions.

On CPU, torch's argmax/topk along a 50k-wide row are scalar loops (~4 ms for 32 rows of 49k at one thread)
while amax is vectorized (~0.3 ms). argmax runs as one vectorized C pass where the model's kernel set (its
execution policy's `ops`) has one; otherwise,
and for top-k, each row is cut into blocks, the block maxima found with amax, and the
exact answer read from the few blocks that can hold it: the n largest values of a row all lie in its n blocks
with the largest maxima. Results equal torch's: argmax returns the first maximum (NaN counting as the
maximum, as torch does); top-k values are the same, ids among tied values may come in another order.
"""

from __future__ import annotations

import torch

BLOCK = 1024


def _block_maxima(rows: torch.Tensor) -> torch.Tensor:
    """[batch, ceil(vocab / BLOCK)] maximum of each block of each row (NaN propagates, as in argmax)."""
    batch, vocab = rows.shape
    full = vocab // BLOCK * BLOCK
    maxima = rows[:, :full].reshape(batch, -1, BLOCK).amax(-1)
    if full < vocab:
        maxima = torch.cat([maxima, rows[:, full:].amax(-1, keepdim=True)], 1)
    return maxima


def _block_columns(blocks: torch.Tensor) -> torch.Tensor:
    """The column ids covered by `blocks` [batch, k] → [batch, k * BLOCK]."""
    return (blocks[..., None] * BLOCK + torch.arange(BLOCK, device=blocks.device)).flatten(1)


def argmax_rows(rows: torch.Tensor, ops) -> torch.Tensor:
    """rows.argmax(-1) for a 2D tensor; `ops`: the model's kernel set (`model.execution_policy.ops`)."""
    vocab = rows.shape[-1]
    if ops.argmax_applies(rows):
        return ops.argmax(rows)
    if vocab < 4 * BLOCK:
        return rows.argmax(-1)
    best_block = _block_maxima(rows).argmax(-1)  # the first block holding the row's maximum
    # a short last block reads its last column again in place of the missing ones: the first maximum still wins
    columns = _block_columns(best_block[:, None]).clamp(max=vocab - 1)
    return best_block * BLOCK + rows.gather(1, columns).argmax(-1)


def topk_rows(rows: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, ids) of each row's k largest entries, largest first; k >= 1."""
    batch, vocab = rows.shape
    full = vocab // BLOCK * BLOCK
    if full < 4 * BLOCK or k * 4 > full // BLOCK:  # the candidate blocks would cover much of the row
        return torch.topk(rows, k)
    blocks = rows[:, :full].reshape(batch, -1, BLOCK).amax(-1).topk(k).indices
    columns = _block_columns(blocks)
    if full < vocab:  # the short last block is always a candidate
        columns = torch.cat([columns, torch.arange(full, vocab, device=rows.device).expand(batch, -1)], 1)
    values, picked = rows.gather(1, columns).topk(k)
    return values, columns.gather(1, picked)
