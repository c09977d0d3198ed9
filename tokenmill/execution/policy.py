"""The execution policy: how a loaded model runs, decided once by the loader from the request and the machine.

One frozen object names the device, the dtype, the weight format, the kernel set, the attention backend, the
thread count, the parallel layout and the precision of the block matmuls. The model holds it
(`model.execution_policy`), hands its kernel set to every forward and sets its quantized layers' precision from
it; nothing else in the package switches a layer's arithmetic. A combination that cannot run is refused here,
with the reason, rather than quietly changed.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field

import torch

from .. import kernels
from .calibration import GemmPlan
from .ops import ExactOps, NativeOps, TorchOps, TritonOps
from .placement import DevicePlacement
from .parallel import SINGLE, Collectives

WEIGHT_FORMATS = ("dense", "gguf-blocks")
KERNEL_SETS = ("native", "exact", "torch", "triton")
ATTENTION_BACKENDS = ("sdpa", "eager", "native")
PARALLEL_LAYOUTS = ("single", "tensor")  # one process; or the weights split over `collectives.size` ranks
# "exact": float32 arithmetic on the dequantized block values (what transformers computes on the same weights);
# "fast": activations quantized to int8 per 32-block and integer dot products, on the block types that have such
# a kernel (kernels/gguf_types.py INT8_KERNEL_TYPES); every other layer stays exact. See docs/performance.md.
PRECISIONS = ("exact", "fast")

_KERNEL_MEANING = {"native": "C kernels (RMSNorm, SwiGLU, rotary, attention)",
                   "exact": "C kernels only where bit-identical to ATen (rotary)", "torch": "ATen only",
                   "triton": "Triton on CUDA (decode attention read from the cache in place), ATen elsewhere"}


class ExecutionPolicyError(ValueError):
    """A requested combination of device, dtype, weight format, kernels and attention that cannot run."""


@dataclass(frozen=True)
class ExecutionPolicy:
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    weight_format: str = "dense"  # "gguf-blocks": GGUF block-quantized weights multiplied by the C kernels
    kernels: str = "torch"  # see KERNEL_SETS / _KERNEL_MEANING
    attention: str = "sdpa"  # "native": the C (or, on CUDA, Triton) kernel where it serves, SDPA elsewhere
    # the intra-op threads the model runs on: torch's count at load, changed only through the policy (the engine's
    # thread tuner sets `with_threads(n)`, the engine's runner applies it); the C kernels use as many as torch
    threads: int = 1
    parallel: str = "single"
    # "fast": int8 activations in the block matmuls that have an integer kernel (PRECISIONS); GGUF blocks only
    precision: str = "exact"
    # device_map's placement (modules on devices and disk); None: the whole model on `device`
    placement: DevicePlacement | None = None
    # GGUF blocks: when each block matmul shape switches to a dense GEMM, and through which library (measured per
    # machine at load, execution/calibration.py); None: the default rule (dense above 96 rows, oneDNN)
    gemm: GemmPlan | None = None
    # the ranks' group under parallel="tensor" (row-parallel all-reduces, vocabulary gathers); one process: SINGLE
    collectives: Collectives = field(default=SINGLE, compare=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "device", torch.device(self.device))
        for name, allowed in (("weight_format", WEIGHT_FORMATS), ("kernels", KERNEL_SETS),
                              ("attention", ATTENTION_BACKENDS), ("parallel", PARALLEL_LAYOUTS),
                              ("precision", PRECISIONS)):
            if getattr(self, name) not in allowed:
                raise ExecutionPolicyError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.kernels == "triton" and self.device.type != "cuda":
            raise ExecutionPolicyError(f"kernels='triton' runs on CUDA devices, got {self.device}")
        if self.kernels in ("native", "exact") and (self.device.type != "cpu" or self.dtype != torch.float32):
            raise ExecutionPolicyError(f"kernels={self.kernels!r} needs device cpu and dtype float32 (the C kernels "
                                       f"compute in float32 on the CPU), got {self.device} {_dtype_name(self.dtype)}")
        if self.weight_format == "gguf-blocks" and self.kernels != "native":
            raise ExecutionPolicyError(f"GGUF block weights are multiplied by the native kernels; "
                                       f"kernels={self.kernels!r} needs dense weights")
        if self.precision == "fast" and self.weight_format != "gguf-blocks":
            raise ExecutionPolicyError(_FAST_NEEDS_BLOCKS + f"; this policy has {self.weight_format} weights on "
                                       f"{self.device} {_dtype_name(self.dtype)}")
        if self.attention == "native" and self.kernels not in ("native", "triton"):
            raise ExecutionPolicyError(f"the native attention kernel belongs to kernels='native' (C) or 'triton' "
                                       f"(CUDA), not {self.kernels!r}")
        if self.gemm is not None and self.weight_format != "gguf-blocks":
            raise ExecutionPolicyError(f"a GEMM plan applies to GGUF block weights; this policy has "
                                       f"{self.weight_format} weights")
        if self.threads < 1:
            raise ExecutionPolicyError(f"threads must be at least 1, got {self.threads}")
        if (self.parallel == "tensor") != (self.collectives.size > 1):
            raise ExecutionPolicyError(f"parallel={self.parallel!r} with a group of {self.collectives.size} "
                                       f"rank(s): 'tensor' needs 2 or more, 'single' exactly one")

    @functools.cached_property
    def ops(self) -> TorchOps:
        """The kernel set every forward of the model receives."""
        if self.kernels == "native":
            ops = NativeOps(native_attention=self.attention == "native")
        elif self.kernels == "triton":
            ops = TritonOps(native_attention=self.attention == "native")
        else:
            ops = ExactOps() if self.kernels == "exact" else TorchOps()
        if self.collectives is not SINGLE:
            ops.collectives = self.collectives
        return ops

    def with_collectives(self, collectives: Collectives) -> ExecutionPolicy:
        """The same policy as one rank of a tensor-parallel group (SINGLE: one process again)."""
        return dataclasses.replace(self, collectives=collectives,
                                   parallel="tensor" if collectives.size > 1 else "single")

    def with_precision(self, precision: str) -> ExecutionPolicy:
        """The same policy computing the block matmuls at `precision` ("exact" or "fast")."""
        return dataclasses.replace(self, precision=precision)

    def with_gemm(self, plan: GemmPlan | None) -> ExecutionPolicy:
        """The same policy with `plan` deciding the block matmuls' dense GEMM (None: the default rule)."""
        return dataclasses.replace(self, gemm=plan)

    def with_threads(self, threads: int) -> ExecutionPolicy:
        """The same policy on `threads` intra-op threads."""
        return dataclasses.replace(self, threads=threads)

    def apply_threads(self) -> None:
        """Make the calling thread's torch (and so the C kernels') thread count this policy's; per thread, as
        torch's OpenMP setting is."""
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)

    @property
    def captures_decode_steps(self) -> bool:
        """Whether the engine replays decode steps from CUDA graphs (engine/decode_graphs.py): on one CUDA device,
        where launches, not arithmetic, bound a small decode step."""
        return self.device.type == "cuda" and self.parallel == "single" and self.placement is None

    @property
    def attn_implementation(self) -> str:
        """What attention modules fall back to where no kernel serves: SDPA behind the native kernel."""
        return "sdpa" if self.attention == "native" else self.attention

    def as_dict(self) -> dict:
        return {"device": str(self.device), "dtype": _dtype_name(self.dtype), "weight_format": self.weight_format,
                "kernels": self.kernels, "attention": self.attention, "threads": self.threads,
                "precision": self.precision, "parallel": self.parallel, "tp_rank": self.collectives.rank,
                "tp_size": self.collectives.size,
                **({} if self.placement is None else {"placement": self.placement.describe()}),
                **({} if self.gemm is None else {"gemm": self.gemm.as_dict()})}

    def describe(self) -> str:
        placed = "" if self.placement is None else f", placed: {self.placement.describe()}"
        return (f"{self.device} {_dtype_name(self.dtype)}, {self.weight_format} weights, {self.kernels} kernels "
                f"({_KERNEL_MEANING[self.kernels]}), {self.attention} attention, {self.precision} precision, "
                f"{self.threads} thread(s), "
                + ("single device" if self.parallel == "single"
                   else f"tensor parallel rank {self.collectives.rank} of {self.collectives.size}") + placed)

    def changes_from(self, other: ExecutionPolicy) -> list[str]:
        """'field: old → new' for each field that differs, for messages."""
        mine, theirs = self.as_dict(), other.as_dict()
        return [f"{name}: {theirs[name]} → {mine[name]}" for name in mine if mine[name] != theirs[name]]


_FAST_NEEDS_BLOCKS = ("precision='fast' quantizes the activations of GGUF block matmuls to int8, so it needs "
                      "block weights kept quantized on the CPU in float32 (a GGUF file, or quantization_config / "
                      "--quantize)")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _kernels_missing() -> str | None:
    """Why the C kernels cannot run here, or None; builds them (once per machine) if they are not built yet."""
    if kernels.available():
        return None
    return "the C kernels are unavailable on this machine (no C compiler, or TOKENMILL_KERNELS=0; see the warning)"


def check_device_present(device: torch.device) -> torch.device:
    """The device, or a one-line error when this machine (or this torch build) has none of its kind."""
    if device.type == "cuda" and not torch.cuda.is_available():
        build = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA device is visible"
        raise ExecutionPolicyError(f"device {str(device)!r} requested but {build} (torch {torch.__version__}); "
                                   f"use device 'cpu'")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ExecutionPolicyError(f"device {str(device)!r} requested but MPS is not available here; use 'cpu'")
    return device


def choose_policy(*, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, gguf: bool = False,
                  keep_quantized: bool | None = None, kernels: str | None = None,
                  attn_implementation: str | None = None, threads: int | None = None,
                  precision: str = "exact") -> ExecutionPolicy:
    """The policy for a request (from_pretrained's arguments) on this machine; compiles the C kernels when it
    picks them, so the first forward does not.

    keep_quantized (GGUF only): None keeps the blocks where they can run (CPU, float32, kernels built).
    kernels: None picks native with GGUF blocks, exact for other float32 CPU models, torch elsewhere.
    attn_implementation: "sdpa" (or None) is the native kernel under native kernels, SDPA otherwise; "eager";
    "native" asks for the kernel explicitly.
    precision: "exact" (float32 arithmetic) or "fast" (int8 activations where a kernel exists; block weights only).
    """
    device = check_device_present(torch.device(device))
    if precision not in PRECISIONS:
        raise ExecutionPolicyError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if kernels is not None and kernels not in KERNEL_SETS:
        raise ExecutionPolicyError(f"kernels must be one of {KERNEL_SETS} or None, got {kernels!r}")
    if attn_implementation == "flash_attention_2":  # transformers' name: SDPA's flash backend serves it
        attn_implementation = "sdpa"
    if kernels == "triton" and (device.type != "cuda" or not _triton_present()):
        raise ExecutionPolicyError(f"kernels='triton' needs a CUDA device and the triton package; got {device}"
                                   + ("" if _triton_present() else " without triton (pip install triton)"))
    if attn_implementation is not None and attn_implementation not in ATTENTION_BACKENDS:
        raise ExecutionPolicyError(f"attn_implementation must be one of {ATTENTION_BACKENDS}, "
                                   f"got {attn_implementation!r}")
    if keep_quantized and not gguf:
        raise ExecutionPolicyError("keep_quantized=True applies to GGUF checkpoints only (this one is dense)")
    if keep_quantized and kernels not in (None, "native"):
        raise ExecutionPolicyError(f"keep_quantized=True needs the native kernels, not kernels={kernels!r}")
    if attn_implementation == "native" and kernels not in (None, "native"):
        raise ExecutionPolicyError(f"attn_implementation='native' needs kernels='native', not {kernels!r}")
    on_cpu32 = device.type == "cpu" and dtype == torch.float32
    if kernels in ("native", "exact") or keep_quantized or attn_implementation == "native":
        wanted = kernels or "native"
        if not on_cpu32:
            raise ExecutionPolicyError(f"kernels={wanted!r} (asked for by kernels, keep_quantized or "
                                       f"attn_implementation) runs on the CPU in float32; got device {device} "
                                       f"with dtype {_dtype_name(dtype)}")
        missing = _kernels_missing()
        if missing:
            raise ExecutionPolicyError(f"kernels={wanted!r} was asked for, but {missing}")
    if kernels is None and device.type == "cuda" and _triton_present():
        kernels = "triton"
    elif kernels is None and (not on_cpu32 or _kernels_missing()):
        kernels = "torch"
    elif kernels is None:
        kernels = "native" if gguf and keep_quantized is not False else "exact"
    blocks = gguf and keep_quantized is not False and kernels == "native"
    native_attention = kernels in ("native", "triton") and attn_implementation in (None, "sdpa", "native")
    if precision == "fast" and not blocks:
        why = ("the checkpoint has float weights" if not gguf else
               f"this load makes them dense (keep_quantized={keep_quantized}, {device} {_dtype_name(dtype)}, "
               f"{kernels} kernels)")
        raise ExecutionPolicyError(f"{_FAST_NEEDS_BLOCKS}; {why}")
    return ExecutionPolicy(device=device, dtype=dtype, weight_format="gguf-blocks" if blocks else "dense",
                           kernels=kernels, attention="native" if native_attention else attn_implementation or "sdpa",
                           threads=threads or torch.get_num_threads(), precision=precision)


def moved_policy(policy: ExecutionPolicy, device: torch.device | None, dtype: torch.dtype | None) -> ExecutionPolicy:
    """The policy after `model.to(device, dtype)`: off the CPU or out of float32 the C kernels cannot run, so
    the weights become dense and the kernels ATen; the attention backend keeps its dense fallback."""
    if policy.placement is not None:
        raise ExecutionPolicyError(f"this model was placed by device_map ({policy.placement.describe()}); it "
                                   f"cannot be moved as a whole: load it again with another device_map or device")
    device = policy.device if device is None else check_device_present(torch.device(device))
    dtype = policy.dtype if dtype is None else dtype
    if device.type == "cpu" and dtype == torch.float32 and policy.kernels != "triton":
        return dataclasses.replace(policy, device=device, dtype=dtype)
    if device.type == "cuda" and _triton_present():
        return dataclasses.replace(policy, device=device, dtype=dtype, weight_format="dense", kernels="triton",
                                   precision="exact", gemm=None,
                                   attention="native" if policy.attention in ("native", "sdpa") else policy.attention)
    return dataclasses.replace(policy, device=device, dtype=dtype, weight_format="dense", kernels="torch",
                               attention=policy.attn_implementation, precision="exact", gemm=None)


def _triton_present() -> bool:
    import importlib.util

    return importlib.util.find_spec("triton") is not None


def dequantized_policy(policy: ExecutionPolicy) -> ExecutionPolicy:
    """The policy once GGUF blocks become dense float weights: only the C kernels that match ATen bit for bit
    stay, so the model computes transformers' arithmetic again (precision "exact": no int8 kernel takes them)."""
    if policy.weight_format == "dense":
        return policy
    kernels = policy.kernels if policy.kernels in ("torch", "triton") else "exact"
    return dataclasses.replace(policy, weight_format="dense", kernels=kernels, attention=policy.attn_implementation,
                               precision="exact", gemm=None)
