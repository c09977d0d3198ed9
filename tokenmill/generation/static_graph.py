"""generate()'s decode steps over the static cache, replayed from one captured graph (CUDA graphs on a GPU).

The static cache's shapes never change, so one decode step of the batch can be captured once and replayed for
every later token: the step's token ids, positions and write slot are copied into static buffers, the cache
layers write at the slot tensor instead of their Python length (StaticCache.write_at), and the lengths advance
outside the graph. Where the step would depend on more than those buffers it is not captured: a left-padded
batch (its mask grows every step), sliding-window layers (their masks depend on the length),
`disable_compile=True` (transformers' switch for its compiled static-cache decode), or a capture that fails
(then one warning, and the steps run eagerly).
"""

from __future__ import annotations

import warnings

import torch

from ..cache.static import StaticCache
from ..execution.graphs import graph_capture


class StaticDecodeGraph:
    """One batch's decode step over `cache`, captured on first use through `capture`."""

    def __init__(self, model, cache: StaticCache, batch: int, capture):
        device = model.device
        self.model, self.cache, self.capture = model, cache, capture
        self.input_ids = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.positions = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.slot = torch.zeros(1, dtype=torch.long, device=device)
        self.replay = None
        self.output: torch.Tensor | None = None
        self.failed = False

    def _forward(self) -> torch.Tensor:
        return self.model(input_ids=self.input_ids, position_ids=self.positions, past_key_values=self.cache,
                          use_cache=True, logits_to_keep=1).logits

    def logits(self, step_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor | None:
        """The step's logits [batch, 1, vocab] (the graph's output, overwritten by the next step), or None when
        the capture failed (the caller runs this and every later step eagerly)."""
        self.input_ids.copy_(step_ids)
        self.positions.copy_(positions)
        self.slot.copy_(positions[0])  # no padding: every row writes the same slot
        self.cache.write_at(self.slot)
        try:
            if self.replay is None:
                self.replay, self.output = self.capture.capture(self._forward)
            self.replay()
        except Exception as error:  # noqa: BLE001 - any capture failure means: run eagerly from now on
            self.failed = True
            warnings.warn(f"generate() decodes eagerly: capturing its static-cache step failed "
                          f"({type(error).__name__}: {error})", RuntimeWarning, stacklevel=3)
            return None
        finally:
            self.cache.write_at(None)
        self.cache.advance(1)
        return self.output


def static_graph_for(model, cache, attention_mask: torch.Tensor, config) -> StaticDecodeGraph | None:
    """The captured decode step for this generation, where the policy captures and the step can be captured."""
    capture = graph_capture(model.execution_policy)
    if capture is None or not isinstance(cache, StaticCache) or getattr(config, "disable_compile", None):
        return None
    if any(getattr(layer, "sliding_window", None) for layer in model.model.layers):
        return None
    if not bool(attention_mask.all()):  # left padding: the mask changes every step
        return None
    return StaticDecodeGraph(model, cache, attention_mask.shape[0], capture)
