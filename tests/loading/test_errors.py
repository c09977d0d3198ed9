"""Each bad checkpoint gets a clear error naming the file and the reason."""

from __future__ import annotations

import json

import pytest
import torch

from tokenmill import AutoModelForCausalLM
from tokenmill.errors import CheckpointError, PickleCheckpointError, UnsupportedArchitectureError

from numerics import assert_matches_oracle


@pytest.fixture(scope="module")
def tiny_folder(tiny_llama):
    oracle, folder = tiny_llama
    return folder, oracle


def copy_folder(src, dst):
    dst.mkdir()
    for item in src.iterdir():
        (dst / item.name).write_bytes(item.read_bytes())
    return dst


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "nowhere" / "model")


def test_missing_config(tmp_path, tiny_folder):
    folder = copy_folder(tiny_folder[0], tmp_path / "m")
    (folder / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json not found"):
        AutoModelForCausalLM.from_pretrained(folder)


def test_corrupt_config(tmp_path, tiny_folder):
    folder = copy_folder(tiny_folder[0], tmp_path / "m")
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        AutoModelForCausalLM.from_pretrained(folder)


def test_truncated_safetensors(tmp_path, tiny_folder):
    folder = copy_folder(tiny_folder[0], tmp_path / "m")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="model.safetensors.*truncated or corrupt"):
        AutoModelForCausalLM.from_pretrained(folder)


def test_garbage_safetensors_header(tmp_path, tiny_folder):
    folder = copy_folder(tiny_folder[0], tmp_path / "m")
    (folder / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        AutoModelForCausalLM.from_pretrained(folder)


def test_unknown_model_type_lists_supported(tmp_path, tiny_folder):
    folder = copy_folder(tiny_folder[0], tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "mamba9000"
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").unlink()  # the architecture is checked before any weight is read
    with pytest.raises(UnsupportedArchitectureError, match="mamba9000.*supports: .*llama"):
        AutoModelForCausalLM.from_pretrained(folder)


def test_shape_mismatch_names_tensor(tmp_path, tiny_folder):
    folder = copy_folder(tiny_folder[0], tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    config["intermediate_size"] = 48
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"shape mismatch for model\.layers\.0\.mlp\.\w+_proj\.weight"):
        AutoModelForCausalLM.from_pretrained(folder)


def test_missing_weight_is_named(tmp_path, tiny_folder):
    from safetensors.torch import load_file, save_file

    folder = copy_folder(tiny_folder[0], tmp_path / "m")
    tensors = load_file(folder / "model.safetensors")
    del tensors["model.layers.1.self_attn.k_proj.weight"]
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="missing weights: model.layers.1.self_attn.k_proj.weight"):
        AutoModelForCausalLM.from_pretrained(folder)


def test_missing_shard_is_named(tmp_path, tiny_folder):
    folder = copy_folder(tiny_folder[0], tmp_path / "m")
    index = {"metadata": {}, "weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="missing: model-00001-of-00002.safetensors"):
        AutoModelForCausalLM.from_pretrained(folder)


def test_pickle_refused_unless_allowed(tmp_path, tiny_folder):
    folder, oracle = tiny_folder
    pickled = copy_folder(folder, tmp_path / "m")
    (pickled / "model.safetensors").unlink()
    torch.save(oracle.state_dict(), pickled / "pytorch_model.bin")
    with pytest.raises(PickleCheckpointError, match="pytorch_model.bin.*refused"):
        AutoModelForCausalLM.from_pretrained(pickled)
    model = AutoModelForCausalLM.from_pretrained(pickled, allow_pickle=True)
    ids = torch.randint(0, 64, (1, 9))
    with torch.no_grad():
        assert_matches_oracle(model(ids).logits, oracle, ids, label="pickle allowed")


def test_pickle_with_code_is_rejected_even_when_allowed(tmp_path, tiny_folder):
    import pickle

    class Exploit:
        def __reduce__(self):
            return (print, ("pwned",))

    folder = copy_folder(tiny_folder[0], tmp_path / "m")
    (folder / "model.safetensors").unlink()
    with open(folder / "pytorch_model.bin", "wb") as handle:
        pickle.dump({"x": Exploit()}, handle)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        AutoModelForCausalLM.from_pretrained(folder, allow_pickle=True)


def test_non_gguf_file_rejected(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"abc")
    with pytest.raises(CheckpointError, match="must be .gguf"):
        AutoModelForCausalLM.from_pretrained(path)


def test_invalid_dtype_and_attention(tiny_folder):
    with pytest.raises(ValueError, match="unsupported dtype"):
        AutoModelForCausalLM.from_pretrained(tiny_folder[0], dtype="float8")
    with pytest.raises(ValueError, match="attn_implementation must be one of"):
        AutoModelForCausalLM.from_pretrained(tiny_folder[0], attn_implementation="flash")


def test_folder_without_weights(tmp_path, tiny_folder):
    folder = copy_folder(tiny_folder[0], tmp_path / "m")
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights found"):
        AutoModelForCausalLM.from_pretrained(folder)


def test_corrupt_shard_index(tmp_path, tiny_folder):
    folder = copy_folder(tiny_folder[0], tmp_path / "m")
    (folder / "model.safetensors.index.json").write_text('{"weight_map": ')
    with pytest.raises(CheckpointError, match="model.safetensors.index.json: invalid shard index"):
        AutoModelForCausalLM.from_pretrained(folder)


def test_folder_without_tokenizer(tiny_folder):
    from tokenmill import AutoTokenizer

    with pytest.raises(CheckpointError, match="no tokenizer.json"):
        AutoTokenizer.from_pretrained(tiny_folder[0])


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    from test_gguf import tiny_model, write_tiny_gguf

    model = tiny_model("llama")
    path = tmp_path_factory.mktemp("tiny-gguf") / "tiny.gguf"
    write_tiny_gguf(path, "llama", model)
    return path, model


def test_gguf_file_inside_a_folder(tiny_gguf):
    """from_pretrained(folder, gguf_file=name) is the same model and tokenizer as the file's own path."""
    from tokenmill import AutoTokenizer

    path, oracle = tiny_gguf
    by_name = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, device="cpu", dtype="float32",
                                                   progress=False)
    assert by_name.device.type == "cpu" and by_name.dtype == torch.float32
    ids = torch.randint(3, 96, (1, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert_matches_oracle(by_name(ids).logits, oracle, ids, label="gguf_file in a folder")
    text = "t5 t17 t3"
    assert AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name).encode(text) == \
        AutoTokenizer.from_pretrained(path).encode(text)
    with pytest.raises(CheckpointError, match="GGUF file not found"):
        AutoModelForCausalLM.from_pretrained(path.parent, gguf_file="other.gguf")


@pytest.mark.parametrize("cut", [100, -100])
def test_truncated_gguf_through_the_public_api(tmp_path, tiny_gguf, cut):
    from tokenmill import AutoTokenizer

    data = tiny_gguf[0].read_bytes()
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(data[:cut])
    for load in (AutoModelForCausalLM.from_pretrained, AutoTokenizer.from_pretrained):
        with pytest.raises(CheckpointError, match="broken.gguf: truncated"):
            load(broken)
