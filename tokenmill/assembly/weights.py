"""Weights → model: build on the meta device, check names and shapes strictly, assign without copies."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..config import ModelConfig
from ..config_limits import check_layer_count
from ..execution.policy import ExecutionPolicy, dequantized_policy
from ..layers.permuted_linear import PermutedLinear, PermutedWeight
from ..layers.quantized_linear import QuantizedEmbedding, QuantizedLinear, QuantizedWeight
from ..errors import CheckpointError
from ..loading.gguf import one_thread_per_op
from .finite_weights import check_finite_weights
from .pretrained_model import pretrained_class
from .quantization_config import QuantizationPlan
from .quantize import quantize_modules


def _describe(names, limit: int = 8) -> str:
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f" … (+{len(names) - limit} more)" if len(names) > limit else "")


def check_weights(source: Path, expected: dict[str, torch.Size], weights: dict[str, torch.Tensor]) -> None:
    missing = expected.keys() - weights.keys()
    unexpected = weights.keys() - expected.keys()
    if missing:
        raise CheckpointError(source, f"missing weights: {_describe(missing)}")
    if unexpected:
        raise CheckpointError(source, f"unexpected weights (wrong architecture?): {_describe(unexpected)}")
    for name, shape in expected.items():
        if weights[name].shape != shape:
            raise CheckpointError(
                source, f"shape mismatch for {name}: checkpoint has {tuple(weights[name].shape)}, "
                        f"the config implies {tuple(shape)}")


def install_quantized(model: torch.nn.Module, weights: dict, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Put each QuantizedWeight in place as a quantized layer; returns the remaining (float) weights.

    A quantized weight whose module is not a plain Linear or Embedding (a fused expert tensor, a router kept
    as a parameter) is dequantized instead: the kernels only replace what they exactly reproduce.
    """
    remaining = {}
    for name, tensor in weights.items():
        if not isinstance(tensor, QuantizedWeight):
            remaining[name] = tensor
            continue
        path, leaf = name.rpartition(".")[::2]
        module = model.get_submodule(path) if leaf == "weight" else None
        if type(module) is nn.Linear:
            kind = PermutedLinear if isinstance(tensor, PermutedWeight) else QuantizedLinear
            model.set_submodule(path, kind(tensor, bias=module.bias is not None))
        elif isinstance(tensor, PermutedWeight):  # an embedding's columns are not reordered
            remaining[name] = tensor.dequantize(dtype)
        elif type(module) is nn.Embedding:
            model.set_submodule(path, QuantizedEmbedding(tensor))
        else:
            remaining[name] = tensor.dequantize(dtype)
    return remaining


_INITIALIZERS = frozenset(getattr(nn.init, name) for name in (
    "normal_", "uniform_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_", "xavier_normal_",
    "trunc_normal_", "zeros_", "ones_", "constant_"))


class SkipInitialization(TorchFunctionMode):
    """Random init of meta tensors is wasted work, and meta `normal_` imports torch._dynamo (~2 s, once).

    A torch-function mode, active on this thread only inside its `with`: nn.init's functions dispatch through
    it and return their tensor untouched; nothing in torch is rebound, so other threads initialise as usual."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _INITIALIZERS:
            return args[0] if args else kwargs["tensor"]
        return func(*args, **(kwargs or {}))


def quantize_at_load(model: nn.Module, weights: dict, plan: QuantizationPlan, policy: ExecutionPolicy) -> dict:
    """The plan's modules as blocks; under a dense policy (no kernels to run them) their dequantized values."""
    weights = quantize_modules(model, weights, plan.method, plan.skip_modules, plan.embeddings)
    if policy.weight_format == "gguf-blocks":
        return weights
    return {name: t.dequantize(policy.dtype) if isinstance(t, QuantizedWeight) else t
            for name, t in weights.items()}


def build_model(config: ModelConfig, weights: dict[str, torch.Tensor | QuantizedWeight], *, source: Path,
                policy: ExecutionPolicy | None = None, quantization: QuantizationPlan | None = None,
                fuse: bool = True, after_check=None):
    """The model for `weights`, on the policy's device and dtype, holding the policy (default: ATen on the CPU
    in float32). GGUF blocks (QuantizedWeight) need a policy with weight_format "gguf-blocks". `quantization`:
    float weights to quantize into blocks once the model's modules are known (assembly/quantize.py).
    fuse=False: projections left apart (device_map fuses the layers it keeps in memory); after_check(weight):
    called on each weight once checked (device_map drops its file pages, so loading never holds the whole file)."""
    policy = policy or ExecutionPolicy()
    if policy.weight_format == "dense" and any(isinstance(t, QuantizedWeight) for t in weights.values()):
        raise ValueError(f"GGUF block weights need a gguf-blocks execution policy, got {policy.describe()}")
    dtype, device = policy.dtype, policy.device
    cls = pretrained_class(config.model_type)
    weights = cls.sanitize(config, weights)
    check_layer_count(source, config.num_hidden_layers, weights)  # before laying out a layer count it cannot fill
    with torch.device("meta"), SkipInitialization():
        model = cls(config, attn_implementation=policy.attn_implementation)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    expected = {name: p.shape for name, p in model.state_dict().items() if name not in tied}
    check_weights(source, expected, weights)
    check_finite_weights(source, weights, after_check)  # NaN/inf weights would make every logit NaN: refused here, not per step
    if quantization is not None:
        weights = quantize_at_load(model, weights, quantization, policy)
    weights = install_quantized(model, weights, dtype)
    converted = {name: t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
                 for name, t in weights.items()}
    model.load_state_dict(converted, strict=False, assign=True)
    model.tie_weights()
    with one_thread_per_op():  # fusing copies weights: memory-bound, and immune to a busy second core
        model.reset_non_persistent_buffers(fuse=fuse)
    # a GGUF whose every tensor needed dequantizing runs as any dense model
    model.execution_policy = policy if model.is_quantized() else dequantized_policy(policy)
    return model.eval().requires_grad_(False)
