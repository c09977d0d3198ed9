"""A peft LoRA adapter on the real SmolLM2-135M, through both bases tokenmill runs: the Hugging Face folder
`tokenmill convert` writes (float weights), and the GGUF itself with its weights kept as Q4_1/Q8_0 blocks (the
delta added to the block kernels' matmul output). The oracle is peft on transformers' model of the converted
folder (the GGUF dequantized); logits within tests/numerics.py's bound, greedy tokens identical."""

from __future__ import annotations

import pytest
import torch
import transformers

from tokenmill import AutoModelForCausalLM
from tokenmill.cli import main as cli_main

from lora_oracle import make_adapter
from numerics import assert_matches_oracle

pytestmark = pytest.mark.slow

TEXT = "The quick brown fox jumps over the lazy dog.\n\tdef f(x):"
GREEDY_TOKENS = 8
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def converted(smollm2_gguf, tmp_path_factory):
    folder = tmp_path_factory.mktemp("smollm2-hf-lora")
    assert cli_main(["convert", str(smollm2_gguf), str(folder), "--no-progress"]) == 0
    return folder


@pytest.fixture(scope="module")
def adapter(converted, tmp_path_factory):
    """(folder, peft model on transformers' model of the converted folder)."""
    base = transformers.AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32).eval()
    folder = tmp_path_factory.mktemp("smollm2-converted-lora")
    return folder, make_adapter(base, folder, TARGETS, seed=31, rank=8, alpha=16)


@pytest.fixture(scope="module", params=["converted-folder", "gguf-blocks"])
def model(request, converted, smollm2_gguf, adapter):
    source = converted if request.param == "converted-folder" else smollm2_gguf
    loaded = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, progress=False)
    assert loaded.is_quantized() == (request.param == "gguf-blocks")
    loaded.load_adapter(adapter[0])
    return loaded


@pytest.fixture(scope="module")
def ids(hf_smollm2_tokenizer):
    return hf_smollm2_tokenizer(TEXT, return_tensors="pt").input_ids


def test_logits_match_peft_within_bound(model, adapter, ids):
    with torch.no_grad():
        ours = model(ids).logits
        model.disable_adapters()
        base = model(ids).logits
        model.enable_adapters()
    assert (ours - base).abs().max() > 0.1  # the adapter changes the logits: a dropped delta would fail
    assert_matches_oracle(ours, adapter[1], ids, label="smollm2 lora")


def test_greedy_tokens_match_peft(model, adapter, ids):
    settings = dict(max_new_tokens=GREEDY_TOKENS, min_new_tokens=GREEDY_TOKENS, do_sample=False)
    with torch.no_grad():
        expected = adapter[1].generate(input_ids=ids, **settings)
    assert model.generate(ids, **settings).tolist() == expected.tolist()


def test_merging_into_gguf_blocks_is_refused_then_works_dequantized(smollm2_gguf, adapter, ids):
    model = AutoModelForCausalLM.from_pretrained(smollm2_gguf, dtype=torch.float32, progress=False)
    model.load_adapter(adapter[0])
    with pytest.raises(TypeError, match="merging needs float weights .call model.dequantize"):
        model.merge_and_unload()
    assert model.active_adapters() == ["default"]  # nothing merged, nothing unloaded
    model.dequantize()  # the adapter follows the new float modules, then merges into them
    model.merge_and_unload()
    assert model.lora_adapters.names() == []
    with torch.no_grad():
        assert_matches_oracle(model(ids).logits, adapter[1], ids, label="dequantized, merged")
