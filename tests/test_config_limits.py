"""config.json sizes against sane bounds and against the weights: a CheckpointError naming config.json (or the
folder) and the field, before any layer is laid out."""

from __future__ import annotations

import json

import pytest

from tokenmill import AutoModelForCausalLM
from tokenmill.config import ModelConfig
from tokenmill.config_limits import check_config_values, check_layer_count
from tokenmill.errors import CheckpointError


@pytest.fixture
def folder(tmp_path, tiny_llama):
    copy = tmp_path / "model"
    copy.mkdir()
    for item in tiny_llama[1].iterdir():
        (copy / item.name).write_bytes(item.read_bytes())
    return copy


def with_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("changes, match", [
    ({"num_hidden_layers": 2 ** 31}, r"num_hidden_layers = 2147483648: out of range \(allowed 1..1024\)"),
    ({"num_hidden_layers": 10 ** 6}, "num_hidden_layers = 1000000: out of range"),
    ({"hidden_size": 2 ** 40}, "hidden_size = 1099511627776: out of range"),
    ({"num_attention_heads": 0}, "num_attention_heads = 0: out of range"),
    ({"num_key_value_heads": 0}, "num_key_value_heads = 0: out of range"),
    ({"num_key_value_heads": 3}, "num_attention_heads = 4 is not a multiple of num_key_value_heads = 3"),
    ({"vocab_size": -5}, "vocab_size = -5: out of range"),
    ({"intermediate_size": -1}, "intermediate_size = -1: out of range"),
    ({"intermediate_size": 2 ** 40}, "intermediate_size = 1099511627776: out of range"),
    ({"head_dim": 0}, "head_dim = 0: out of range"),
    ({"hidden_size": True}, "hidden_size = True: must be a whole number"),
    ({"hidden_size": "32"}, "hidden_size = '32': must be a whole number"),
    ({"hidden_size": 32.5}, "hidden_size = 32.5: must be a whole number"),
    ({"max_position_embeddings": 2 ** 40}, "max_position_embeddings = 1099511627776: out of range"),
    ({"rms_norm_eps": -1.0}, "rms_norm_eps = -1.0: out of range"),
    ({"rope_theta": "abc"}, "rope_theta = 'abc': must be a number"),
    ({"rope_theta": 0}, "rope_theta = 0: out of range"),
    ({"rope_scaling": {"rope_type": "linear", "factor": float("inf")}}, "rope_scaling.factor = inf: out of range"),
    ({"rope_scaling": "linear"}, "rope_scaling = 'linear': must be an object"),
    ({"num_local_experts": 4, "num_experts_per_tok": 8}, "num_experts_per_tok = 8 is more than the 4 experts"),
    ({"hidden_size": None}, "hidden_size is missing"),
    ({"intermediate_size": "null"}, "intermediate_size = 'null': must be a whole number"),
])
def test_absurd_config_values_are_refused(folder, changes, match):
    with_config(folder, **changes)
    with pytest.raises(CheckpointError, match=match) as error:
        AutoModelForCausalLM.from_pretrained(folder, progress=False)
    assert str(error.value).startswith(f"{folder / 'config.json'}: ")


def test_a_null_intermediate_size_is_missing(folder):
    config = json.loads((folder / "config.json").read_text())
    config["intermediate_size"] = None
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="config.json: intermediate_size is missing"):
        AutoModelForCausalLM.from_pretrained(folder, progress=False)


def test_layer_count_is_checked_against_the_weights(folder):
    with_config(folder, num_hidden_layers=3)
    with pytest.raises(CheckpointError, match=r"num_hidden_layers = 3 but the weights hold layers 0..1"):
        AutoModelForCausalLM.from_pretrained(folder, progress=False)


def test_layer_count_names_gaps():
    with pytest.raises(CheckpointError, match="f.gguf: n_layers = 3 but the weights hold 2 layers with indices up to 2"):
        check_layer_count("f.gguf", 3, ["blk.0.w", "blk.2.w", "output.weight"], field="n_layers")
    check_layer_count("f", 2, ["model.layers.0.w", "model.layers.1.w", "model.norm.weight"])  # consistent
    check_layer_count("f", 2, ["transformer.h.0.w", "transformer.h.1.w"])  # GPT-2 naming
    check_layer_count("f", 7, ["some.other.naming"])  # unknown naming: the strict name check reports it


def test_a_real_config_passes_and_float_positions_are_accepted(folder):
    with_config(folder, max_position_embeddings=4096.0)
    check_config_values(folder / "config.json", json.loads((folder / "config.json").read_text()))
    assert ModelConfig.from_json_file(folder / "config.json").num_hidden_layers == 2


SIZES = {"vocab_size": 8, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 1}


def test_gemma3_style_rope_parameters_per_layer_type():
    good = SIZES | {"rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                                "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}}
    check_config_values("c.json", good)
    bad = SIZES | {"rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": -1.0}}}
    with pytest.raises(CheckpointError, match="rope_parameters.full_attention.rope_theta = -1.0"):
        check_config_values("c.json", bad)
