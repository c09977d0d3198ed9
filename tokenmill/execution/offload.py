"""Running a model spread over devices: forward hooks that move activations at module boundaries, and disk
offload, where a decoder layer's weights are resident only while it runs.

A disk layer's tensors keep their identity (so fused projections and every view stay valid) and all view file
pages: a tensor that already maps its checkpoint (GGUF blocks, a memory-mapped safetensors) stays as it is; one
that owns its memory (anything the loader computed: dequantized, converted, fused) is written once to an
unlinked file in the offload folder and rebound to a private mapping of it. After the layer runs its pages are
dropped from the process (madvise DONTNEED: clean file pages, so the file gives them back on the next touch);
before it runs they are mapped in one call (MADV_POPULATE_READ), and the next disk layer is asked for ahead
(MADV_WILLNEED, into the page cache). Reading a weight outside a forward is always safe: its pages fault in.
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
_POPULATE_READ = 22 if os.uname().sysname == "Linux" else None  # MADV_POPULATE_READ (Linux 5.14): no per-page faults
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


def _madvise(start: int, end: int, advice: int, required: bool = True) -> None:
    first, last = start // _PAGE * _PAGE, -(-end // _PAGE) * _PAGE
    if _libc.madvise(first, last - first, advice) != 0 and required:
        raise OSError(ctypes.get_errno(), f"madvise({advice}) failed on {last - first} bytes")


def _byte_view(storage: torch.UntypedStorage) -> memoryview:
    """The storage's memory as a buffer for os.pwrite (numpy would pin the storage's size)."""
    return memoryview((ctypes.c_char * storage.nbytes()).from_address(storage.data_ptr())).cast("B")


def held_tensors(module: nn.Module) -> list[torch.Tensor]:
    """Every tensor object the module and its submodules hold: parameters, buffers, and the tensors inside plain
    helper objects in their attributes (a fused projection's stacked weight, its row views, its QuantizedWeight)."""
    found: list[torch.Tensor] = []
    for part in module.modules():
        found += [*part._parameters.values(), *part._buffers.values()]
        for value in vars(part).values():
            _collect_tensors(value, found, depth=3)
    unique = {id(tensor): tensor for tensor in found if tensor is not None and tensor.device.type == "cpu"}
    return list(unique.values())


def _collect_tensors(value, found: list, depth: int) -> None:
    if isinstance(value, torch.Tensor):
        found.append(value)
    elif depth == 0 or isinstance(value, (nn.Module, dict, str, bytes)):
        return  # submodules are walked by modules(); their dicts are the parameters and buffers above
    elif isinstance(value, (list, tuple)):
        for item in value:
            _collect_tensors(item, found, depth - 1)
    elif hasattr(value, "__dict__") and not isinstance(value, type):
        for inner in vars(value).values():
            _collect_tensors(inner, found, depth - 1)


class DiskLayer:
    """One disk-offloaded module, every tensor of it viewing a file mapping: its pages dropped after it runs."""

    def __init__(self, name: str, module: nn.Module):
        self.name = name
        self.lock = threading.Lock()
        self.users = 0  # forwards running this layer now (generate() may run in several threads at once)
        spans = {(t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()) for t in held_tensors(module)}
        self.mapped = sorted(span for span in spans if span[1] > span[0])

    @property
    def nbytes(self) -> int:
        return sum(end - start for start, end in self.mapped)

    def release(self) -> None:
        with self.lock:
            self.users = max(0, self.users - 1)
            if self.users:
                return  # another thread's forward still reads these weights
            for start, end in self.mapped:
                _madvise(start, end, mmap.MADV_DONTNEED)  # unwritten file pages: the file gives them back on use

    def materialize(self) -> None:
        """Map the layer's pages in one call each where the kernel can (else the forward faults them in)."""
        with self.lock:
            self.users += 1
            if self.users == 1 and _POPULATE_READ is not None:
                for start, end in self.mapped:
                    _madvise(start, end, _POPULATE_READ, required=False)

    def prefetch(self) -> None:
        """Ask the OS for this layer's bytes ahead of its turn (page cache only: not in this process's RSS)."""
        for start, end in self.mapped:
            _madvise(start, end, mmap.MADV_WILLNEED)


class DiskOffload:
    """The disk layers of one model, in execution order, with their hooks. Memory the loader computed (owned
    storages) is written to an unlinked file in the offload folder and every tensor on it rebound to a private
    mapping of that file, so all a disk layer holds is file pages. `prepare(module)` runs on each layer just
    before its storages are written (device_map fuses its projections there): one layer's copies at a time."""

    def __init__(self, modules: dict[str, nn.Module], offload_folder: Path, prepare=None):
        handle, path = tempfile.mkstemp(prefix="tokenmill-offload-", suffix=".bin", dir=offload_folder)
        os.unlink(path)  # the file lives as long as its mappings: nothing is left behind
        self.mappings: list[mmap.mmap] = []
        self.file_bytes = 0
        try:
            for module in modules.values():
                if prepare is not None:
                    prepare(module)
                # a storage two layers share is written for each (rare; an id kept across layers could be reused)
                self._rebind_owned_storages(module, handle)
        finally:
            os.close(handle)
        self.layers = [DiskLayer(name, module) for name, module in modules.items()]
        for index, (layer, module) in enumerate(zip(self.layers, modules.values())):
            following = self.layers[(index + 1) % len(self.layers)]
            module.register_forward_pre_hook(self._before(layer, following))
            module.register_forward_hook(self._after(layer), always_call=True)  # released even when it raises
        self.release_all()

    def _rebind_owned_storages(self, module: nn.Module, handle: int) -> None:
        """Write the module's in-memory storages at the file's end and rebind their tensors to a mapping of
        that range (page-aligned: each storage maps on its own), so their memory is freed now."""
        file_ranges = file_backed_ranges()
        start = self.file_bytes
        owned: dict[int, tuple[torch.UntypedStorage, int, list[torch.Tensor]]] = {}
        for tensor in held_tensors(module):
            storage = tensor.untyped_storage()
            if storage.nbytes() == 0 or any(low <= tensor.data_ptr() < high for low, high in file_ranges):
                continue  # already file pages (GGUF blocks, a mapped safetensors)
            if storage._cdata not in owned:
                owned[storage._cdata] = (storage, self.file_bytes - start, [])
                os.pwrite(handle, _byte_view(storage), self.file_bytes)
                self.file_bytes += -(-storage.nbytes() // _PAGE) * _PAGE
            owned[storage._cdata][2].append(tensor)
        if not owned:
            return
        os.ftruncate(handle, self.file_bytes)  # the last storage's page padding, so the whole range maps
        mapping = mmap.mmap(handle, self.file_bytes - start, access=mmap.ACCESS_COPY, offset=start)
        self.mappings.append(mapping)
        for storage, offset, tensors in owned.values():
            mapped = torch.frombuffer(mapping, dtype=torch.uint8, count=storage.nbytes(),
                                      offset=offset).untyped_storage()
            for tensor in tensors:  # the same tensor objects: fused projections and views stay current
                with torch.no_grad():
                    tensor.set_(mapped, tensor.storage_offset(), tensor.size(), tensor.stride())

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


def file_page_releaser():
    """A callable that drops the file pages a checked weight (a tensor, or GGUF blocks) occupies in this process:
    loading a placed model reads each weight once, so it never holds the whole checkpoint (read again on use)."""
    ranges = file_backed_ranges()

    def release(weight) -> None:
        tensor = getattr(weight, "blocks", weight)
        start = tensor.data_ptr()
        if tensor.is_contiguous() and any(low <= start < high for low, high in ranges):
            _madvise(start, start + tensor.numel() * tensor.element_size(), mmap.MADV_DONTNEED)
    return release


def copy_into_memory(modules: list[nn.Module]) -> None:
    """Give each file-backed tensor of these in-memory modules a copy of its own: their reads then never touch the
    file mapping, where a fault may map a whole page-cache folio (the neighbouring weights with it), so the
    process holds their bytes once, as the budget counts them. The same tensor objects are rebound."""
    ranges = file_backed_ranges()
    copies: dict[tuple, torch.Tensor] = {}
    for module in modules:
        for tensor in held_tensors(module):
            if not tensor.is_contiguous() or not any(low <= tensor.data_ptr() < high for low, high in ranges):
                continue
            key = (tensor.data_ptr(), tensor.numel(), tensor.dtype)  # a tied head views the embedding's bytes
            if key not in copies:
                copies[key] = _copy_dropping_pages(tensor)
            with torch.no_grad():
                tensor.set_(copies[key].untyped_storage(), 0, tensor.size(), tensor.stride())


def _copy_dropping_pages(tensor: torch.Tensor, chunk_bytes: int = 4 << 20) -> torch.Tensor:
    """A copy of a contiguous file-backed tensor, made a few MB at a time, each piece's file pages dropped once
    copied (clean pages: nothing is lost), so the file's bytes and the copy are never both held whole."""
    copy = torch.empty_like(tensor, memory_format=torch.contiguous_format)
    source, target = tensor.detach().reshape(-1).view(torch.uint8), copy.view(-1).view(torch.uint8)
    for start in range(0, source.numel(), chunk_bytes):
        piece = source[start:start + chunk_bytes]
        target[start:start + chunk_bytes] = piece
        _madvise(piece.data_ptr(), piece.data_ptr() + piece.numel(), mmap.MADV_DONTNEED)
    return copy


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
