"""execution/graphs.py: the CPU stand-in keeps the capture contract (replay recomputes the same output tensor
from the static inputs' current values), and the policy picks CUDA graphs on one CUDA device only."""

import torch

from tokenmill.execution.graphs import CudaGraphCapture, EagerStandIn, graph_capture
from tokenmill.execution.policy import ExecutionPolicy


def test_the_stand_in_replays_into_the_captured_output_from_the_inputs_now():
    static_input = torch.tensor([1.0, 2.0])
    replay, output = EagerStandIn().capture(lambda: static_input * 3)
    assert output.tolist() == [3.0, 6.0]
    static_input.copy_(torch.tensor([5.0, -1.0]))
    replay()
    assert output.tolist() == [15.0, -3.0]  # the same tensor, refilled


def test_the_policy_chooses_cuda_graphs_on_one_cuda_device():
    assert graph_capture(ExecutionPolicy()) is None
    assert isinstance(graph_capture(ExecutionPolicy(device="cuda")), CudaGraphCapture)
