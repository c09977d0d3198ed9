"""Window caches: keep the last `window` positions (sliding), or the first `sinks` plus the most recent (sink).

A query at position p sees keys at positions > p - recent (and, for the sink kind, positions < sinks), where
`recent = window - sinks`. Keys keep the rotary positions they were written with, so generation continues
past the window with bounded memory. After each update only the entries a *next* query could see are kept
(sinks + recent - 1), which lets a one-token decode step run without any mask.
"""

from __future__ import annotations

import torch

from .base import Cache, LayerCache, causal_over_seen


class WindowLayer(LayerCache):
    def __init__(self, window: int, sinks: int = 0):
        if window is None or window < 2:
            raise ValueError(f"a window cache needs window >= 2, got {window!r}")
        if sinks < 0 or sinks >= window - 1:
            raise ValueError(f"num_sink_tokens must be in [0, window - 1), got {sinks} for window {window}")
        self.window, self.sinks, self.recent = int(window), int(sinks), int(window) - int(sinks)
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None
        self.seen = 0  # positions seen, stored or dropped
        self._returned_positions: torch.Tensor | None = None  # key positions of the last update's output

    def _stored_positions(self, device) -> torch.Tensor:
        """Positions of the entries currently stored (before this step's keys)."""
        stored = 0 if self.keys is None else self.keys.shape[-2]
        if stored == self.seen:
            return torch.arange(self.seen, device=device)
        recent = stored - self.sinks
        return torch.cat([torch.arange(self.sinks, device=device),
                          torch.arange(self.seen - recent, self.seen, device=device)])

    def update(self, keys, values):
        count = keys.shape[-2]
        self._returned_positions = torch.cat([
            self._stored_positions(keys.device), torch.arange(self.seen, self.seen + count, device=keys.device)])
        if self.keys is None:
            full_keys, full_values = keys, values
        else:
            full_keys = torch.cat([self.keys, keys], dim=-2)
            full_values = torch.cat([self.values, values], dim=-2)
        self.seen += count
        self.keys, self.values = self._trim(full_keys), self._trim(full_values)
        return full_keys, full_values

    def _trim(self, tensor: torch.Tensor) -> torch.Tensor:
        keep_recent = self.recent - 1  # the next query adds itself as the newest visible key
        if tensor.shape[-2] <= self.sinks + keep_recent:
            return tensor
        if self.sinks == 0:
            return tensor[..., -keep_recent:, :].contiguous()
        return torch.cat([tensor[..., :self.sinks, :], tensor[..., -keep_recent:, :]], dim=-2)

    def visible_mask(self, allowed, is_causal, query_length):
        positions = self._returned_positions
        if allowed is None and query_length == 1:
            return None, False  # trimming left exactly what the newest query may see
        past = self.seen - query_length
        seen = causal_over_seen(allowed, past, query_length, positions.device)
        columns = seen.index_select(-1, positions + (seen.shape[-1] - self.seen))
        query_positions = torch.arange(past, self.seen, device=positions.device)[:, None]
        in_window = (positions[None, :] > query_positions - self.recent) | (positions[None, :] < self.sinks)
        return columns & in_window, False

    def seq_length(self) -> int:
        return self.seen

    def batch_size(self) -> int:
        return 0 if self.keys is None else self.keys.shape[0]

    def crop(self, length: int) -> None:
        stored = 0 if self.keys is None else self.keys.shape[-2]
        if stored != self.seen:
            raise ValueError("a window cache that has dropped positions cannot be cropped")
        if self.keys is not None:
            self.keys, self.values = self.keys[..., :length, :], self.values[..., :length, :]
        self.seen = min(self.seen, length)

    def reorder(self, index: torch.Tensor) -> None:
        if self.keys is not None:
            index = index.to(self.keys.device)
            self.keys = self.keys.index_select(0, index)
            self.values = self.values.index_select(0, index)


class SlidingWindowCache(Cache):
    """Keep the last `sliding_window` positions; `SlidingWindowCache(config)` reads config.sliding_window."""

    def __init__(self, config=None, sliding_window: int | None = None, **unused):
        window = sliding_window if sliding_window is not None else getattr(config, "sliding_window", None)
        if window is None:
            raise ValueError("SlidingWindowCache needs sliding_window (or a config that has one)")
        self.sliding_window = int(window)
        WindowLayer(self.sliding_window)  # validate now, not at the first forward
        super().__init__(lambda layer_idx: WindowLayer(self.sliding_window))


class SinkCache(Cache):
    """StreamingLLM's attention sinks: the first `num_sink_tokens` plus the most recent positions."""

    def __init__(self, window_length: int = 256, num_sink_tokens: int = 4, **unused):
        self.window_length, self.num_sink_tokens = int(window_length), int(num_sink_tokens)
        WindowLayer(self.window_length, self.num_sink_tokens)
        super().__init__(lambda layer_idx: WindowLayer(self.window_length, self.num_sink_tokens))
