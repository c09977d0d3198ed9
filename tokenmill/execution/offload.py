"""Running a model spread over devices: forward hooks that move activations at module boundaries, and disk
offload, where a decoder layer's weights are resident only while it runs.

A disk layer's tensors keep their identity (so fused projections and every view stay valid); only the memory
under them comes and goes:
- a tensor viewing a memory-mapped file (GGUF blocks, a mapped safetensors) stays mapped: after the layer runs
  its pages are dropped from the process (madvise DONTNEED; the file still holds them), before it runs they are
  asked for (madvise WILLNEED);
- a tensor owning its memory (anything the loader computed: dequantized, converted, fused) is written once to an
  unlinked file in the offload folder; its storage is freed after the layer runs (resized to 0, as FSDP does)
  and read back before it runs (posix_fadvise WILLNEED asks for the next layer's bytes one layer ahead).
The layers themselves know nothing of this.
"""

from __future__ import annotations

import ctypes
import dataclasses
import mmap
import os
import tempfile
import threading
from pathlib import Path

import torch
from torch import nn

_PAGE = mmap.PAGESIZE
_libc = ctypes.CDLL(None, use_errno=True)
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def move_to(value, device: torch.device):
    """Tensors (also inside tuples, lists and dataclasses such as AttentionMask) on `device`; the rest as is."""
    if isinstance(value, torch.Tensor):
        return value if value.device == device else value.to(device)
    if isinstance(value, (tuple, list)):
        return type(value)(move_to(item, device) for item in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {f.name: move_to(getattr(value, f.name), device) for f in dataclasses.fields(value)
                   if isinstance(getattr(value, f.name), torch.Tensor)}
        return dataclasses.replace(value, **changes) if changes else value
    return value


def install_device_hook(module: nn.Module, device: torch.device):
    """Inputs of `module` moved to `device` before it runs (activations cross devices at module boundaries)."""
    def to_device(_module, args, kwargs):
        return move_to(args, device), {name: move_to(value, device) for name, value in kwargs.items()}
    return module.register_forward_pre_hook(to_device, with_kwargs=True)


def file_backed_ranges() -> list[tuple[int, int]]:
    """(start, end) of this process's mappings of regular files, from /proc/self/maps."""
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].startswith("/") and not fields[5].startswith("/dev/"):
            start, end = (int(part, 16) for part in fields[0].split("-"))
            ranges.append((start, end))
    return ranges


def _madvise(start: int, end: int, advice: int) -> None:
    first, last = start // _PAGE * _PAGE, -(-end // _PAGE) * _PAGE
    if _libc.madvise(first, last - first, advice) != 0:
        raise OSError(ctypes.get_errno(), f"madvise({advice}) failed on {last - first} bytes")


def _byte_view(storage: torch.UntypedStorage) -> memoryview:
    """The storage's memory as a writable buffer for os.pwrite / os.preadv (numpy would pin its size)."""
    return memoryview((ctypes.c_char * storage.nbytes()).from_address(storage.data_ptr())).cast("B")


@dataclasses.dataclass
class _OwnedStorage:
    storage: torch.UntypedStorage
    nbytes: int
    offset: int  # where its bytes are in the offload file


class DiskLayer:
    """One disk-offloaded module: its mapped ranges and owned storages, released and brought back."""

    def __init__(self, name: str, module: nn.Module, file_ranges: list[tuple[int, int]], offload_file: int,
                 file_end: int):
        self.name = name
        self.mapped: list[tuple[int, int]] = []
        self.owned: list[_OwnedStorage] = []
        self.lock = threading.Lock()
        seen = set()
        for tensor in (*module.parameters(), *module.buffers()):
            storage = tensor.untyped_storage()
            if storage.nbytes() == 0 or tensor.device.type != "cpu" or storage.data_ptr() in seen:
                continue
            start = tensor.data_ptr()
            if any(low <= start < high for low, high in file_ranges):
                self.mapped.append((start, start + tensor.numel() * tensor.element_size()))
                continue
            seen.add(storage.data_ptr())
            if not storage.resizable():
                raise ValueError(f"{name}: a weight of {tensor.nbytes} bytes neither owns its memory nor maps a "
                                 f"file, so it cannot be offloaded to disk; place {name} on 'cpu'")
            self.owned.append(_OwnedStorage(storage, storage.nbytes(), file_end))
            os.pwrite(offload_file, _byte_view(storage), file_end)
            file_end += storage.nbytes()
        self.file_end = file_end
        self.offload_file = offload_file
        self.resident = True
        self.users = 0  # forwards running this layer now (generate() may run in several threads at once)

    @property
    def nbytes(self) -> int:
        return sum(end - start for start, end in self.mapped) + sum(item.nbytes for item in self.owned)

    def release(self) -> None:
        with self.lock:
            self.users = max(0, self.users - 1)
            if self.users:
                return  # another thread's forward still reads these weights
            for start, end in self.mapped:
                _madvise(start, end, mmap.MADV_DONTNEED)  # read-only pages: the file gives them back on use
            for item in self.owned:
                item.storage.resize_(0)
            self.resident = False

    def materialize(self) -> None:
        with self.lock:
            self.users += 1
            if self.resident:
                return
            for item in self.owned:
                item.storage.resize_(item.nbytes)
                view, done = _byte_view(item.storage), 0
                while done < item.nbytes:
                    read = os.preadv(self.offload_file, [view[done:]], item.offset + done)
                    if read <= 0:
                        raise OSError(f"{self.name}: the offload file ended early (deleted or truncated?)")
                    done += read
            self.resident = True

    def prefetch(self) -> None:
        """Ask the OS for this layer's bytes ahead of its turn (page cache only: not in this process's RSS)."""
        for start, end in self.mapped:
            _madvise(start, end, mmap.MADV_WILLNEED)
        if self.owned:
            first = self.owned[0].offset
            os.posix_fadvise(self.offload_file, first, self.owned[-1].offset + self.owned[-1].nbytes - first,
                             os.POSIX_FADV_WILLNEED)


class DiskOffload:
    """The disk layers of one model, in execution order, with their hooks; keeps the offload file open."""

    def __init__(self, modules: dict[str, nn.Module], offload_folder: Path):
        handle, path = tempfile.mkstemp(prefix="tokenmill-offload-", suffix=".bin", dir=offload_folder)
        os.unlink(path)  # the file lives as long as this object holds it: nothing is left behind
        self.offload_file = handle
        ranges = file_backed_ranges()
        self.layers: list[DiskLayer] = []
        end = 0
        for name, module in modules.items():
            layer = DiskLayer(name, module, ranges, handle, end)
            end = layer.file_end
            self.layers.append(layer)
        self.file_bytes = end
        for index, (layer, module) in enumerate(zip(self.layers, modules.values())):
            following = self.layers[(index + 1) % len(self.layers)]
            module.register_forward_pre_hook(self._before(layer, following))
            module.register_forward_hook(self._after(layer), always_call=True)  # released even when it raises
        self.release_all()

    @staticmethod
    def _before(layer: DiskLayer, following: DiskLayer):
        def hook(_module, _args):
            layer.materialize()
            following.prefetch()
        return hook

    @staticmethod
    def _after(layer: DiskLayer):
        def hook(_module, _args, _output):
            layer.release()
        return hook

    def release_all(self) -> None:
        for layer in self.layers:
            layer.release()

    def materialize_all(self) -> None:
        """Every disk layer resident (e.g. to read or save the weights); `release_all` drops them again."""
        for layer in self.layers:
            layer.materialize()

    def __del__(self):
        try:
            os.close(self.offload_file)
        except (OSError, AttributeError):
            pass


def drop_mapped_pages(modules: list[nn.Module]) -> None:
    """Drop from RSS the pages of every file mapping these modules' tensors view (loading touched the whole
    file); the pages still used come back from the file on their first use."""
    ranges = file_backed_ranges()
    hit = set()
    for module in modules:
        for tensor in (*module.parameters(), *module.buffers()):
            if tensor.device.type == "cpu" and tensor.untyped_storage().nbytes():
                hit.update((low, high) for low, high in ranges if low <= tensor.data_ptr() < high)
    for low, high in hit:
        _madvise(low, high, mmap.MADV_DONTNEED)
