"""A model → a GGUF file (`save_gguf`, `tokenmill export`), through the `gguf` package's GGUFWriter: llama.cpp's
tensor names and layouts (the inverse of each family's ArchSpec), its hyperparameter keys, the tokenizer
(assembly/export_tokenizer.py), and the matrices as F32, F16 or blocks from assembly/quantize.py's quantizers.

Which tensors take the block type (llama.cpp's rule for its legacy types): every 2-D weight whose width is a
multiple of 32, the token embeddings and output head included; 1-D tensors (norms, biases) stay F32, and a
matrix of another width is written F16. The k-quants need widths that are multiples of 256; other widths take
llama.cpp's fallback type (assembly/quantize_k.py's FALLBACK: Q2_K / Q3_K → Q4_0, Q4_K → Q5_0, Q5_K → Q5_1,
Q6_K → Q8_0).
q4_k_m is llama.cpp's mix (assembly/quantize_mixture.py): Q6_K for the output head (token_embd when tied) and for
attn_v / ffn_down of the layers `more_bits` picks, Q4_K elsewhere.
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from ..loading.gguf import one_thread_per_op
from ..loading.gguf_arch import GGUF_TENSOR_NAME
from ..models.registry import families
from .export_hparams import FAMILIES, ExportError
from .export_tokenizer import add_tokenizer
from .quantize import BLOCK, quantize_weight
from .quantize_mixture import MIXTURES
from .quantize_mixture import tensor_method as mixture_tensor_method
from .save import checkpoint_state

EXPORTABLE = tuple(FAMILIES)  # llama, qwen2, qwen3 (llama-like decoders) and gemma3_text
# made by assembly/quantize.py; llama.cpp reads them all
BLOCK_TYPES = ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "q4_k_m")
EXPORT_TYPES = ("f32", "f16") + BLOCK_TYPES
# general.file_type for each export: one k-quant everywhere is llama.cpp's "_S" (small) mix's name
FILE_TYPES = {"f32": "ALL_F32", "q3_k": "MOSTLY_Q3_K_S", "q4_k": "MOSTLY_Q4_K_S", "q5_k": "MOSTLY_Q5_K_S",
              "q6_k": "MOSTLY_Q6_K"}


def _gguf():
    try:
        import gguf
    except ImportError:
        raise ExportError("GGUF export needs the gguf package: pip install 'tokenmill[gguf]'") from None
    return gguf


def _check_exportable(config, file_type: str):
    if config.model_type not in EXPORTABLE:
        raise ExportError(f"GGUF export supports {', '.join(EXPORTABLE)} models, not {config.model_type!r}")
    if file_type not in EXPORT_TYPES:
        raise ExportError(f"unknown GGUF export type {file_type!r}; choose one of {', '.join(EXPORT_TYPES)}")
    FAMILIES[config.model_type][0](config)


def gguf_names(spec, config) -> dict[str, str]:
    """transformers parameter name → llama.cpp tensor name, for every name the spec reads back."""
    names = {f"{base}.{kind}": f"{part}.{kind}" for part, base in spec.top_names.items()
             for kind in ("weight", "bias")}
    for layer in range(config.num_hidden_layers):
        for part, base in spec.layer_names.items():
            for kind in ("weight", "bias"):
                names[f"{spec.layer_prefix}.{layer}.{base}.{kind}"] = f"blk.{layer}.{part}.{kind}"
    return names


def permute_rotary_rows(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's `permute` of Q/K rows (per head, (2, dim/2) → (dim/2, 2)): the reader's unpermute undone."""
    rows = weight.shape[0]
    order = torch.arange(rows).view(heads, rows // heads // 2, 2).transpose(1, 2).reshape(-1)
    return weight.index_select(0, order.argsort())


def tensor_method(gguf_name: str, file_type: str, layers: int, tied: bool) -> str:
    """The quantizer (a QUANTIZERS key) for one 2-D tensor of a `file_type` export; with `tied` embeddings
    token_embd is the head."""
    if file_type in MIXTURES:
        return mixture_tensor_method(file_type, gguf_name, layers, tied)
    return file_type


def _tensor_data(name: str, tensor: torch.Tensor, method: str, gguf):
    """(numpy data, raw ggml type or None) for one tensor."""
    if tensor.dim() == 1 or method == "f32":
        return tensor.float().numpy(), None
    if method == "f16" or tensor.shape[-1] % BLOCK:
        return tensor.half().numpy(), None
    quantized = quantize_weight(tensor.float(), method, name)  # a k-quant may fall back to another type
    return quantized.blocks.numpy(), gguf.GGMLQuantizationType(quantized.ggml_type)


def _add_special_ids(writer, config) -> None:
    """The config's ids, for a file written without a tokenizer."""
    eos = config.eos_token_id[0] if isinstance(config.eos_token_id, list) else config.eos_token_id
    for value, add in ((config.bos_token_id, writer.add_bos_token_id), (eos, writer.add_eos_token_id),
                       (config.pad_token_id, writer.add_pad_token_id)):
        if value is not None:
            add(int(value))


def save_gguf(model, path: str | os.PathLike, file_type: str = "f16", tokenizer=None) -> Path:
    """Write `model` (and `tokenizer`, if given: a tokenmill Tokenizer: byte-level or SentencePiece BPE) to a
    GGUF file that tokenmill and llama.cpp load; `file_type` is one of EXPORT_TYPES. Returns the path."""
    gguf = _gguf()
    config, path = model.config, Path(path)
    _check_exportable(config, file_type)
    spec = families()[config.model_type].gguf
    names = gguf_names(spec, config)
    state = checkpoint_state(model)
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # the reader ties the head to token_embd when output is absent
    unknown = sorted(set(state) - set(names))
    if unknown:
        raise ExportError(f"no GGUF name for {', '.join(unknown[:5])}: this model's layout is not exportable")
    writer = gguf.GGUFWriter(path, spec.name)
    name = Path(str(getattr(model, "name_or_path", "") or "")).name
    if name:
        writer.add_name(name)
    FAMILIES[config.model_type][1](writer, config)
    writer.add_file_type(getattr(gguf.LlamaFileType, FILE_TYPES.get(file_type, f"MOSTLY_{file_type.upper()}")))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    if tokenizer is None:
        warnings.warn(f"tokenmill: {path} is written without a tokenizer: llama.cpp needs one to run it",
                      RuntimeWarning, stacklevel=2)
        _add_special_ids(writer, config)
    else:
        add_tokenizer(writer, tokenizer, config.vocab_size, spec.name)
    def tensor_data(hf_name: str):
        tensor, gguf_name = state[hf_name], names[hf_name]
        part = GGUF_TENSOR_NAME.match(gguf_name)["part"]
        if spec.permute_qk and part in ("attn_q", "attn_k"):  # biases too: the reader unpermutes both
            heads = config.num_attention_heads if part == "attn_q" else config.num_key_value_heads
            tensor = permute_rotary_rows(tensor, heads)
        if spec.needs_fixup(gguf_name):  # Gemma's norms: llama.cpp stores the (1 + w) they multiply by
            tensor = tensor.float() + 1.0
        method = tensor_method(gguf_name, file_type, config.num_hidden_layers, config.tie_word_embeddings)
        return _tensor_data(hf_name, tensor, method, gguf)

    # one tensor per Python thread, each op single-threaded: a busy core stalls no thread team
    with one_thread_per_op() as workers, ThreadPoolExecutor(workers) as pool:
        for hf_name, (data, raw_type) in zip(state, pool.map(tensor_data, state)):
            writer.add_tensor(names[hf_name], np.ascontiguousarray(data), raw_dtype=raw_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
