"""GGUFCheckpoint against transformers' own GGUF loader: configs, every weight, errors on bad files."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch
import transformers
from gguf import MODEL_ARCH_NAMES, GGUFWriter, get_tensor_name_map

from tokenmill.errors import CheckpointError, UnsupportedArchitectureError, UnsupportedQuantTypeError
from tokenmill.loading.gguf import GGUFCheckpoint
from tokenmill.models.registry import gguf_architectures

from numerics import UNIT_ROUNDOFF

SHARED_FIELDS = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps",
                 "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id"]


def rope_theta_of(config, layer_type=None) -> float:
    params = config.rope_parameters
    return params[layer_type]["rope_theta"] if layer_type else params["rope_theta"]


def assert_same_fields(mine: dict, oracle, fields):
    for name in fields:
        expected = getattr(oracle, name, None)
        if name == "head_dim" and expected is None:  # configs without the field derive it
            expected = oracle.hidden_size // oracle.num_attention_heads
        if isinstance(expected, float):  # GGUF stores float32: 1e-5 comes back as 9.9999997e-06, off by <= u relative
            expected = pytest.approx(expected, rel=2 * UNIT_ROUNDOFF[torch.float32])
        assert mine[name] == expected, name


# ---- the real models -------------------------------------------------------------------------------


def test_smollm2_config_matches_transformers(smollm2, hf_smollm2):
    config = smollm2.config_dict()
    assert smollm2.architecture == "llama"
    assert config["model_type"] == hf_smollm2.config.model_type == "llama"
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert_same_fields(config, hf_smollm2.config, SHARED_FIELDS)
    assert config["rope_theta"] == rope_theta_of(hf_smollm2.config)
    assert config["rope_scaling"] is None


def test_gemma3_config_matches_transformers(gemma3, hf_gemma3):
    config = gemma3.config_dict()
    oracle = hf_gemma3.config
    assert config["model_type"] == oracle.model_type == "gemma3_text"
    assert_same_fields(config, oracle, SHARED_FIELDS + [
        "sliding_window", "query_pre_attn_scalar", "layer_types", "final_logit_softcapping",
        "attn_logit_softcapping", "hidden_activation"])
    assert config["rope_theta"] == rope_theta_of(oracle, "full_attention")
    assert config["rope_local_base_freq"] == rope_theta_of(oracle, "sliding_attention")
    assert config["sliding_window_pattern"] == 6


def assert_state_dicts_equal(mine: dict, oracle_model):
    expected = oracle_model.state_dict()
    tied = oracle_model.config.tie_word_embeddings
    assert set(mine) == set(expected) - ({"lm_head.weight"} if tied else set())
    for name, tensor in mine.items():
        assert tensor.dtype == torch.float32
        assert_close(tensor, expected[name], name)


def assert_close(tensor: torch.Tensor, expected: torch.Tensor, name: str):
    """Cheap on 10^8-element tables: exact equality first, the largest difference only if that fails. Gemma's norms
    go through w+1 and back in float32: two roundings, each at most u times a value of at most max|w| + 1."""
    assert tensor.shape == expected.shape, name
    if not torch.equal(tensor, expected):
        atol = 2 * UNIT_ROUNDOFF[torch.float32] * (expected.abs().max().item() + 1)
        assert (tensor - expected).abs().max().item() <= atol, name


def test_smollm2_state_dict_matches_transformers(smollm2, hf_smollm2):
    assert_state_dicts_equal(smollm2.state_dict(progress=False), hf_smollm2)


def test_gemma3_state_dict_matches_transformers(gemma3, hf_gemma3):
    assert_state_dicts_equal(gemma3.state_dict(progress=False), hf_gemma3)


def test_bfloat16_state_dict_is_a_cast(tmp_path):
    """Gemma's `w + 1` norms are undone in float32 before the cast, so bfloat16 is exactly a cast."""
    write_tiny_gguf(tmp_path / "tiny.gguf", "gemma3", tiny_model("gemma3"))
    checkpoint = GGUFCheckpoint(tmp_path / "tiny.gguf", gguf_architectures())
    full = checkpoint.state_dict(progress=False)
    half = checkpoint.state_dict(dtype=torch.bfloat16, progress=False)
    for name, tensor in half.items():
        assert tensor.dtype == torch.bfloat16
        assert torch.equal(tensor, full[name].to(torch.bfloat16)), name


def test_tensor_types_and_metadata(smollm2, gemma3):
    types = smollm2.tensor_types()
    assert types["model.embed_tokens.weight"] == "Q8_0"
    assert types["model.layers.0.self_attn.q_proj.weight"] == "Q4_1"
    assert types["model.norm.weight"] == "F32"
    assert "lm_head.weight" not in types
    assert gemma3.tensor_types()["model.layers.0.mlp.down_proj.weight"] == "Q6_K"
    assert smollm2.metadata["llama.block_count"] == 30
    assert isinstance(smollm2.metadata["tokenizer.ggml.tokens"], list)


def test_generation_config(smollm2, gemma3, hf_smollm2, hf_gemma3):
    for checkpoint, oracle in ((smollm2, hf_smollm2), (gemma3, hf_gemma3)):
        expected = oracle.generation_config
        assert checkpoint.generation_config_dict() == {
            "bos_token_id": expected.bos_token_id, "eos_token_id": expected.eos_token_id,
            "pad_token_id": expected.pad_token_id}


# ---- tiny files for the other architectures --------------------------------------------------------

TINY = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, bos_token_id=1,
            eos_token_id=2, pad_token_id=0)


def tiny_model(arch: str):
    configs = {
        "llama": lambda: transformers.LlamaConfig(**TINY, tie_word_embeddings=False, rope_theta=5e5),
        "qwen2": lambda: transformers.Qwen2Config(**TINY, tie_word_embeddings=False),
        # transformers reads no head_dim from a qwen3 GGUF, so the tiny model uses its default (128)
        "qwen3": lambda: transformers.Qwen3Config(**TINY, head_dim=128),
        "gemma": lambda: transformers.GemmaConfig(**TINY, head_dim=16),
        "gemma2": lambda: transformers.Gemma2Config(**TINY, head_dim=16, sliding_window=16),
        "gemma3": lambda: transformers.Gemma3TextConfig(**TINY, head_dim=16, sliding_window=16),
        "phi3": lambda: transformers.Phi3Config(**TINY, tie_word_embeddings=False),
        "qwen2moe": lambda: transformers.Qwen2MoeConfig(
            **TINY, moe_intermediate_size=16, shared_expert_intermediate_size=24, num_experts=4,
            num_experts_per_tok=2, tie_word_embeddings=False),
        "gpt2": lambda: transformers.GPT2Config(vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=1024,
                                                bos_token_id=1, eos_token_id=2),
    }
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(configs[arch]()).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_()
    return model


def llama_cpp_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """What llama.cpp's converter does to llama Q/K rows."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def llama_cpp_tensors(arch: str, model) -> dict[str, np.ndarray]:
    """The model's weights under gguf-py's names, with llama.cpp's conversion transforms applied."""
    config = model.config
    arch_id = next(key for key, value in MODEL_ARCH_NAMES.items() if value == arch)
    names = get_tensor_name_map(arch_id, config.num_hidden_layers)
    tensors = {}
    for hf_name, weight in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        weight = weight.float().numpy().copy()
        layer = hf_name.split(".")[2] if hf_name.startswith("model.layers.") else None
        if hf_name.endswith("experts.gate_up_proj"):
            gate, up = np.split(weight, 2, axis=1)
            tensors[f"blk.{layer}.ffn_gate_exps.weight"], tensors[f"blk.{layer}.ffn_up_exps.weight"] = gate, up
            continue
        if hf_name.endswith("experts.down_proj"):
            tensors[f"blk.{layer}.ffn_down_exps.weight"] = weight
            continue
        base, _, suffix = hf_name.rpartition(".")
        gguf_name = names.get_name(base)
        leaf = gguf_name.split(".")[-1]
        if arch == "llama" and leaf in ("attn_q", "attn_k"):
            weight = llama_cpp_permute(weight, config.num_attention_heads if leaf == "attn_q" else config.num_key_value_heads)
        if arch.startswith("gemma") and leaf.endswith("norm"):
            weight = weight + 1
        if arch == "gpt2" and suffix == "weight" and leaf in ("attn_qkv", "attn_output", "ffn_up", "ffn_down"):
            weight = weight.T
        if leaf == "ffn_gate_inp_shexp":
            weight = weight.reshape(-1)
        tensors[f"{gguf_name}.{suffix}"] = np.ascontiguousarray(weight)
    return tensors


def add_metadata(writer: GGUFWriter, arch: str, values: dict) -> None:
    """`values` under the architecture's prefix (or as given when the key starts with "general.")."""
    adders = ((bool, writer.add_bool), (str, writer.add_string), (float, writer.add_float32), (int, writer.add_uint32))
    for key, value in values.items():
        full_key = key if key.startswith("general.") else f"{arch}.{key}"
        next(add for kind, add in adders if isinstance(value, kind))(full_key, value)


def write_tiny_gguf(path, arch: str, model, extra_tensors: dict | None = None, metadata: dict | None = None) -> None:
    config = model.config
    writer = GGUFWriter(str(path), arch)
    values = {"block_count": config.num_hidden_layers, "embedding_length": config.hidden_size,
              "attention.head_count": config.num_attention_heads}
    if arch == "gpt2":
        values.update({"context_length": config.n_positions, "feed_forward_length": 4 * config.hidden_size,
                       "attention.layer_norm_epsilon": config.layer_norm_epsilon})
    else:
        rope = config.rope_parameters
        values.update({
            "context_length": config.max_position_embeddings, "feed_forward_length": config.intermediate_size,
            "attention.head_count_kv": config.num_key_value_heads, "vocab_size": config.vocab_size,
            "attention.layer_norm_rms_epsilon": config.rms_norm_eps,
            "rope.freq_base": rope.get("full_attention", rope)["rope_theta"],
            "attention.key_length": getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads})
    if arch in ("gemma2", "gemma3"):
        values["attention.sliding_window"] = config.sliding_window
    if arch == "qwen2moe":
        values.update({"expert_count": config.num_experts, "expert_used_count": config.num_experts_per_tok,
                       "expert_feed_forward_length": config.moe_intermediate_size,
                       "expert_shared_feed_forward_length": config.shared_expert_intermediate_size})
    add_metadata(writer, arch, values | (metadata or {}))
    tokens = ["<unk>", "<s>", "</s>"] + [f"t{index}" for index in range(config.vocab_size - 3)]
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_token_types([2, 3, 3] + [1] * (len(tokens) - 3))
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(0)
    for name, tensor in (llama_cpp_tensors(arch, model) | (extra_tensors or {})).items():
        writer.add_tensor(name, tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# transformers' GGUF loader cannot read these (qwen2moe: no expert widths; gemma: no entry), so the original
# weights are the judge
ORACLE_LOADABLE = ["llama", "qwen2", "qwen3", "gemma2", "gemma3", "phi3", "gpt2"]


@pytest.mark.parametrize("arch", ORACLE_LOADABLE + ["qwen2moe", "gemma"])
def test_tiny_architecture_round_trip(arch, tmp_path):
    model = tiny_model(arch)
    write_tiny_gguf(tmp_path / "tiny.gguf", arch, model)
    checkpoint = GGUFCheckpoint(tmp_path / "tiny.gguf", gguf_architectures())
    weights = checkpoint.state_dict(progress=False)
    original = model.state_dict()
    assert set(weights) == set(original) - ({"lm_head.weight"} if model.config.tie_word_embeddings else set())
    for name, tensor in weights.items():  # gemma norms went through +1/-1 in float32: allow that rounding
        assert_close(tensor, original[name], name)
    config = checkpoint.config_dict()
    assert config["model_type"] == model.config.model_type
    assert config["architectures"] == [type(model).__name__]
    if arch != "gpt2":
        assert_same_fields(config, model.config, SHARED_FIELDS)
    if arch == "qwen2moe":
        assert_same_fields(config, model.config, ["num_experts", "num_experts_per_tok", "moe_intermediate_size",
                                                  "shared_expert_intermediate_size"])


@pytest.mark.parametrize("arch", ORACLE_LOADABLE)
def test_tiny_architecture_matches_transformers_loader(arch, tmp_path):
    write_tiny_gguf(tmp_path / "tiny.gguf", arch, tiny_model(arch))
    oracle = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="tiny.gguf",
                                                               dtype=torch.float32)
    checkpoint = GGUFCheckpoint(tmp_path / "tiny.gguf", gguf_architectures())
    assert_state_dicts_equal(checkpoint.state_dict(progress=False), oracle)
    config = checkpoint.config_dict()
    fields = ["n_embd", "n_layer", "n_head", "n_ctx", "layer_norm_epsilon"] if arch == "gpt2" else SHARED_FIELDS
    assert_same_fields(config, oracle.config, fields + ["vocab_size", "tie_word_embeddings"])
    if arch.startswith("gemma"):
        assert_same_fields(config, oracle.config, ["sliding_window", "layer_types"])


def llama_cpp_rope_freqs(theta: float, rotary_dim: int, factor: float, low: float, high: float,
                         original: int = 8192) -> np.ndarray:
    """The divisors llama.cpp's converter writes as `rope_freqs.weight` for Llama 3 scaling."""
    divisors = []
    for index in range(0, rotary_dim, 2):
        wavelength = 2 * np.pi * theta ** (index / rotary_dim)
        if wavelength < original / high:
            divisors.append(1.0)
        elif wavelength > original / low:
            divisors.append(factor)
        else:
            smooth = (original / wavelength - low) / (high - low)
            divisors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(divisors, dtype=np.float32)


@pytest.mark.parametrize("factor, low, high", [(32.0, 1.0, 4.0), (8.0, 1.0, 4.0), (16.0, 2.0, 8.0)])
def test_llama3_rope_parameters_recovered_from_rope_freqs(factor, low, high):
    from tokenmill.loading.gguf_rope import llama3_rope_parameters

    divisors = torch.from_numpy(llama_cpp_rope_freqs(5e5, 128, factor, low, high)).double()
    assert llama3_rope_parameters(divisors, 5e5, 128) == {
        "rope_type": "llama3", "factor": factor, "low_freq_factor": low, "high_freq_factor": high,
        "original_max_position_embeddings": 8192}
    assert llama3_rope_parameters(divisors * torch.linspace(1, 1.5, 64), 5e5, 128) is None  # not llama3-shaped


def test_llama_file_with_rope_freqs(tmp_path):
    model = tiny_model("llama")
    freqs = llama_cpp_rope_freqs(5e5, 8, 8.0, 1.0, 4.0)
    write_tiny_gguf(tmp_path / "tiny.gguf", "llama", model, {"rope_freqs.weight": freqs})
    checkpoint = GGUFCheckpoint(tmp_path / "tiny.gguf", gguf_architectures())
    assert checkpoint.config_dict()["rope_scaling"]["rope_type"] == "llama3"
    assert checkpoint.config_dict()["rope_scaling"]["factor"] == 8.0
    assert set(checkpoint.state_dict(progress=False)) == set(model.state_dict())  # no tensor for rope_freqs


def test_phi3_longrope_factors_become_rope_scaling(tmp_path):
    model = tiny_model("phi3")
    long_factor, short_factor = np.linspace(1, 2, 4, dtype=np.float32), np.ones(4, dtype=np.float32)
    write_tiny_gguf(tmp_path / "tiny.gguf", "phi3", model,
                    {"rope_factors_long.weight": long_factor, "rope_factors_short.weight": short_factor})
    checkpoint = GGUFCheckpoint(tmp_path / "tiny.gguf", gguf_architectures())
    config = checkpoint.config_dict()
    assert config["rope_scaling"] == {"rope_type": "longrope", "long_factor": long_factor.tolist(),
                                      "short_factor": short_factor.tolist(), "original_max_position_embeddings": 64}
    assert config["original_max_position_embeddings"] == 64
    assert set(checkpoint.state_dict(progress=False)) == set(model.state_dict())


# ---- bad files -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_llama_bytes(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("tiny") / "tiny.gguf"
    write_tiny_gguf(path, "llama", tiny_model("llama"))
    return path.read_bytes()


def write_bytes(tmp_path, data: bytes):
    path = tmp_path / "broken.gguf"
    path.write_bytes(data)
    return path


def test_bad_magic(tmp_path, tiny_llama_bytes):
    path = write_bytes(tmp_path, b"GGML" + tiny_llama_bytes[4:])
    with pytest.raises(CheckpointError, match="bad magic") as error:
        GGUFCheckpoint(path, gguf_architectures())
    assert str(path) in str(error.value)


@pytest.mark.parametrize("size", [0, 10, 200])
def test_truncated_header(tmp_path, tiny_llama_bytes, size):
    path = write_bytes(tmp_path, tiny_llama_bytes[:size])
    with pytest.raises(CheckpointError, match="truncated header|empty file|bad magic") as error:
        GGUFCheckpoint(path, gguf_architectures())
    assert str(path) in str(error.value)


def test_truncated_tensor_data(tmp_path, tiny_llama_bytes):
    path = write_bytes(tmp_path, tiny_llama_bytes[:-100])
    with pytest.raises(CheckpointError, match="truncated tensor data: tensor 'output.weight' needs bytes") as error:
        GGUFCheckpoint(path, gguf_architectures())
    assert str(path) in str(error.value)


def test_unsupported_version(tmp_path, tiny_llama_bytes):
    path = write_bytes(tmp_path, tiny_llama_bytes[:4] + struct.pack("<I", 7) + tiny_llama_bytes[8:])
    with pytest.raises(CheckpointError, match="unsupported GGUF version 7") as error:
        GGUFCheckpoint(path, gguf_architectures())
    assert str(error.value) == f"{path}: unsupported GGUF version 7 (supported: 2, 3)"


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        GGUFCheckpoint(tmp_path / "absent.gguf", gguf_architectures())


def test_unknown_architecture(tmp_path):
    writer = GGUFWriter(str(tmp_path / "odd.gguf"), "mamba9")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(UnsupportedArchitectureError, match="mamba9") as error:
        GGUFCheckpoint(tmp_path / "odd.gguf", gguf_architectures())
    assert "llama" in error.value.supported and "gemma3" in error.value.supported
    assert "odd.gguf" in str(error.value)


def test_without_architecture_specs_only_the_metadata_is_read(tmp_path, tiny_llama_bytes):
    """The tokenizer and generation config need no family; the config and weights do, from the caller's table."""
    checkpoint = GGUFCheckpoint(write_bytes(tmp_path, tiny_llama_bytes))
    assert checkpoint.architecture == "llama" and checkpoint.generation_config_dict()["eos_token_id"] == 2
    with pytest.raises(TypeError, match="opened without architecture specs"):
        checkpoint.config_dict()


def retyped(data: bytes, tensor_name: bytes, new_type: int) -> bytes:
    """The file with one tensor-table entry's ggml type id replaced (the 4 bytes after its dimensions)."""
    at = data.index(struct.pack("<Q", len(tensor_name)) + tensor_name) + 8 + len(tensor_name)
    (n_dims,) = struct.unpack_from("<I", data, at)
    type_at = at + 4 + 8 * n_dims
    return data[:type_at] + struct.pack("<I", new_type) + data[type_at + 4:]


def test_unsupported_quant_type(tmp_path, tiny_llama_bytes):
    # a 32x32 F32 tensor (4096 bytes) relabelled Q8_1 (32 blocks of 36 bytes): the bytes are there, no kernel is
    path = write_bytes(tmp_path, retyped(tiny_llama_bytes, b"blk.0.attn_output.weight", 9))
    checkpoint = GGUFCheckpoint(path, gguf_architectures())
    assert checkpoint.tensor_types()["model.layers.0.self_attn.o_proj.weight"] == "Q8_1"
    with pytest.raises(UnsupportedQuantTypeError, match="blk.0.attn_output.weight.*Q8_1") as error:
        checkpoint.state_dict(progress=False)
    assert str(path) in str(error.value)


def test_shape_not_a_whole_number_of_blocks(tmp_path, tiny_llama_bytes):
    path = write_bytes(tmp_path, retyped(tiny_llama_bytes, b"blk.0.attn_output.weight", 12))  # Q4_K: 256 per block
    with pytest.raises(CheckpointError, match="does not fit Q4_K blocks of 256"):
        GGUFCheckpoint(path, gguf_architectures())


@pytest.mark.parametrize("type_id", [77, 1000])  # 1000: tokenmill's own NF4, made at load, never a GGUF type
def test_unknown_type_id(tmp_path, tiny_llama_bytes, type_id):
    path = write_bytes(tmp_path, retyped(tiny_llama_bytes, b"blk.0.attn_output.weight", type_id))
    with pytest.raises(UnsupportedQuantTypeError, match=f"unknown ggml type id {type_id}"):
        GGUFCheckpoint(path, gguf_architectures())
