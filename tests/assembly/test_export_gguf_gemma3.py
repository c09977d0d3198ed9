"""Gemma 3 → GGUF: a tiny random Gemma3ForCausalLM (transformers' own class) exported to f32 / f16 / q8_0 loads
back in tokenmill and in transformers' GGUF reader to the logits of the model holding the exported values; the
file carries the tensor names llama.cpp's converter writes for gemma3 (checked against the real Gemma 3 270M
file) and the norms as 1 + w; configs llama.cpp cannot express are refused. The real Gemma 3 270M round-trips:
GGUF → Hugging Face folder → GGUF → the same logits and token ids, and its q4_k_m export has llama.cpp's types."""

from __future__ import annotations

import types

import gguf
import numpy as np
import pytest
import torch

from tokenmill import AutoModelForCausalLM, AutoTokenizer
from tokenmill.assembly.export_gguf import ExportError, save_gguf
from tokenmill.assembly.quantize import quantize_weight
from tokenmill.assembly.weights import build_model
from tokenmill.cli import main as cli_main
from tokenmill.config import ModelConfig
from tokenmill.loading.safetensors import read_folder_weights

from numerics import assert_runs_agree, assert_same_model, matmuls, reduction_len

IDS = torch.tensor([[2, 5, 9, 33, 2, 17, 60, 4, 4, 21, 90, 7]])  # longer than the 4-token window


@pytest.fixture(scope="module")
def tiny_gemma3(tmp_path_factory):
    """7 layers (layer 5 global, the rest local), 256-wide heads (transformers' reader assumes
    query_pre_attn_scalar 256), norms of random size so that (1 + w) matters."""
    import transformers

    torch.manual_seed(0)
    config = transformers.Gemma3TextConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=7,
                                           num_attention_heads=2, num_key_value_heads=1, head_dim=256,
                                           query_pre_attn_scalar=256, sliding_window=4, max_position_embeddings=256)
    model = transformers.Gemma3ForCausalLM(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.normal_(0, 0.3)
    folder = tmp_path_factory.mktemp("tiny-gemma3")
    model.save_pretrained(folder)
    return folder


def exported_values(name: str, weight: torch.Tensor, file_type: str) -> torch.Tensor:
    """What the file holds for one tensor, as the reader gives it back."""
    if weight.dim() == 1:
        return (weight + 1) - 1 if "norm" in name else weight  # stored as 1 + w in float32
    if file_type == "f32":
        return weight
    if file_type == "f16":
        return weight.half().float()
    return quantize_weight(weight, file_type).dequantize()


def reference_model(folder, file_type: str):
    weights = read_folder_weights(folder, torch.float32, progress=False)
    weights = {name: exported_values(name, tensor, file_type) for name, tensor in weights.items()}
    return build_model(ModelConfig.from_json_file(folder / "config.json"), weights, source=folder)


def export(folder, path, file_type: str):
    model = AutoModelForCausalLM.from_pretrained(folder, progress=False)
    with pytest.warns(RuntimeWarning, match="without a tokenizer"):
        return save_gguf(model, path, file_type)


@pytest.mark.parametrize("file_type", ["f32", "f16", "q8_0"])
def test_tiny_gemma3_reloads_in_tokenmill_to_the_exported_values(tiny_gemma3, tmp_path, file_type):
    path = export(tiny_gemma3, tmp_path / f"gemma3-{file_type}.gguf", file_type)
    loaded = AutoModelForCausalLM.from_pretrained(path, progress=False)
    assert loaded.config.model_type == "gemma3_text" and loaded.config.num_hidden_layers == 7
    reference = reference_model(tiny_gemma3, file_type)
    assert_same_model(loaded, reference, IDS, file_type)
    if file_type == "f32":  # the very values: the same logits as the model it was written from
        source = AutoModelForCausalLM.from_pretrained(tiny_gemma3, progress=False)
        with torch.no_grad():
            assert_runs_agree(loaded(IDS).logits, source(IDS).logits, reduction_len(source.config, IDS.shape[1]),
                              matmuls(source.config), "f32 against the source model")


@pytest.mark.parametrize("file_type", ["f16", "q8_0"])
def test_transformers_reads_the_gemma3_file(tiny_gemma3, tmp_path, file_type):
    import transformers

    path = export(tiny_gemma3, tmp_path / "g.gguf", file_type)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name,
                                                               dtype=torch.float32).eval()
    assert type(theirs).__name__ == "Gemma3ForCausalLM"
    reference = reference_model(tiny_gemma3, file_type)
    with torch.no_grad():
        assert_runs_agree(theirs(IDS).logits, reference(IDS).logits, reduction_len(reference.config, IDS.shape[1]),
                          matmuls(reference.config), f"transformers' reader, {file_type}")


def _field(reader, name):
    field = reader.fields[name]
    return field.contents()


def test_names_keys_and_norms_are_llama_cpp_s(tiny_gemma3, tmp_path, gemma3_gguf):
    path = export(tiny_gemma3, tmp_path / "g.gguf", "f16")
    ours, real = gguf.GGUFReader(path), gguf.GGUFReader(gemma3_gguf)
    def layer_zero_and_top(reader):
        return {t.name for t in reader.tensors if t.name.startswith("blk.0.") or not t.name.startswith("blk.")}
    assert layer_zero_and_top(ours) == layer_zero_and_top(real)  # what llama.cpp's converter wrote
    assert _field(ours, "general.architecture") == "gemma3"
    for key in ("gemma3.block_count", "gemma3.attention.sliding_window", "gemma3.rope.freq_base",
                "gemma3.attention.key_length", "gemma3.attention.head_count_kv", "gemma3.context_length"):
        assert key in real.fields and key in ours.fields, key
    assert (_field(ours, "gemma3.attention.sliding_window"), _field(ours, "gemma3.rope.freq_base")) == (4, 1e6)
    stored = next(t for t in ours.tensors if t.name == "blk.0.attn_norm.weight")
    hf = read_folder_weights(tiny_gemma3, torch.float32, progress=False)["model.layers.0.input_layernorm.weight"]
    assert torch.equal(torch.from_numpy(np.array(stored.data)), hf + 1)
    real_norm = next(t for t in real.tensors if t.name == "blk.0.attn_norm.weight")
    assert float(np.mean(real_norm.data)) > 0.5  # llama.cpp's file holds the multipliers (1 + w) too


@pytest.mark.parametrize("change, message", [
    ({"query_pre_attn_scalar": 64}, "query_pre_attn_scalar 64 differs from the 256 llama.cpp uses"),
    ({"layer_types": ["full_attention"] * 7}, "global layer every 6th"),
    ({"rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                          "sliding_attention": {"rope_type": "default", "rope_theta": 5e4}}},
     "local layers' rope must be the default with base 10000"),
    ({"hidden_activation": "gelu"}, "runs GELU \\(tanh\\) only"),
    ({"attn_logit_softcapping": 50.0}, "attn_logit_softcapping"),
])
def test_configs_llama_cpp_cannot_express_are_refused(tiny_gemma3, tmp_path, change, message):
    config = ModelConfig.from_json_file(tiny_gemma3 / "config.json").to_dict()
    model = types.SimpleNamespace(config=ModelConfig.from_dict({**config, **change}))
    with pytest.raises(ExportError, match=message):
        save_gguf(model, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


@pytest.fixture(scope="module")
def gemma3_folder(gemma3_gguf, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gemma3-hf")
    assert cli_main(["convert", str(gemma3_gguf), str(folder), "--no-progress"]) == 0
    return folder


TEXTS = ("The capital of France is", "  Indented\tcode:    x = 12345 + 678;\n\n",
         "<start_of_turn>user\nCafé, 日本語, emoji 🙂<end_of_turn>\n")


@pytest.mark.slow
def test_real_gemma3_round_trips_through_a_folder(gemma3_gguf, gemma3_folder, tmp_path):
    """GGUF (Q4_K_M) → Hugging Face folder (float32) → GGUF (f32) → the same model and tokenizer."""
    path = tmp_path / "gemma3-f32.gguf"
    assert cli_main(["export", str(gemma3_folder), str(path), "--type", "f32", "--no-progress"]) == 0
    original, exported = gguf.GGUFReader(gemma3_gguf), gguf.GGUFReader(path)
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.bos_token_id",
                "tokenizer.ggml.eos_token_id", "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_space_prefix"):
        assert _field(exported, key) == _field(original, key), key
    source_tokenizer, tokenizer = AutoTokenizer.from_pretrained(gemma3_gguf), AutoTokenizer.from_pretrained(path)
    for text in TEXTS:
        assert tokenizer(text).input_ids == source_tokenizer(text).input_ids, text
    ids = source_tokenizer(TEXTS[0] + " Paris. The capital of Italy is", return_tensors="pt").input_ids
    source = AutoModelForCausalLM.from_pretrained(gemma3_gguf, progress=False, keep_quantized=False)
    loaded = AutoModelForCausalLM.from_pretrained(path, progress=False)
    with torch.no_grad():
        assert_runs_agree(loaded(ids).logits, source(ids).logits, reduction_len(source.config, ids.shape[1]),
                          matmuls(source.config), "gemma3 270M round trip")
    assert torch.equal(loaded.generate(ids, max_new_tokens=8, do_sample=False),
                       source.generate(ids, max_new_tokens=8, do_sample=False))


@pytest.mark.slow
def test_real_gemma3_q4_k_m_export_has_llama_cpp_s_types(gemma3_gguf, gemma3_folder, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(gemma3_folder, progress=False)
    tokenizer = AutoTokenizer.from_pretrained(gemma3_folder)
    path = save_gguf(model, tmp_path / "gemma3-q4_k_m.gguf", "q4_k_m", tokenizer)
    original = {t.name: t.tensor_type for t in gguf.GGUFReader(gemma3_gguf).tensors}
    exported = {t.name: t.tensor_type for t in gguf.GGUFReader(path).tensors}
    assert exported == original
    assert _field(gguf.GGUFReader(path), "general.file_type") == gguf.LlamaFileType.MOSTLY_Q4_K_M
