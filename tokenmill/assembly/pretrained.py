"""from_pretrained's work: resolve the source, read config + weights, build the model, attach its generation config."""

from __future__ import annotations

import time
import warnings

import torch

from ..execution.parallel import SINGLE, Collectives, TensorParallelError, check_tp_size, init_from_env
from ..execution.calibration import GemmPlan, forced_rule, gemm_plan
from ..execution.policy import choose_policy
from .. import kernels
from ..config import ModelConfig
from ..generation.config import generation_config_of
from ..loading.gguf import GGUFCheckpoint
from ..loading.resolve import resolve_source
from ..loading.safetensors import read_folder_weights
from ..models.registry import gguf_architectures, model_class
from .device_map import build_arguments, check_placement_request, place_model, requests_gpu
from .prequantized import packed_format, read_prequantized
from .quantization_config import QuantizationConfigError, QuantizationPlan, quantization_plan
from .tensor_parallel import shard_model
from ..kernels.system import return_freed_memory
from ..layers.quantized_linear import gemm_runners
from .weights import build_model

_DTYPES = {"float32": torch.float32, "float": torch.float32, "fp32": torch.float32,
           "float16": torch.float16, "half": torch.float16, "fp16": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def parse_dtype(dtype, checkpoint_dtype: str | None) -> torch.dtype:
    """None/'auto' → the checkpoint's own float dtype (float32 for a dequantized GGUF)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return _DTYPES.get(str(checkpoint_dtype).replace("torch.", ""), torch.float32)
    try:
        return _DTYPES[str(dtype).replace("torch.", "")]
    except KeyError:
        raise ValueError(f"unsupported dtype {dtype!r}; use one of {sorted(set(_DTYPES))} or 'auto'") from None


def parse_device(device) -> torch.device:
    """None means the CPU, as in transformers; "auto" picks CUDA when one is present."""
    if device is None:
        return torch.device("cpu")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_config(source, gguf_file: str | None = None, **hub_kwargs) -> ModelConfig:
    resolved = resolve_source(source, gguf_file, **hub_kwargs)
    if resolved.is_gguf:
        return ModelConfig.from_dict(GGUFCheckpoint(resolved.gguf_path, gguf_architectures()).config_dict())
    return ModelConfig.from_json_file(resolved.folder / "config.json")


def warn_about_quantized_compute(plan: QuantizationPlan, policy) -> None:
    """A warning for each way the model will not run as the request implies: blocks without kernels to multiply
    them become dense float weights (the quantized values, float speed); the kernels compute in float32; double
    quantization stores nothing less."""
    if policy.weight_format == "dense":
        warnings.warn(f"tokenmill: {plan.method} blocks run on the CPU kernels in float32 only, and this model "
                      f"runs as {policy.describe()}: its weights are quantized to {plan.method} and dequantized "
                      f"to dense float (the quantized values, at float speed and memory)", RuntimeWarning,
                      stacklevel=4)
    elif plan.compute_dtype not in (None, torch.float32):
        warnings.warn(f"tokenmill: bnb_4bit_compute_dtype={plan.compute_dtype} has no effect on the CPU: the "
                      f"block kernels compute in float32", RuntimeWarning, stacklevel=4)
    if plan.double_quant:
        warnings.warn(f"tokenmill: bnb_4bit_use_double_quant=True has no effect: {plan.method} blocks keep one "
                      f"float16 scale per 32 weights (4.5 bits per weight; bitsandbytes' double quantization "
                      f"stores 8-bit scales of blocks of 64, about 4.13), and the kernels read no other "
                      f"layout", RuntimeWarning, stacklevel=4)


def tensor_parallel_group(tp_plan: str | None, tp_size: int | None,
                          tensor_parallel: Collectives | None) -> Collectives:
    """The group this load is one rank of: given, torchrun's for tp_plan="auto", or one process."""
    if tensor_parallel is not None:
        return tensor_parallel
    if tp_plan is None:
        if tp_size not in (None, 1):
            raise TensorParallelError(f"tp_size={tp_size} needs tp_plan='auto' (under torchrun), or use "
                                      f"LLM(..., tensor_parallel_size={tp_size}) / --tensor-parallel-size")
        return SINGLE
    if tp_plan != "auto":
        raise TensorParallelError(f"tp_plan must be 'auto' or None, got {tp_plan!r}")
    return init_from_env(tp_size)


def check_tp_config(config: ModelConfig, collectives: Collectives) -> None:
    """Refuse a group size the model's heads cannot split, before any weight is read."""
    if collectives.size > 1:
        heads = config.num_attention_heads
        check_tp_size(collectives.size, heads, config.get("num_key_value_heads") or heads)


def apply_gemm_plan(model, requested: bool | None) -> None:
    """Give a block-weight model its GEMM plan: each shape's switch to a dense GEMM measured on this machine
    (or read from its cache) at load, so no request's first step pays for it; requested: from_pretrained's
    gemm_calibration (None: TOKENMILL_GEMM_CALIBRATION). A placed or tensor-parallel model keeps the default
    rule: its ranks would time each other's load, and offloaded layers the disk."""
    policy = model.execution_policy
    if policy.weight_format != "gguf-blocks":
        return
    if policy.placement is not None or policy.parallel != "single":
        forced = forced_rule()
        plan = GemmPlan("default (not measured under device_map or tensor parallelism)") if forced is None \
            else GemmPlan("forced by TOKENMILL_GEMM_BACKEND", fallback=forced)
    else:
        policy.apply_threads()
        plan = gemm_plan(gemm_runners(model), policy.threads, kernels.build_id(), enabled=requested)
    model.execution_policy = policy.with_gemm(plan)


def load_model(source, *, dtype=None, device=None, gguf_file: str | None = None,
               attn_implementation: str = "sdpa", allow_pickle: bool = False,
               progress: bool = True, torch_dtype=None, keep_quantized: bool | None = None,
               kernel_set: str | None = None, quantization_config=None, load_in_8bit: bool | None = None,
               load_in_4bit: bool | None = None, device_map=None, max_memory: dict | None = None,
               offload_folder=None, tp_plan: str | None = None, tp_size: int | None = None,
               tensor_parallel: Collectives | None = None, precision: str = "exact",
               gemm_calibration: bool | None = None, **hub_kwargs):
    """AutoModelForCausalLM.from_pretrained (see its docstring); the request and the machine make the model's
    execution policy, and an impossible combination raises ExecutionPolicyError before any weight is read.
    tensor_parallel: the group this process is one rank of (spawned by tokenmill); tp_plan="auto": torchrun's."""
    started = time.perf_counter()
    check_placement_request(device_map, max_memory, offload_folder, device)
    if device_map is not None and requests_gpu(device_map, max_memory):
        # built on the CPU, then moved module by module; ATen runs every device the placement may use
        kernel_set = kernel_set or "torch"
        keep_quantized = False if keep_quantized is None else keep_quantized
    if device_map is not None and (tp_plan is not None or tensor_parallel is not None):
        raise TensorParallelError("device_map places one process's model; under tensor parallelism each rank "
                                  "holds its share already: drop device_map or tp_plan")
    collectives = tensor_parallel_group(tp_plan, tp_size, tensor_parallel)
    plan = quantization_plan(quantization_config, load_in_8bit, load_in_4bit)
    resolved = resolve_source(source, gguf_file, **hub_kwargs)
    gguf = packed = None
    if resolved.is_gguf and plan is not None:
        raise QuantizationConfigError(
            f"{resolved.gguf_path} is a GGUF file: its weights are stored quantized already and stay in their "
            f"blocks on the CPU; drop the quantization arguments, or quantize a float Hugging Face folder")
    if resolved.is_gguf:
        gguf = GGUFCheckpoint(resolved.gguf_path, gguf_architectures(), populate=device_map is None)
        config = ModelConfig.from_dict(gguf.config_dict())
        model_class(config.model_type)  # an unsupported family fails before any weight is read
        check_tp_config(config, collectives)
        target_dtype = parse_dtype(dtype or torch_dtype, "float32")
        policy = choose_policy(device=parse_device(device), dtype=target_dtype, gguf=True,
                               keep_quantized=keep_quantized, kernels=kernel_set,
                               attn_implementation=attn_implementation, precision=precision)
        weights = gguf.state_dict(dtype=target_dtype, progress=progress,
                                  keep_quantized=policy.weight_format == "gguf-blocks")
        origin = resolved.gguf_path
    else:
        config = ModelConfig.from_json_file(resolved.folder / "config.json")
        model_class(config.model_type)
        check_tp_config(config, collectives)
        packed = packed_format(config.get("quantization_config"))
    if packed is not None:  # a GPTQ / AWQ folder: its packed layers become blocks the kernels run
        if plan is not None:
            raise QuantizationConfigError(f"{resolved.folder} holds a {packed.method} checkpoint, quantized "
                                          f"already: drop the quantization arguments")
        target_dtype = parse_dtype(dtype or torch_dtype, "float32")
        policy = choose_policy(device=parse_device(device), dtype=target_dtype, gguf=True,
                               keep_quantized=keep_quantized, kernels=kernel_set,
                               attn_implementation=attn_implementation, precision=precision)
        weights = read_prequantized(resolved.folder, packed, policy, allow_pickle=allow_pickle, progress=progress)
        origin = resolved.folder
    elif not resolved.is_gguf:
        # the block kernels compute in float32: a quantized folder loads in float32 unless a dtype is named
        target_dtype = parse_dtype(dtype or torch_dtype, "float32" if plan else config.torch_dtype)
        policy = choose_policy(device=parse_device(device), dtype=target_dtype, gguf=plan is not None,
                               keep_quantized=keep_quantized, kernels=kernel_set,
                               attn_implementation=attn_implementation, precision=precision)
        if plan is not None:
            warn_about_quantized_compute(plan, policy)
        weights = read_folder_weights(resolved.folder, target_dtype, allow_pickle=allow_pickle, progress=progress)
        origin = resolved.folder
    model = build_model(config, weights, source=origin, policy=policy, quantization=plan,
                        **build_arguments(device_map))
    del weights  # the unfused originals: fusing copied each layer's q/k/v and gate/up into one matrix
    if device_map is not None:
        place_model(model, device_map, max_memory, offload_folder)
    shard_model(model, collectives)  # this rank's slices copied, the whole tensors freed below
    apply_gemm_plan(model, gemm_calibration)
    return_freed_memory()
    model.generation_config = generation_config_of(resolved, gguf)
    model.name_or_path = str(source)
    model.load_seconds = time.perf_counter() - started
    return model
