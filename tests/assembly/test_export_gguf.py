"""Model → GGUF: the file loads back in tokenmill (and in transformers' own GGUF reader) to the logits of the model
whose matrices hold the exported values (the block type's dequantized values, or float16), greedy tokens equal;
SmolLM2's tokenizer, special ids and chat template round-trip; what cannot be exported says so."""

from __future__ import annotations

import types

import pytest
import torch
from torch import nn

from tokenmill import AutoModelForCausalLM, AutoTokenizer
from tokenmill.assembly.export_gguf import ExportError, save_gguf
from tokenmill.assembly.quantize import quantize_weight
from tokenmill.assembly.weights import build_model
from tokenmill.cli import main as cli_main
from tokenmill.config import ModelConfig
from tokenmill.loading.safetensors import read_folder_weights

from numerics import assert_runs_agree, assert_same_model, matmuls, reduction_len

IDS = torch.tensor([[1, 5, 9, 33, 2, 17, 60, 4, 4, 21]])


def exported_values(weight: torch.Tensor, file_type: str) -> torch.Tensor:
    """What the file holds for one tensor (the export's rule: 1-D in float32, blocks where the width allows)."""
    if weight.dim() == 1 or file_type == "f32":
        return weight
    if file_type == "f16" or weight.shape[-1] % 32:
        return weight.half().float()
    return quantize_weight(weight, file_type).dequantize()


def reference_model(folder, file_type: str):
    weights = read_folder_weights(folder, torch.float32, progress=False)
    weights = {name: exported_values(tensor, file_type) for name, tensor in weights.items()}
    return build_model(ModelConfig.from_json_file(folder / "config.json"), weights, source=folder)


@pytest.mark.parametrize("file_type", ["f32", "f16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1"])
def test_tiny_llama_round_trip(tiny_llama, tmp_path, file_type):
    _, folder = tiny_llama
    model = AutoModelForCausalLM.from_pretrained(folder, progress=False)
    with pytest.warns(RuntimeWarning, match="without a tokenizer"):
        path = save_gguf(model, tmp_path / "tiny.gguf", file_type)
    loaded = AutoModelForCausalLM.from_pretrained(path, progress=False)
    assert loaded.config.num_key_value_heads == 2 and loaded.config.vocab_size == 64
    assert_same_model(loaded, reference_model(folder, file_type), IDS, file_type)


def test_transformers_reads_the_file_and_its_metadata(tiny_llama, tmp_path):
    """An independent GGUF reader (transformers', on the gguf package): llama.cpp's keys and Q/K row order."""
    import gguf
    import transformers

    _, folder = tiny_llama
    with pytest.warns(RuntimeWarning):
        path = save_gguf(AutoModelForCausalLM.from_pretrained(folder, progress=False), tmp_path / "t.gguf", "q8_0")
    reader = gguf.GGUFReader(path)
    def value(name):  # a scalar or string field, read from its parts (GGUFReader's layout since 0.10)
        field = reader.fields[name]
        data = field.parts[field.data[0]]
        return bytes(data).decode() if field.types[0] == gguf.GGUFValueType.STRING else int(data[0])

    fields = {name: value(name) for name in ("general.architecture", "llama.block_count",
                                             "llama.attention.head_count_kv", "general.file_type")}
    assert fields == {"general.architecture": "llama", "llama.block_count": 2, "llama.attention.head_count_kv": 2,
                      "general.file_type": gguf.LlamaFileType.MOSTLY_Q8_0}
    types_by_name = {tensor.name: tensor.tensor_type for tensor in reader.tensors}
    assert types_by_name["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert types_by_name["blk.0.ffn_down.weight"] == gguf.GGMLQuantizationType.F16  # 40 columns: no whole blocks
    assert types_by_name["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name,
                                                               dtype=torch.float32).eval()
    reference = reference_model(folder, "q8_0")
    with torch.no_grad():
        assert_runs_agree(theirs(IDS).logits, reference(IDS).logits, reduction_len(reference.config, IDS.shape[1]),
                          matmuls(reference.config), "transformers' reader")


def test_bad_requests_are_clear_errors(tiny_llama, tmp_path):
    _, folder = tiny_llama
    model = AutoModelForCausalLM.from_pretrained(folder, progress=False)
    with pytest.raises(ExportError, match="unknown GGUF export type 'nf4'; choose one of f32, f16, q8_0"):
        save_gguf(model, tmp_path / "x.gguf", "nf4")
    gemma2 = types.SimpleNamespace(config=ModelConfig(model_type="gemma2", vocab_size=8, hidden_size=8,
                                                      num_hidden_layers=1, num_attention_heads=1))
    with pytest.raises(ExportError, match="supports llama, qwen2, qwen3, gemma3_text models, not 'gemma2'"):
        save_gguf(gemma2, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


@pytest.fixture(scope="module")
def smollm2_folder(smollm2_gguf, tmp_path_factory):
    folder = tmp_path_factory.mktemp("smollm2-export-source")
    assert cli_main(["convert", str(smollm2_gguf), str(folder), "--no-progress"]) == 0
    return folder


@pytest.mark.slow
def test_smollm2_exports_with_its_tokenizer(smollm2_folder, tmp_path):
    path = tmp_path / "smollm2-f16.gguf"
    assert cli_main(["export", str(smollm2_folder), str(path), "--type", "f16", "--no-progress"]) == 0
    source_tokenizer, tokenizer = AutoTokenizer.from_pretrained(smollm2_folder), AutoTokenizer.from_pretrained(path)
    for text in ("The capital of France is", "x = 12345 + 678;\n\tdef café(): 中文 😀",
                 "<|im_start|>user\nHi there<|im_end|>\n"):
        assert tokenizer(text).input_ids == source_tokenizer(text).input_ids
    assert tokenizer.chat_template == source_tokenizer.chat_template
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        assert getattr(tokenizer, name) == getattr(source_tokenizer, name), name
    assert len(tokenizer) == len(source_tokenizer)
    ids = source_tokenizer("Once upon a time, in a small village,", return_tensors="pt").input_ids
    loaded = AutoModelForCausalLM.from_pretrained(path, progress=False)
    assert type(loaded.model.layers[0].mlp.down_proj) is nn.Linear  # F16 tensors are loaded as dense float
    assert_same_model(loaded, reference_model(smollm2_folder, "f16"), ids, "smollm2 f16")
