"""model.save_pretrained writes a folder transformers and tokenmill load with the original logits, for every family:
checkpoint layouts (GPT-2 Conv1D, Phi-3 fused, per-expert MoE, Gemma 3 rope), sharding with an index,
transformers v5 config spelling; and add_tokens + resize_token_embeddings + save + reload."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from tokenizers import Tokenizer as Backend
from tokenizers import models, pre_tokenizers

from models import (test_gemma, test_gemma2, test_gemma3, test_gpt2, test_llama, test_mistral, test_mixtral, test_phi3,
                    test_qwen2, test_qwen2_moe, test_qwen3)
from models.parity import prompt_batch, save_tiny
from tokenmill import AutoModelForCausalLM, AutoTokenizer
from tokenmill.assembly.save import parse_size

from numerics import assert_matches_oracle, assert_runs_agree, matmuls, reduction_len

FAMILIES = {
    "llama": (test_llama.tiny_llama_config, transformers.LlamaForCausalLM),
    "mistral": (test_mistral.tiny_config, transformers.MistralForCausalLM),
    "qwen2": (test_qwen2.tiny_config, transformers.Qwen2ForCausalLM),
    "qwen3": (test_qwen3.tiny_config, transformers.Qwen3ForCausalLM),
    "gemma": (test_gemma.tiny_config, transformers.GemmaForCausalLM),
    "gemma2": (test_gemma2.tiny_config, transformers.Gemma2ForCausalLM),
    "gpt2": (test_gpt2.tiny_config, transformers.GPT2LMHeadModel),
    "phi3": (test_phi3.tiny_config, transformers.Phi3ForCausalLM),
    "mixtral": (test_mixtral.tiny_config, transformers.MixtralForCausalLM),
    "qwen2_moe": (test_qwen2_moe.tiny_config, transformers.Qwen2MoeForCausalLM),
    "gemma3": (test_gemma3.tiny_config, transformers.Gemma3ForCausalLM),
}


def oracle_logits(oracle, vocab_size):
    ids, mask = prompt_batch(vocab_size, length=20)
    with torch.no_grad():
        return ids, mask, oracle(ids, attention_mask=mask).logits


def assert_reload_matches(reloaded, oracle, ids, mask=None, label=""):
    """A reloaded model (either library's) within tests/numerics.py's bound of the original oracle's float64 twin."""
    with torch.no_grad():
        logits = reloaded(ids, attention_mask=mask).logits
    real = mask.bool() if mask is not None else None
    assert_matches_oracle(logits[real] if real is not None else logits, oracle, ids, real, label, attention_mask=mask)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_save_round_trips_through_both_loaders(tmp_path_factory, family):
    make_config, oracle_class = FAMILIES[family]
    pair = save_tiny(tmp_path_factory, family, oracle_class, make_config())
    out = tmp_path_factory.mktemp(f"{family}-saved")
    pair.load().save_pretrained(out)
    on_disk = json.loads((pair.folder / "config.json").read_text())
    ours = json.loads((out / "config.json").read_text())
    assert ours["architectures"] == on_disk["architectures"] and ours["model_type"] == on_disk["model_type"]
    assert "dtype" in ours and "torch_dtype" not in ours
    ids, mask, _ = oracle_logits(pair.oracle, pair.vocab_size)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ours_reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert_reload_matches(reloaded, pair.oracle, ids, mask, f"{family} reloaded by transformers")
    assert_reload_matches(ours_reloaded, pair.oracle, ids, mask, f"{family} reloaded by tokenmill")


def test_checkpoint_layout_is_the_families_own(tmp_path_factory):
    """Names and shapes on disk equal what transformers itself writes (GPT-2: Conv1D [in, out], fused c_attn)."""
    from safetensors import safe_open

    pair = save_tiny(tmp_path_factory, "gpt2-layout", transformers.GPT2LMHeadModel, test_gpt2.tiny_config())
    out = tmp_path_factory.mktemp("gpt2-layout-saved")
    pair.load().save_pretrained(out)

    def layout(folder):
        with safe_open(str(folder / "model.safetensors"), "pt") as handle:
            return {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}

    assert layout(out) == layout(pair.folder)
    config = json.loads((out / "config.json").read_text())
    assert config["n_embd"] == 40 and "hidden_size" not in config


def test_sharded_save_writes_an_index(tmp_path_factory):
    pair = save_tiny(tmp_path_factory, "gemma3-shard", transformers.Gemma3ForCausalLM, test_gemma3.tiny_config())
    out = tmp_path_factory.mktemp("gemma3-sharded")
    pair.load().save_pretrained(out, max_shard_size="40KB")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(out.glob("model-*-of-*.safetensors"))
    assert len(shards) > 2 and set(index["weight_map"].values()) == {path.name for path in shards}
    assert all(path.stat().st_size < 40_000 + 20_000 for path in shards)  # one tensor may overflow a shard
    config = json.loads((out / "config.json").read_text())
    assert set(config["rope_parameters"]) == {"full_attention", "sliding_attention"}
    ids, mask, _ = oracle_logits(pair.oracle, pair.vocab_size)
    for reloaded in (transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval(),
                     AutoModelForCausalLM.from_pretrained(out)):
        assert_reload_matches(reloaded, pair.oracle, ids, mask, "sharded")
    pair.load().save_pretrained(out)  # saving again unsharded leaves no stale shard or index behind
    assert sorted(path.name for path in out.glob("model*")) == ["model.safetensors"]
    assert_reload_matches(AutoModelForCausalLM.from_pretrained(out), pair.oracle, ids, mask, "unsharded again")


def test_model_and_tokenizer_saved_together_load_in_both(tmp_path_factory, smollm2_gguf, hf_smollm2_tokenizer):
    """A complete folder: weights, config, generation config, tokenizer files with the chat template."""
    config = transformers.LlamaConfig(vocab_size=len(hf_smollm2_tokenizer), hidden_size=32, intermediate_size=40,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      bos_token_id=1, eos_token_id=2, pad_token_id=2)
    pair = save_tiny(tmp_path_factory, "llama-full", transformers.LlamaForCausalLM, config)
    model, tokenizer = pair.load(), AutoTokenizer.from_pretrained(smollm2_gguf)
    model.generation_config.eos_token_id = [2, 0]
    out = tmp_path_factory.mktemp("llama-full-saved")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    chat = [{"role": "user", "content": "Hi there 👋"}]
    expected_text = hf_smollm2_tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    ours_tokenizer = AutoTokenizer.from_pretrained(out)
    theirs_tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    for loaded in (ours_tokenizer, theirs_tokenizer):
        assert loaded.apply_chat_template(chat, add_generation_prompt=True, tokenize=False) == expected_text
    ids = theirs_tokenizer(expected_text, return_tensors="pt").input_ids
    assert ours_tokenizer(expected_text, return_tensors="pt").input_ids.tolist() == ids.tolist()
    assert transformers.GenerationConfig.from_pretrained(out).eos_token_id == [2, 0]
    assert AutoModelForCausalLM.from_pretrained(out).generation_config.eos_token_id == [2, 0]
    assert_reload_matches(AutoModelForCausalLM.from_pretrained(out), pair.oracle, ids, label="tokenmill")
    assert_reload_matches(transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32), pair.oracle, ids,
                          label="transformers")


def test_generation_config_is_saved(tmp_path_factory):
    pair = save_tiny(tmp_path_factory, "phi3-gen", transformers.Phi3ForCausalLM, test_phi3.tiny_config())
    model = pair.load()
    model.generation_config.eos_token_id = [2, 5]
    out = tmp_path_factory.mktemp("phi3-gen-saved")
    model.save_pretrained(out)
    assert transformers.GenerationConfig.from_pretrained(out).eos_token_id == [2, 5]


def write_word_tokenizer(folder, vocab_size: int) -> None:
    backend = Backend(models.WordLevel({f"w{i}": i for i in range(vocab_size)}, unk_token="w3"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "w3", "pad_token": "w0", "bos_token": "w1",
        "eos_token": "w2"}))


@pytest.mark.parametrize("tied", [True, False])
def test_added_tokens_resize_save_reload(tmp_path_factory, tied):
    pair = save_tiny(tmp_path_factory, "qwen2-vocab", transformers.Qwen2ForCausalLM,
                     transformers.Qwen2Config(vocab_size=101, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                                              num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied,
                                              bos_token_id=1, eos_token_id=2, pad_token_id=0))
    write_word_tokenizer(pair.folder, pair.vocab_size)
    tokenizer, model = AutoTokenizer.from_pretrained(pair.folder), pair.load()
    old_ids = tokenizer("w5 w17 w33 w8", return_tensors="pt").input_ids
    with torch.no_grad():
        before = model(old_ids).logits
    assert tokenizer.add_tokens(["<tool>"], special_tokens=True) == 1 and tokenizer.add_tokens(["millstone"]) == 1
    model.resize_token_embeddings(len(tokenizer))
    assert model.config.vocab_size == 103 and model.lm_head.weight.shape[0] == 103
    with torch.no_grad():
        torch.testing.assert_close(model(old_ids).logits[..., :101], before, atol=0, rtol=0)
    out = tmp_path_factory.mktemp("qwen2-vocab-saved")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    text = "w5 <tool> millstone w9"
    # the explicit class: transformers' AutoTokenizer would pick Qwen2Tokenizer from config.json, which rebuilds
    # a byte-level BPE that this word-level test vocabulary is not
    reloaded_tokenizers = (AutoTokenizer.from_pretrained(out),
                           transformers.PreTrainedTokenizerFast.from_pretrained(out))
    for reloaded_tokenizer in reloaded_tokenizers:
        assert reloaded_tokenizer(text).input_ids == [5, 101, 102, 9]
    ids = torch.tensor([[5, 101, 102, 9]])
    ours = AutoModelForCausalLM.from_pretrained(out)
    assert ours.config.vocab_size == 103
    assert_reload_matches(ours, transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval(), ids,
                          label="resized")


def test_parse_size_reads_transformers_spellings():
    assert parse_size("30KB") == 30_000 and parse_size("2GiB") == 2 * 2**30 and parse_size(1234) == 1234
    with pytest.raises(ValueError, match="cannot read the size"):
        parse_size("lots")


def test_resize_pads_to_a_multiple_and_shrinks(tmp_path_factory):
    pair = save_tiny(tmp_path_factory, "gemma-resize", transformers.GemmaForCausalLM,
                     transformers.GemmaConfig(vocab_size=101, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                                              num_attention_heads=4, num_key_value_heads=1, head_dim=8,
                                              bos_token_id=1, eos_token_id=2, pad_token_id=0))
    model = pair.load()
    ids = torch.tensor([[5, 17, 33, 8, 44]])
    # the kept rows are the same bits; BLAS picks its kernel by the shape, so the sums may run in another order:
    # tests/numerics.py's agreement bound for two float32 runs
    with torch.no_grad():
        before, rows = model(ids).logits, model.get_input_embeddings().weight.clone()
        model.resize_token_embeddings(101, pad_to_multiple_of=64)
        assert model.get_input_embeddings().weight.shape[0] == 128 and model.config.vocab_size == 128
        assert torch.equal(model.get_input_embeddings().weight[:101], rows)
        shape = reduction_len(model.config, ids.shape[1]), matmuls(model.config)
        assert_runs_agree(model(ids).logits[..., :101], before, *shape, "padded vocabulary")
        model.resize_token_embeddings(50)
        assert model.lm_head.weight is model.model.embed_tokens.weight  # Gemma ties its head
        assert torch.equal(model.get_input_embeddings().weight, rows[:50])
        assert_runs_agree(model(ids).logits, before[..., :50], *shape, "shrunk vocabulary")
    with pytest.raises(ValueError, match="must be positive"):
        model.resize_token_embeddings(0)
