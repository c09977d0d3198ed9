"""GGUF → Hugging Face folder: the converted SmolLM2 loads in transformers with the logits transformers gets
from the GGUF itself; the tokenizer files round-trip; unsupported inputs fail with clear errors."""

from __future__ import annotations

import pytest
import torch
import transformers

from tokenmill import AutoModelForCausalLM
from tokenmill.cli import main as cli_main
from tokenmill.errors import UnsupportedArchitectureError
from tokenmill.assembly.convert import convert_gguf

from numerics import assert_matches_oracle, assert_runs_agree, matmuls, reduction_len

PROMPTS = ["The capital of France is", "def fibonacci(n):\n    ", "Once upon a time, in a small village,"]


@pytest.fixture(scope="module")
def converted(smollm2_gguf, tmp_path_factory):
    folder = tmp_path_factory.mktemp("smollm2-hf")
    assert cli_main(["convert", str(smollm2_gguf), str(folder), "--no-progress"]) == 0
    return folder


def test_folder_has_the_hugging_face_files(converted):
    names = {path.name for path in converted.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json"} <= names


def test_transformers_loads_the_folder_with_gguf_logits(converted, hf_smollm2, hf_smollm2_tokenizer):
    model = transformers.AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(converted)
    for prompt in PROMPTS:
        ids = hf_smollm2_tokenizer(prompt, return_tensors="pt").input_ids
        assert tokenizer(prompt, return_tensors="pt").input_ids.tolist() == ids.tolist()
        with torch.no_grad():
            assert_matches_oracle(model(ids).logits, hf_smollm2, ids, label=f"converted {prompt!r}")


def test_tokenmill_loads_the_folder_like_the_gguf(converted, smollm2_gguf, hf_smollm2_tokenizer):
    """The folder holds exactly the GGUF's dequantized weights: bit-identical logits to the GGUF loaded dense, and
    within tests/numerics.py's agreement bound for two float32 runs of the default quantized path."""
    from_folder = AutoModelForCausalLM.from_pretrained(converted)
    dense = AutoModelForCausalLM.from_pretrained(smollm2_gguf, keep_quantized=False)
    kernels = AutoModelForCausalLM.from_pretrained(smollm2_gguf)
    ids = hf_smollm2_tokenizer(PROMPTS[0], return_tensors="pt").input_ids
    with torch.no_grad():
        logits = from_folder(ids).logits
        assert torch.equal(logits, dense(ids).logits)
        assert_runs_agree(logits, kernels(ids).logits, reduction_len(dense.config, ids.shape[1]), matmuls(dense.config),
                          "folder against kernels")
    assert from_folder.generation_config.eos_token_id == dense.generation_config.eos_token_id


def test_missing_gguf_is_a_clear_error(tmp_path, capsys):
    assert cli_main(["convert", str(tmp_path / "absent.gguf"), str(tmp_path / "out")]) == 1
    assert "GGUF file not found" in capsys.readouterr().err


def test_unsupported_family_names_the_supported_ones(tmp_path):
    import gguf
    import numpy as np

    path = tmp_path / "falcon.gguf"
    writer = gguf.GGUFWriter(str(path), "falcon")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(UnsupportedArchitectureError) as error:
        convert_gguf(path, tmp_path / "out", progress=False)
    assert "'falcon'" in str(error.value) and "gemma3" in str(error.value) and "qwen2" in str(error.value)
    assert not (tmp_path / "out").exists()


def test_gemma3_round_trip(gemma3_gguf, hf_gemma3, hf_gemma3_tokenizer, tmp_path):
    """Gemma's (1 + w) norms, stored by llama.cpp as w + 1, come back as transformers' own weights; the
    SentencePiece tokenizer, its special tokens and the chat template survive the conversion."""
    convert_gguf(gemma3_gguf, tmp_path, progress=False)
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert tokenizer.chat_template == hf_gemma3_tokenizer.chat_template
    assert tokenizer.special_tokens_map == hf_gemma3_tokenizer.special_tokens_map
    assert tokenizer.padding_side == hf_gemma3_tokenizer.padding_side
    for prompt in ("The capital of France is", "def f(x):\n\treturn 中文 😀 café"):
        ids = hf_gemma3_tokenizer(prompt, return_tensors="pt").input_ids
        assert tokenizer(prompt, return_tensors="pt").input_ids.tolist() == ids.tolist()
        with torch.no_grad():
            assert_matches_oracle(model(ids).logits, hf_gemma3, ids, label=f"converted {prompt!r}")
