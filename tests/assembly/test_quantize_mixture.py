"""q4_k_m, llama.cpp's mixture: the rule reproduces the types llama.cpp wrote into the real Gemma 3 270M Q4_K_M
file, and quantizing a float folder at load with it gives each module its type and the logits of the float
model holding those modules' dequantized values."""

from __future__ import annotations

import gguf
import pytest
import torch
from torch import nn

from tokenmill import AutoModelForCausalLM
from tokenmill.assembly.quantization_config import QuantizationConfigError
from tokenmill.assembly.quantize import method_for_width, quantize_weight
from tokenmill.assembly.quantize_mixture import module_method, module_role, more_bits, tensor_method
from tokenmill.assembly.weights import build_model
from tokenmill.config import ModelConfig
from tokenmill.kernels.gguf_types import BY_NAME
from tokenmill.layers.quantized_linear import QuantizedEmbedding, QuantizedLinear
from tokenmill.loading.safetensors import read_folder_weights

from numerics import assert_runs_agree, matmuls, reduction_len

LAYERS = 8  # more_bits picks 0 (first eighth), 7 (last eighth), 3 and 6 (every third from 1)
IDS = torch.tensor([[1, 5, 9, 33, 2, 17, 60, 4, 4, 21]])
Q4_K, Q6_K = BY_NAME["Q4_K"].type_id, BY_NAME["Q6_K"].type_id


def test_layer_rule():
    """use_more_bits for 24 layers: the first 3, the last 3, and every third between (5, 8, ..., 20)."""
    assert [layer for layer in range(24) if more_bits(layer, 24)] == [0, 1, 2, 5, 8, 11, 14, 17, 20, 21, 22, 23]
    assert [layer for layer in range(LAYERS) if more_bits(layer, LAYERS)] == [0, 3, 6, 7]
    assert tensor_method("q4_k_m", "blk.4.attn_v.weight", 24, False) == "q4_k"
    assert tensor_method("q4_k_m", "blk.5.ffn_down.weight", 24, False) == "q6_k"
    assert tensor_method("q4_k_m", "blk.5.attn_q.weight", 24, False) == "q4_k"
    assert tensor_method("q4_k_m", "blk.7.attn_qkv.weight", 24, False) == "q5_k"
    assert tensor_method("q4_k_m", "token_embd.weight", 24, True) == "q6_k"  # tied: the embeddings are the head
    assert tensor_method("q4_k_m", "token_embd.weight", 24, False) == "q4_k"
    assert tensor_method("q4_k_m", "output.weight", 24, False) == "q6_k"
    assert module_role("model.layers.12.mlp.down_proj") == ("ffn_down", 12)
    assert module_role("model.layers.3.self_attn.v_proj") == ("attn_v", 3)
    assert module_role("lm_head") == ("output", None)
    assert module_method("q4_k_m", "model.layers.1.self_attn.v_proj", 24, False) == "q6_k"


def test_rule_reproduces_llama_cpp_s_gemma3_file(gemma3_gguf):
    """Every matrix of the real Q4_K_M file (made by llama.cpp's quantize tool: 18 layers, 640-wide matrices
    falling back from Q4_K to Q5_0 and from Q6_K to Q8_0, the tied head on token_embd) has the type the rule
    picks; the 1-D norms stay F32."""
    reader = gguf.GGUFReader(gemma3_gguf)
    names = {tensor.name for tensor in reader.tensors}
    field = reader.fields["gemma3.block_count"]
    layers = int(field.parts[field.data[0]][0])
    tied = "output.weight" not in names
    matrices = [tensor for tensor in reader.tensors if len(tensor.shape) == 2]
    assert len(matrices) == 7 * layers + 1
    for tensor in matrices:
        columns = int(tensor.shape[0])
        expected = method_for_width(tensor_method("q4_k_m", tensor.name, layers, tied), columns)
        assert tensor.tensor_type.name == expected.upper(), tensor.name
    kinds = {tensor.tensor_type.name for tensor in matrices}
    assert kinds == {"Q4_K", "Q5_0", "Q6_K", "Q8_0"}  # all four outcomes of the rule occur
    assert all(tensor.tensor_type.name == "F32" for tensor in reader.tensors if len(tensor.shape) == 1)


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def llama_of_eight_layers(request, tmp_path_factory):
    """An 8-layer Llama whose matrices are whole super-blocks wide (256 and 512)."""
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=256, intermediate_size=512, num_hidden_layers=LAYERS,
                                      num_attention_heads=4, num_key_value_heads=2,
                                      tie_word_embeddings=request.param)
    folder = tmp_path_factory.mktemp("llama-8-layers")
    transformers.LlamaForCausalLM(config).eval().save_pretrained(folder)
    return folder


def mixture_twin(folder, quantized):
    """The float model whose quantized modules hold their dequantized q4_k_m values."""
    config = ModelConfig.from_json_file(folder / "config.json")
    weights = read_folder_weights(folder, torch.float32, progress=False)
    for name, module in quantized.named_modules():
        if isinstance(module, (QuantizedLinear, QuantizedEmbedding)) and f"{name}.weight" in weights:
            method = module_method("q4_k_m", name, LAYERS, config.tie_word_embeddings)
            weights[f"{name}.weight"] = quantize_weight(weights[f"{name}.weight"], method).dequantize()
    return build_model(config, weights, source=folder)


def test_at_load_each_module_takes_its_type_and_logits_equal_the_dequantized_mixture(llama_of_eight_layers):
    folder = llama_of_eight_layers
    model = AutoModelForCausalLM.from_pretrained(folder, progress=False, quantization_config={
        "method": "q4_k_m", "skip_modules": [], "embeddings": True})
    tied = model.config.tie_word_embeddings
    for index, layer in enumerate(model.model.layers):
        more = Q6_K if index in (0, 3, 6, 7) else Q4_K
        assert layer.self_attn.v_proj.ggml_type == more and layer.mlp.down_proj.ggml_type == more, index
        for linear in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.o_proj,
                       layer.mlp.gate_proj, layer.mlp.up_proj):
            assert linear.ggml_type == Q4_K, index
    assert model.model.embed_tokens.ggml_type == (Q6_K if tied else Q4_K)  # tied: the embeddings are the head
    assert isinstance(model.lm_head, QuantizedLinear) and model.lm_head.ggml_type == Q6_K
    reference = mixture_twin(folder, model)
    with torch.no_grad():
        assert_runs_agree(model(IDS).logits, reference(IDS).logits, reduction_len(model.config, IDS.shape[1]),
                          matmuls(model.config), "q4_k_m")
    assert torch.equal(model.generate(IDS, max_new_tokens=6, do_sample=False),
                       reference.generate(IDS, max_new_tokens=6, do_sample=False))


def test_default_keeps_head_and_embeddings_in_float(llama_of_eight_layers):
    model = AutoModelForCausalLM.from_pretrained(llama_of_eight_layers, progress=False, quantization_config="q4_k_m")
    assert type(model.lm_head) is nn.Linear and type(model.model.embed_tokens) is nn.Embedding
    assert model.model.layers[3].mlp.down_proj.ggml_type == Q6_K


def test_unknown_mixture_lists_q4_k_m():
    with pytest.raises(QuantizationConfigError, match="q4_k_m"):
        AutoModelForCausalLM.from_pretrained("unused", quantization_config={"method": "q4_k_s"})
