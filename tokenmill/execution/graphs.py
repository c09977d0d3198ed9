"""Graph capture of a step's forward: CUDA graphs on a GPU, and the CPU stand-in the tests use.

`capture(forward)` returns (replay, output): after it, `replay()` recomputes `output` in place from the static
input tensors `forward` reads. A forward fit for capture reads its inputs only from tensors whose storage stays
put, and makes no host sync (no `.item()`, no branch on a tensor's value) and no decision from Python state that
changes between replays. The engine's decode steps (engine/decode_graphs.py) and generate()'s static-cache decode
(generation/static_graph.py) capture through here; the execution policy says where (`captures_decode_steps`).
"""

from __future__ import annotations

from typing import Callable


class CudaGraphCapture:
    """Records a forward as a CUDA graph (after two warm-up runs on a side stream, where lazy initialisation and
    autotuning happen); every graph of one owner shares one memory pool."""

    def __init__(self):
        self.pool = None

    def capture(self, forward: Callable[[], "torch.Tensor"]):
        import torch

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                forward()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            output = forward()
        self.pool = graph.pool()
        return graph.replay, output


class EagerStandIn:
    """The CPU's stand-in: `replay` runs the forward again over the same static buffers, into the same output. It
    checks what a CPU can: the static-buffer contract, padding and bookkeeping done outside the forward."""

    def capture(self, forward):
        output = forward()
        return lambda: output.copy_(forward()), output


def graph_capture(policy):
    """The capture a model's decode steps use under its execution policy: CUDA graphs on one CUDA device, else
    None (eager steps)."""
    return CudaGraphCapture() if policy.captures_decode_steps else None
