"""What from_pretrained's quantization arguments ask for: transformers' `BitsAndBytesConfig` (its field names and
defaults), the bare `load_in_8bit` / `load_in_4bit` keywords, and tokenmill's own `{"method": "q4_0", ...}`,
each resolved to one `QuantizationPlan` (a block type of assembly/quantize.py and the modules kept in float).

On the CPU bitsandbytes' formats become blocks the C kernels run: int8 → Q8_0 (blocks of 32, a float16 scale;
LLM.int8's per-row scales and outlier threshold do not apply), NF4 / FP4 → bitsandbytes' code books over blocks
of 32 with a float16 scale searched for the least squared error (bitsandbytes: blocks of 64, a float32 absmax,
8-bit absmax with double quant; here double quant changes nothing, and loading says so).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from .quantize import QUANTIZERS
from .quantize_mixture import MIXTURES

# the methods loaded files can hold but quantizing at load cannot make (yet): named in the error
NOT_MADE_AT_LOAD = ("iq4_nl", "iq4_xs")
PRE_QUANTIZED_METHODS = ("gptq", "awq", "aqlm", "eetq", "hqq", "compressed-tensors", "fbgemm_fp8", "torchao")
DEFAULT_SKIP_MODULES = ("lm_head",)  # transformers keeps the output head in float unless told otherwise
TOKENMILL_KEYS = ("method", "skip_modules", "embeddings")


class QuantizationConfigError(ValueError):
    """A quantization request that cannot be honoured, with what can."""


@dataclass
class BitsAndBytesConfig:
    """transformers' BitsAndBytesConfig: the same fields and defaults. Fields bitsandbytes uses for its CUDA
    kernels only (threshold, fp16 weights, storage, CPU offload) are accepted and have no effect here."""

    load_in_8bit: bool = False
    load_in_4bit: bool = False
    llm_int8_threshold: float = 6.0
    llm_int8_skip_modules: list[str] | None = None
    llm_int8_enable_fp32_cpu_offload: bool = False
    llm_int8_has_fp16_weight: bool = False
    bnb_4bit_compute_dtype: torch.dtype | str | None = None
    bnb_4bit_quant_type: str = "fp4"
    bnb_4bit_use_double_quant: bool = False
    bnb_4bit_quant_storage: torch.dtype | str | None = None
    quant_method: str = field(default="bitsandbytes", init=False)

    def __post_init__(self):
        if self.load_in_8bit and self.load_in_4bit:
            raise QuantizationConfigError("load_in_4bit and load_in_8bit are both True; only one can be used")
        if self.bnb_4bit_quant_type not in ("nf4", "fp4"):
            raise QuantizationConfigError(f"bnb_4bit_quant_type must be 'nf4' or 'fp4', "
                                          f"got {self.bnb_4bit_quant_type!r}")
        if isinstance(self.bnb_4bit_compute_dtype, str):
            self.bnb_4bit_compute_dtype = getattr(torch, self.bnb_4bit_compute_dtype.removeprefix("torch."))

    @property
    def method(self) -> str | None:
        """The block type this request becomes on the CPU (None: nothing to quantize)."""
        if self.load_in_8bit:
            return "q8_0"
        return self.bnb_4bit_quant_type if self.load_in_4bit else None

    def to_dict(self) -> dict:
        values = asdict(self)
        for name in ("bnb_4bit_compute_dtype", "bnb_4bit_quant_storage"):
            if isinstance(values[name], torch.dtype):
                values[name] = str(values[name]).removeprefix("torch.")
        return values

    @classmethod
    def from_dict(cls, values: dict) -> BitsAndBytesConfig:
        values = {name: value for name, value in values.items() if name != "quant_method"}
        if "bits" in values:
            bits = values.pop("bits")
            if bits not in (4, 8):
                raise QuantizationConfigError(f"bits must be 4 or 8 (bitsandbytes' int8 and 4-bit formats), "
                                              f"got {bits!r}")
            values[f"load_in_{bits}bit"] = True
        known = set(cls.__dataclass_fields__) - {"quant_method"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise QuantizationConfigError(f"unknown BitsAndBytesConfig field(s) {unknown}; known: {sorted(known)}")
        return cls(**values)


@dataclass(frozen=True)
class QuantizationPlan:
    """What to quantize at load: `method` (an assembly/quantize.py QUANTIZERS key, or a mixture of
    assembly/quantize_mixture.py that picks one per module) for every nn.Linear outside
    `skip_modules` (transformers' substring rule), embeddings too if `embeddings`."""

    method: str
    skip_modules: tuple[str, ...] = DEFAULT_SKIP_MODULES
    embeddings: bool = False
    compute_dtype: torch.dtype | None = None  # bitsandbytes' bnb_4bit_compute_dtype, as asked
    double_quant: bool = False  # bnb_4bit_use_double_quant, as asked (the blocks are the same: a warning says so)


LOAD_METHODS = (*QUANTIZERS, *MIXTURES)  # every method quantizing at load makes


def supported_methods() -> str:
    return ", ".join(LOAD_METHODS)


def _check_method(method) -> str:
    if not isinstance(method, str) or method.lower() not in LOAD_METHODS:
        hint = (" (made only by llama.cpp: load a GGUF file that holds it)"
                if isinstance(method, str) and method.lower() in NOT_MADE_AT_LOAD else "")
        raise QuantizationConfigError(f"unknown quantization method {method!r}{hint}; quantizing at load "
                                      f"supports {supported_methods()}")
    return method.lower()


def _tokenmill_plan(request: dict) -> QuantizationPlan:
    unknown = sorted(set(request) - set(TOKENMILL_KEYS))
    if unknown:
        raise QuantizationConfigError(f"unknown quantization_config key(s) {unknown}; tokenmill's form takes "
                                      f"{list(TOKENMILL_KEYS)}")
    skip = request.get("skip_modules", DEFAULT_SKIP_MODULES)
    if isinstance(skip, str) or not all(isinstance(entry, str) for entry in skip):
        raise QuantizationConfigError(f"skip_modules must be a list of module names, got {skip!r}")
    return QuantizationPlan(_check_method(request["method"]), tuple(skip), bool(request.get("embeddings", False)))


def _bitsandbytes_plan(config: BitsAndBytesConfig) -> QuantizationPlan | None:
    if config.method is None:
        return None
    skip = config.llm_int8_skip_modules
    return QuantizationPlan(config.method, DEFAULT_SKIP_MODULES if skip is None else tuple(skip),
                            compute_dtype=config.bnb_4bit_compute_dtype if config.load_in_4bit else None,
                            double_quant=bool(config.bnb_4bit_use_double_quant and config.load_in_4bit))


def _plan_of_dict(request: dict) -> QuantizationPlan | None:
    quant_method = str(request.get("quant_method", "")).lower()
    if "method" in request:
        return _tokenmill_plan(request)
    if quant_method in ("gptq", "awq"):
        raise QuantizationConfigError(f"quant_method {quant_method!r} describes a pre-quantized checkpoint: load "
                                      f"the {quant_method} folder itself (its config.json names the format) "
                                      f"without a quantization_config argument")
    if quant_method in PRE_QUANTIZED_METHODS:
        raise QuantizationConfigError(f"quant_method {quant_method!r}: loading pre-quantized {quant_method} "
                                      f"checkpoints is not supported yet; quantizing at load supports "
                                      f"bitsandbytes' fields or {{'method': one of {supported_methods()}}}")
    if quant_method not in ("", "bitsandbytes"):
        raise QuantizationConfigError(f"unknown quant_method {quant_method!r}; supported: 'bitsandbytes' "
                                      f"(BitsAndBytesConfig's fields) or {{'method': one of {supported_methods()}}}")
    return _bitsandbytes_plan(BitsAndBytesConfig.from_dict(request))


def quantization_plan(quantization_config=None, load_in_8bit: bool | None = None,
                      load_in_4bit: bool | None = None) -> QuantizationPlan | None:
    """The plan from from_pretrained's arguments (None: load as stored). `quantization_config` is a
    BitsAndBytesConfig, transformers' dict form of one, tokenmill's `{"method": ...}`, or a method name."""
    bare = {name: value for name, value in (("load_in_8bit", load_in_8bit), ("load_in_4bit", load_in_4bit))
            if value}
    if bare and quantization_config is not None:
        raise QuantizationConfigError(f"{' and '.join(bare)} cannot be passed with quantization_config; put "
                                      f"them in the BitsAndBytesConfig")
    if bare:
        return _bitsandbytes_plan(BitsAndBytesConfig(**bare))
    if quantization_config is None:
        return None
    if isinstance(quantization_config, BitsAndBytesConfig):
        return _bitsandbytes_plan(quantization_config)
    if isinstance(quantization_config, str):
        return QuantizationPlan(_check_method(quantization_config))
    if isinstance(quantization_config, dict):
        return _plan_of_dict(quantization_config)
    raise QuantizationConfigError(f"quantization_config must be a BitsAndBytesConfig, a dict or a method name, "
                                  f"got {type(quantization_config).__name__}")
