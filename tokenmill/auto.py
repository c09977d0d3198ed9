"""transformers-style entry points: AutoConfig, AutoModelForCausalLM, AutoTokenizer (same names, same arguments).

A façade: the work is done by `assembly.pretrained` (models and configs) and `Tokenizer.from_pretrained`.
"""

from __future__ import annotations

from .assembly.pretrained import load_config, load_model, parse_device, parse_dtype
from .config import ModelConfig
from .tokenizer import Tokenizer

__all__ = ["AutoConfig", "AutoModelForCausalLM", "AutoTokenizer", "parse_device", "parse_dtype"]


class AutoConfig:
    @staticmethod
    def from_pretrained(source, gguf_file: str | None = None, **hub_kwargs) -> ModelConfig:
        return load_config(source, gguf_file, **hub_kwargs)


class AutoModelForCausalLM:
    @staticmethod
    def from_pretrained(source, *, dtype=None, device=None, gguf_file: str | None = None,
                        attn_implementation: str = "sdpa", allow_pickle: bool = False,
                        progress: bool = True, torch_dtype=None, keep_quantized: bool | None = None,
                        kernels: str | None = None, quantization_config=None, load_in_8bit: bool | None = None,
                        load_in_4bit: bool | None = None, device_map=None, max_memory: dict | None = None,
                        offload_folder=None, tp_plan: str | None = None, tp_size: int | None = None,
                        precision: str = "exact", gemm_calibration: bool | None = None, **hub_kwargs):
        """keep_quantized (GGUF only): keep block-quantized weights in their format and compute in float32
        with tokenmill's CPU kernels (same values, ~7x less memory traffic). None: yes when the model runs in
        float32 on the CPU and the kernels could be built; False: dequantize every tensor at load.
        kernels: "native", "exact" or "torch" (None: the policy's choice). With the other arguments it makes the
        model's execution policy (`model.execution_policy`, see execution/policy.py); an impossible combination
        raises ExecutionPolicyError before any weight is read.
        precision: "exact" (float32 arithmetic on the dequantized block values, transformers' numbers) or "fast"
        (int8 activations in the block types with an integer kernel; block weights only), see docs/performance.md.
        quantization_config / load_in_8bit / load_in_4bit (a float folder only): quantize at load into blocks the
        CPU kernels run, see assembly/quantization_config.py (BitsAndBytesConfig, or {"method": "q4_0"}).
        device_map ("auto" | "balanced" | "sequential" | a device | {module name: device}), max_memory
        ({0: "20GiB", "cpu": "30GiB"}), offload_folder: transformers' placement over GPUs, the CPU and disk
        (decoder layers read from their file while they run); `model.hf_device_map` reports it, see
        assembly/device_map.py.
        gemm_calibration (GGUF blocks): time the block kernel against the dense GEMMs on this model's shapes once
        per machine and use the faster per shape and row count (True), or keep the constants (False); None:
        TOKENMILL_GEMM_CALIBRATION (on unless 0), see execution/calibration.py.
        tp_plan="auto" (under torchrun): this process loads its rank's share of a tensor-parallel model
        (assembly/tensor_parallel.py); tp_size, if given, must equal the launcher's WORLD_SIZE."""
        return load_model(source, dtype=dtype, device=device, gguf_file=gguf_file,
                          attn_implementation=attn_implementation, allow_pickle=allow_pickle, progress=progress,
                          torch_dtype=torch_dtype, keep_quantized=keep_quantized, kernel_set=kernels,
                          quantization_config=quantization_config, load_in_8bit=load_in_8bit,
                          load_in_4bit=load_in_4bit, device_map=device_map, max_memory=max_memory,
                          offload_folder=offload_folder, tp_plan=tp_plan, tp_size=tp_size, precision=precision,
                          gemm_calibration=gemm_calibration, **hub_kwargs)


class AutoTokenizer:
    @staticmethod
    def from_pretrained(source, gguf_file: str | None = None, padding_side: str | None = None, **hub_kwargs):
        return Tokenizer.from_pretrained(source, gguf_file=gguf_file, padding_side=padding_side, **hub_kwargs)
