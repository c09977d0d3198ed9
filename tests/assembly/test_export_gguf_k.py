"""k-quant GGUF export: the file loads back in tokenmill and in transformers' GGUF reader to the logits of the
model whose matrices hold the quantizers' values, with the block types and general.file_type llama.cpp uses."""

from __future__ import annotations

import gguf
import pytest
import torch

from tokenmill import AutoModelForCausalLM
from tokenmill.assembly.export_gguf import gguf_names, save_gguf, tensor_method
from tokenmill.assembly.quantize import quantize_weight
from tokenmill.assembly.weights import build_model
from tokenmill.cli import main as cli_main
from tokenmill.config import ModelConfig
from tokenmill.loading.gguf import one_thread_per_op
from tokenmill.loading.safetensors import read_folder_weights
from tokenmill.models.registry import families

from numerics import assert_runs_agree, assert_same_model, matmuls, reduction_len

IDS = torch.tensor([[1, 5, 9, 33, 2, 17, 60, 4, 4, 21]])
FILE_TYPES = {"q2_k": gguf.LlamaFileType.MOSTLY_Q2_K, "q3_k": gguf.LlamaFileType.MOSTLY_Q3_K_S,
              "q4_k": gguf.LlamaFileType.MOSTLY_Q4_K_S, "q5_k": gguf.LlamaFileType.MOSTLY_Q5_K_S,
              "q6_k": gguf.LlamaFileType.MOSTLY_Q6_K, "q4_k_m": gguf.LlamaFileType.MOSTLY_Q4_K_M}


@pytest.fixture(scope="module")
def wide_llama(tmp_path_factory):
    """A 2-layer Llama whose matrices are 256 wide (whole k-quant super-blocks), untied head."""
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    folder = tmp_path_factory.mktemp("wide-llama")
    transformers.LlamaForCausalLM(config).eval().save_pretrained(folder)
    return folder


def reference_model(folder, file_type: str):
    """The float model holding what the file holds: each matrix through the quantizer its name takes."""
    config = ModelConfig.from_json_file(folder / "config.json")
    names = gguf_names(families()[config.model_type].gguf, config)
    weights = read_folder_weights(folder, torch.float32, progress=False)
    with one_thread_per_op():  # single-threaded ops: a busy test machine stalls no thread team
        for name, tensor in weights.items():
            if tensor.dim() == 2:
                method = tensor_method(names[name], file_type, config.num_hidden_layers, config.tie_word_embeddings)
                weights[name] = quantize_weight(tensor, method).dequantize()
    return build_model(config, weights, source=folder)


def tensor_types(path) -> dict[str, int]:
    return {tensor.name: int(tensor.tensor_type) for tensor in gguf.GGUFReader(path).tensors}


def file_type_of(path) -> int:
    field = gguf.GGUFReader(path).fields["general.file_type"]
    return int(field.parts[field.data[0]][0])


@pytest.mark.parametrize("file_type", sorted(FILE_TYPES))
def test_k_quant_export_loads_back_to_the_quantized_model(wide_llama, tmp_path, file_type):
    path = tmp_path / "wide.gguf"
    with pytest.warns(RuntimeWarning, match="no tokenizer written"):
        assert cli_main(["export", str(wide_llama), str(path), "--type", file_type, "--no-progress"]) == 0
    assert file_type_of(path) == FILE_TYPES[file_type]
    kinds = tensor_types(path)
    block = gguf.GGMLQuantizationType[file_type[:4].upper()]
    assert kinds["blk.0.attn_q.weight"] == kinds["token_embd.weight"] == block
    if file_type == "q4_k_m":  # 2 layers: layer 1 is the last eighth (its attn_v / ffn_down take Q6_K), 0 is not
        assert kinds["output.weight"] == kinds["blk.1.attn_v.weight"] == kinds["blk.1.ffn_down.weight"] == 14
        assert kinds["blk.0.attn_v.weight"] == kinds["blk.0.ffn_down.weight"] == 12
    loaded = AutoModelForCausalLM.from_pretrained(path, progress=False)
    assert loaded.is_quantized()
    reference = reference_model(wide_llama, file_type)
    assert_same_model(loaded, reference, IDS, file_type)


def test_transformers_reads_a_q4_k_m_file(wide_llama, tmp_path):
    import transformers

    model = AutoModelForCausalLM.from_pretrained(wide_llama, progress=False)
    with pytest.warns(RuntimeWarning):
        path = save_gguf(model, tmp_path / "wide.gguf", "q4_k_m")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name,
                                                               dtype=torch.float32).eval()
    reference = reference_model(wide_llama, "q4_k_m")
    with torch.no_grad():
        assert_runs_agree(theirs(IDS).logits, reference(IDS).logits, reduction_len(reference.config, IDS.shape[1]),
                          matmuls(reference.config), "transformers' reader")
