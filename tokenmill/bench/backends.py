"""The engines a bench compares: tokenmill itself, and (when asked and importable) transformers or llama.cpp.

Each backend loads a model for a (dtype, attention implementation) pair once, and runs one greedy generation
of exactly `new_tokens` tokens, reporting each token's arrival to a `TokenClock`. transformers is imported
only here, only for `--vs transformers`: it is the comparison, never a dependency of tokenmill itself.
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path

import torch

from .memory import current_rss, weight_bytes


# tokenmill's `weights` sweep values -> from_pretrained(keep_quantized=...): GGUF blocks through the float32
# kernels, weights dequantized at load, or tokenmill's default (blocks on the CPU in float32)
WEIGHT_KINDS = {"gguf": True, "dense": False, "auto": None}


class TokenClock:
    """A streamer that timestamps each generated step (generate() first puts the prompt, then every step)."""

    def __init__(self, on_step=None):
        self.times: list[float] = []
        self.cpu_times: list[float] = []  # process CPU seconds: robust when other jobs share the cores
        self._prompt_seen = False
        self.on_step = on_step

    def put(self, value) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.times.append(time.perf_counter())
        self.cpu_times.append(time.process_time())
        if self.on_step is not None:
            self.on_step(len(self.times))

    def end(self) -> None:
        pass


class Backend:
    name = "base"

    def __init__(self, source: Path, gguf_file: str | None = None, placement: dict | None = None):
        if placement and self.name != "tokenmill":
            raise ValueError(f"--device-map / --max-memory apply to tokenmill only, not {self.name}")
        self.source, self.gguf_file = source, gguf_file
        # from_pretrained's device_map, max_memory, offload_folder; or tensor_parallel (this rank's group)
        self.placement = dict(placement or {})
        self.models: dict[tuple, object] = {}
        self.load_info: dict[tuple, dict] = {}

    def model_key(self, dtype: str, attn: str, weights: str, precision: str = "exact") -> tuple:
        return dtype, attn, weights, precision

    def model(self, dtype: str, attn: str, weights: str = "auto", precision: str = "exact"):
        key = self.model_key(dtype, attn, weights, precision)
        if key not in self.models:
            started, rss_before = time.perf_counter(), current_rss()
            model = self._load(*key)
            self.models[key] = model
            self.load_info[key] = {"load_seconds": time.perf_counter() - started, "weight_bytes": weight_bytes(model),
                                   "execution_policy": self.execution_policy(model),
                                   "rss_before_load_bytes": rss_before}
            if "device_map" in self.placement:
                self.load_info[key]["placement"] = {**self.placement, "hf_device_map": model.hf_device_map}
        return self.models[key]

    def execution_policy(self, model) -> dict | None:
        """How the engine runs this model (device, dtype, weight format, kernels, attention, threads), if it says."""
        return None

    def supports_cache(self, kind: str) -> bool:
        return True

    def unsupported_reason(self, workload) -> str | None:
        """Why this engine cannot run `workload` (None: it can)."""
        kind = workload.cache_implementation
        return None if self.supports_cache(kind) else f"{self.name} has no {kind!r} cache"

    def _load(self, dtype: str, attn: str, weights: str = "auto", precision: str = "exact"):
        raise NotImplementedError

    def generate_kwargs(self, cache: str, resilient: bool) -> dict:
        return {} if cache == "dynamic" else {"cache_implementation": cache}

    def generate(self, model, input_ids, attention_mask, new_tokens: int, cache: str, clock: TokenClock,
                 resilient: bool = False):
        with torch.inference_mode():
            return model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=new_tokens,
                                  min_new_tokens=new_tokens, do_sample=False, streamer=clock,
                                  return_dict_in_generate=True, **self.generate_kwargs(cache, resilient))


class TokenmillBackend(Backend):
    name = "tokenmill"
    gemm_calibration: bool | None = None  # TOKENMILL_GEMM_CALIBRATION's choice (on unless 0)

    def unsupported_reason(self, workload) -> str | None:
        if workload.precision == "fast" and workload.weights == "dense":
            return "precision 'fast' runs on GGUF blocks; dense weights have no int8 kernel"
        return super().unsupported_reason(workload)

    def _load(self, dtype: str, attn: str, weights: str = "auto", precision: str = "exact"):
        from ..auto import AutoModelForCausalLM

        if weights not in WEIGHT_KINDS:  # a quantization method (q8_0, nf4, ...): quantize the float model at load
            return AutoModelForCausalLM.from_pretrained(self.source, gguf_file=self.gguf_file, dtype=dtype,
                                                        attn_implementation=attn, progress=False,
                                                        quantization_config=weights, precision=precision,
                                                        gemm_calibration=self.gemm_calibration, **self.placement)
        return AutoModelForCausalLM.from_pretrained(self.source, gguf_file=self.gguf_file, dtype=dtype,
                                                    attn_implementation=attn, progress=False,
                                                    keep_quantized=WEIGHT_KINDS[weights], precision=precision,
                                                    gemm_calibration=self.gemm_calibration, **self.placement)

    def execution_policy(self, model) -> dict:
        return model.execution_policy.as_dict()

    def generate_kwargs(self, cache: str, resilient: bool) -> dict:
        kwargs = {"cache_implementation": cache, "resilient": resilient}
        if cache == "sliding_window":  # a window as long as the context: exact, measures the kind's overhead
            kwargs["cache_config"] = {"sliding_window": 1 << 20}
        return kwargs


class UncalibratedTokenmillBackend(TokenmillBackend):
    """tokenmill with the block matmuls' GEMM switch at its constants (gemm_calibration=False): measures what
    the per-machine calibration (execution/calibration.py) gains, interleaved with the calibrated run."""

    name = "tokenmill-uncalibrated"
    gemm_calibration = False


class TransformersBackend(Backend):
    name = "transformers"
    CACHE_KINDS = ("dynamic", "static", "offloaded")

    def __init__(self, source: Path, gguf_file: str | None = None, placement: dict | None = None):
        super().__init__(source, gguf_file, placement)
        try:
            self.transformers = importlib.import_module("transformers")
        except ImportError:
            raise ValueError("--vs transformers needs transformers installed (pip install transformers)") from None

    def supports_cache(self, kind: str) -> bool:
        return kind in self.CACHE_KINDS

    def model_key(self, dtype: str, attn: str, weights: str, precision: str = "exact") -> tuple:
        return dtype, attn  # transformers always dequantizes a GGUF: one model serves every weight kind

    def _load(self, dtype: str, attn: str):
        source = Path(self.source)
        if source.suffix == ".gguf":
            folder, gguf_file = str(source.parent), source.name
        else:
            folder, gguf_file = str(source), self.gguf_file
        kwargs = {"gguf_file": gguf_file} if gguf_file else {}
        model = self.transformers.AutoModelForCausalLM.from_pretrained(
            folder, dtype=getattr(torch, dtype), attn_implementation=attn, **kwargs)
        return model.eval()


class LlamaCppModel:
    """A llama_cpp.Llama with the two attributes the measurements read."""

    def __init__(self, llm, path: Path):
        self.llm = llm
        self.config = type("Config", (), {"vocab_size": llm.n_vocab()})()
        self.device = torch.device("cpu")
        self.weight_bytes = path.stat().st_size  # llama.cpp computes on the file's own blocks


class LlamaCppBackend(Backend):
    """llama.cpp through llama-cpp-python, on the same GGUF. It computes with the file's own quantized types
    (and 8-bit activations in its dot products), so it is a speed reference, not a float32 one."""

    name = "llama.cpp"

    def __init__(self, source: Path, gguf_file: str | None = None, placement: dict | None = None):
        super().__init__(source, gguf_file, placement)
        try:
            self.llama_cpp = importlib.import_module("llama_cpp")
        except ImportError:
            raise ValueError("--vs llama.cpp needs llama-cpp-python (pip install llama-cpp-python; it compiles "
                             "llama.cpp from source, ~12 minutes on 2 cores)") from None
        path = Path(source) / gguf_file if gguf_file else Path(source)
        if path.suffix != ".gguf":
            raise ValueError(f"--vs llama.cpp needs a .gguf model, got {path}")
        self.path = path

    def unsupported_reason(self, workload) -> str | None:
        if workload.batch_size != 1:
            return "llama-cpp-python generates one sequence at a time"
        if workload.cache_implementation != "dynamic":
            return f"llama.cpp has no {workload.cache_implementation!r} cache"
        return None

    def supports_cache(self, kind: str) -> bool:
        return kind == "dynamic"

    def model_key(self, dtype: str, attn: str, weights: str, precision: str = "exact") -> tuple:
        return ("gguf", str(torch.get_num_threads()))  # one model per thread count: llama.cpp fixes it at load

    def _load(self, kind: str, threads: str):
        llm = self.llama_cpp.Llama(model_path=str(self.path), n_ctx=0, n_threads=int(threads),
                                   n_threads_batch=int(threads), verbose=False)
        return LlamaCppModel(llm, self.path)

    def generate(self, model, input_ids, attention_mask, new_tokens: int, cache: str, clock: TokenClock,
                 resilient: bool = False):
        clock.put(input_ids)  # the prompt, as generate() streams it first
        # forget the previous round: llama-cpp-python would otherwise reuse its cached prefix of the same prompt
        # and skip the prefill being measured
        model.llm.reset()
        steps = model.llm.generate(input_ids[0].tolist(), top_k=1, top_p=1.0, min_p=0.0, temp=0.0,
                                   repeat_penalty=1.0, reset=True)
        for count, token in enumerate(steps, start=1):  # greedy, eos ignored: exactly new_tokens tokens
            clock.put(torch.tensor([token]))
            if count == new_tokens:
                break
        return None


BACKENDS = {"tokenmill": TokenmillBackend, "tokenmill-uncalibrated": UncalibratedTokenmillBackend,
            "transformers": TransformersBackend, "llama.cpp": LlamaCppBackend}


def make_backend(name: str, source: Path, gguf_file: str | None = None, placement: dict | None = None) -> Backend:
    if name not in BACKENDS:
        raise ValueError(f"cannot compare against {name!r}; supported: {', '.join(sorted(BACKENDS))}")
    return BACKENDS[name](source, gguf_file, placement)
