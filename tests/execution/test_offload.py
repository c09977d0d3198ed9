"""Disk offload hooks: memory under a module's tensors released after it runs and brought back before, with the
same values; activations moved at module boundaries."""

import mmap
from dataclasses import dataclass

import torch
from torch import nn

from tokenmill.execution.offload import DiskOffload, move_to


def _resident_pages(start: int, length: int) -> int:  # length: unused, the mapping is the unit
    """Resident pages of the mapping holding `start` (its Rss in /proc/self/smaps); each test maps its own file."""
    lines = open("/proc/self/smaps").read().splitlines()
    for index, line in enumerate(lines):
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5:
            low, high = (int(part, 16) for part in fields[0].split("-"))
            if low <= start < high:
                rss = next(entry for entry in lines[index + 1:] if entry.startswith("Rss:"))
                return int(rss.split()[1]) * 1024 // mmap.PAGESIZE
    raise AssertionError("no mapping holds the address")


def test_owned_weights_move_to_the_offload_file_and_leave_memory_between_runs(tmp_path):
    torch.manual_seed(0)
    layer = nn.Linear(1024, 64)
    before = {name: tensor.clone() for name, tensor in layer.state_dict().items()}
    weight_object = layer.weight
    inputs = torch.randn(3, 1024)
    expected = layer(inputs)
    DiskOffload({"model.layers.0": layer}, tmp_path)
    assert list(tmp_path.iterdir()) == []  # the offload file is unlinked: nothing is left behind
    assert layer.weight is weight_object  # rebound in place: whatever holds the tensor still holds it
    assert _resident_pages(layer.weight.data_ptr(), 0) == 0
    assert torch.equal(layer(inputs), expected)
    assert _resident_pages(layer.weight.data_ptr(), 0) == 0  # dropped again after the forward
    # read outside a forward: the pages come back from the file, the values unchanged
    assert all(torch.equal(layer.state_dict()[name], value) for name, value in before.items())


def test_file_mapped_weights_are_dropped_from_the_process_and_read_again(tmp_path):
    path = tmp_path / "weights.bin"
    values = torch.arange(64 * 1024, dtype=torch.float32)
    path.write_bytes(values.numpy().tobytes())
    with open(path, "rb") as handle:
        mapping = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
    layer = nn.Linear(1024, 64, bias=False)
    layer.weight = nn.Parameter(torch.frombuffer(mapping, dtype=torch.float32).view(64, 1024),
                                requires_grad=False)
    layer.weight.sum()  # every page resident
    assert _resident_pages(layer.weight.data_ptr(), values.nbytes) == values.nbytes // mmap.PAGESIZE
    DiskOffload({"model.layers.0": layer}, tmp_path)
    assert _resident_pages(layer.weight.data_ptr(), values.nbytes) == 0
    out = layer(torch.ones(1, 1024))
    assert torch.equal(out, values.view(64, 1024).sum(1, keepdim=True).T)
    assert _resident_pages(layer.weight.data_ptr(), values.nbytes) == 0


@dataclass
class _Mask:
    allowed: torch.Tensor | None
    is_causal: bool


def test_move_to_reaches_into_tuples_and_dataclasses():
    mask = _Mask(torch.ones(2, dtype=torch.bool), True)
    moved = move_to((torch.zeros(2), (torch.ones(1), None), mask, "text"), torch.device("meta"))
    assert moved[0].is_meta and moved[1][0].is_meta and moved[1][1] is None
    assert moved[2].allowed.is_meta and moved[2].is_causal and moved[3] == "text"


def test_a_layer_stays_resident_while_another_forward_uses_it_and_after_an_error(tmp_path):
    layer = nn.Linear(1024, 64)
    offload = DiskOffload({"model.layers.0": layer}, tmp_path)
    disk = offload.layers[0]
    disk.materialize()  # a second thread's forward is inside the layer
    layer(torch.ones(1, 1024))
    assert _resident_pages(layer.weight.data_ptr(), 0) > 0  # not dropped under the other reader
    disk.release()
    assert _resident_pages(layer.weight.data_ptr(), 0) == 0
    try:
        layer(torch.ones(1, 5))  # wrong width: the forward raises
    except RuntimeError:
        pass
    assert _resident_pages(layer.weight.data_ptr(), 0) == 0 and disk.users == 0
