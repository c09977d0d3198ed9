"""PEFT LoRA adapters on tiny random checkpoints of several families, against peft itself.

Each adapter is made by `peft` on transformers' model (B random, not zero) and saved; tokenmill loads the base
checkpoint and the adapter folder. Logits must be within tests/numerics.py's bound of peft's (the peft model is
the oracle: its float32 and float64 runs), greedy tokens identical; switching, disabling, deleting and merging
must give the base's or the adapter's logits; a batch mixing adapters must equal each row run alone. The MoE
families run twice: with module targets only, and with peft's target_parameters on the stacked experts and the
router as well (transformers 5 keeps experts as 3-D parameters, not one Linear each).
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from tokenmill import AutoModelForCausalLM
from tokenmill.loading.peft import AdapterError

from lora_oracle import make_adapter, peft_logits
from models.parity import PAD_ID, prompt_batch, save_tiny
from models.test_gemma3 import tiny_config as gemma3_config
from models.test_gpt2 import tiny_config as gpt2_config
from models.test_mixtral import tiny_config as mixtral_config
from models.test_phi3 import tiny_config as phi3_config
from models.test_qwen2 import tiny_config as qwen2_config
from models.test_qwen2_moe import tiny_config as qwen2_moe_config
from numerics import assert_matches_oracle, assert_runs_agree, matmuls, reduction_len

ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
GATED_MLP = ["gate_proj", "up_proj", "down_proj"]
SHARED_EXPERT = ["shared_expert.gate_proj", "shared_expert.up_proj", "shared_expert.down_proj", "shared_expert_gate"]
# listed against the modules' registration order: peft sorts them and wraps in the module's own order
EXPERT_PARAMETERS = ["experts.down_proj", "experts.gate_up_proj", "mlp.gate.weight"]


def llama_config():
    return transformers.LlamaConfig(vocab_size=97, hidden_size=48, intermediate_size=76, num_hidden_layers=2,
                                    num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64,
                                    bos_token_id=1, eos_token_id=2, pad_token_id=0)


# family → (transformers class, config, peft target_modules, extra LoraConfig options)
FAMILIES = {
    "llama": (transformers.LlamaForCausalLM, llama_config, ATTENTION + GATED_MLP,
              {"use_rslora": True, "rank_pattern": {"v_proj": 2}, "alpha_pattern": {"down_proj": 3}}),
    "qwen2": (transformers.Qwen2ForCausalLM, qwen2_config, ATTENTION + GATED_MLP, {}),
    "gemma3": (transformers.Gemma3ForCausalLM, lambda: gemma3_config(num_hidden_layers=2), ATTENTION + GATED_MLP, {}),
    "mixtral": (transformers.MixtralForCausalLM, mixtral_config, ATTENTION, {}),
    "mixtral-experts": (transformers.MixtralForCausalLM, mixtral_config, ["q_proj", "o_proj"],
                        # peft applies both patterns to the parameters (it warns they matched no module: its check
                        # looks at module names only)
                        {"target_parameters": EXPERT_PARAMETERS, "rank_pattern": {"down_proj": 3},
                         "alpha_pattern": {"gate.weight": 5}}),
    "qwen2_moe": (transformers.Qwen2MoeForCausalLM, qwen2_moe_config, ATTENTION + SHARED_EXPERT, {}),
    "qwen2_moe-experts": (transformers.Qwen2MoeForCausalLM, qwen2_moe_config, ["v_proj"] + SHARED_EXPERT,
                          {"target_parameters": ["experts.gate_up_proj", "mlp.gate.weight"], "use_rslora": True}),
    "phi3": (transformers.Phi3ForCausalLM, phi3_config, ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"], {}),
    "gpt2": (transformers.GPT2LMHeadModel, gpt2_config, ["c_attn", "c_proj", "c_fc"], {"fan_in_fan_out": True}),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory):
    """(peft model, tokenmill model with the adapter loaded, transformers' base model, adapter folder, name)."""
    model_class, config, targets, options = FAMILIES[request.param]
    pair = save_tiny(tmp_path_factory, request.param, model_class, config())
    folder = tmp_path_factory.mktemp(f"{request.param}-lora")
    wrapped = make_adapter(pair.oracle, folder, targets, seed=3, **options)
    model = pair.load()
    model.load_adapter(folder)
    return wrapped, model, pair, folder, request.param


def test_logits_match_peft_within_bound(family):
    wrapped, model, pair, *_ = family
    ids, mask = prompt_batch(pair.vocab_size, length=24)
    with torch.no_grad():
        actual = model(ids, attention_mask=mask).logits
        base = pair.oracle(ids, attention_mask=mask).logits
    real = mask.bool()
    assert (peft_logits(wrapped, ids, attention_mask=mask) - base)[real].abs().max() > 0.05  # the delta shows
    assert_matches_oracle(actual[real], wrapped, ids, real, f"lora {model.config.model_type}", attention_mask=mask)


def test_greedy_tokens_match_peft(family):
    wrapped, model, pair, *_ = family
    # 20 tokens: past Phi-3's original_max_position_embeddings (16) from the start, where both pick long factors
    ids, mask = prompt_batch(pair.vocab_size, length=20)
    settings = dict(attention_mask=mask, do_sample=False, max_new_tokens=8, min_new_tokens=8, pad_token_id=PAD_ID)
    with torch.no_grad():
        expected = wrapped.generate(input_ids=ids, **settings)
        actual = model.generate(ids, **settings)
    assert actual.tolist() == expected.tolist()


def test_disable_enable_and_delete(family):
    wrapped, model, pair, folder, _ = family
    ids = prompt_batch(pair.vocab_size, length=12, pad_rows=())[0]
    try:
        model.disable_adapters()
        assert model.active_adapters() == []
        with torch.no_grad():
            assert_matches_oracle(model(ids).logits, pair.oracle, ids, label="disabled")
        model.enable_adapters()
        model.load_adapter(folder, adapter_name="second")
        assert model.active_adapters() == ["default"]  # loading another does not switch
        model.set_adapter("second")
        with torch.no_grad():
            assert_matches_oracle(model(ids).logits, wrapped, ids, label="second")
        model.delete_adapter("second")  # the active one: as peft, the first remaining becomes active
        assert model.lora_adapters.names() == ["default"] and model.active_adapters() == ["default"]
        with pytest.raises(KeyError, match="no adapter named 'second'"):
            model.set_adapter("second")
    finally:
        model.enable_adapters()
        model.set_adapter("default")


def test_mixed_batch_equals_each_row_alone(family, tmp_path):
    _, model, pair, _, name = family
    _, _, targets, options = FAMILIES[name]
    make_adapter(pair.oracle, tmp_path, targets, seed=11, **options)
    model.load_adapter(tmp_path, adapter_name="other")
    try:
        ids = prompt_batch(pair.vocab_size, length=10, pad_rows=(), batch=4)[0]
        names = ["default", None, "other", "default"]
        with torch.no_grad():
            mixed = model(ids, adapter_names=names).logits
            for row, name in enumerate(names):
                alone = model(ids[row:row + 1], adapter_names=[name]).logits
                assert_runs_agree(mixed[row:row + 1], alone, reduction_len(pair.oracle.config, 10),
                                  matmuls(pair.oracle.config), f"row {row} ({name})")
            assert not torch.allclose(mixed[0], mixed[2])  # the two adapters differ
        with pytest.raises(KeyError, match="no adapter named 'missing'"):
            model(ids, adapter_names=["missing", None, None, None])
    finally:
        model.delete_adapter("other")


def test_merge_and_unload_equals_peft(family):
    wrapped, _, pair, folder, _ = family
    model = pair.load()
    model.load_adapter(folder)
    ids = prompt_batch(pair.vocab_size, length=12, pad_rows=())[0]
    assert model.merge_and_unload() is model
    assert model.lora_adapters.names() == []
    with torch.no_grad():
        assert_matches_oracle(model(ids).logits, wrapped, ids, label="merged")


def test_per_expert_module_targets_are_refused(tmp_path):
    config = mixtral_config()
    pair_folder = tmp_path / "base"
    torch.manual_seed(0)
    transformers.MixtralForCausalLM(config).save_pretrained(pair_folder)
    model = AutoModelForCausalLM.from_pretrained(pair_folder, dtype=torch.float32)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4}))
    hidden, inner = config.hidden_size, config.intermediate_size
    save_file({"base_model.model.model.layers.0.mlp.experts.0.w1.lora_A.weight": torch.ones(2, hidden),
               "base_model.model.model.layers.0.mlp.experts.0.w1.lora_B.weight": torch.ones(inner, 2)},
              adapter / "adapter_model.safetensors")
    with pytest.raises(AdapterError, match=r"experts or routers as modules \(one Linear per expert, as "
                                           r"transformers 4 had\) is not supported; .* peft's target_parameters"):
        model.load_adapter(adapter)
    assert model.lora_adapters.names() == []


def test_expert_parameter_factors_that_do_not_fit_are_refused(tmp_path_factory):
    pair = save_tiny(tmp_path_factory, "mixtral-misfit", transformers.MixtralForCausalLM, mixtral_config())
    folder = tmp_path_factory.mktemp("mixtral-misfit-lora")
    make_adapter(pair.oracle, folder, [], seed=5, target_parameters=EXPERT_PARAMETERS)
    weights_file = folder / "adapter_model.safetensors"
    tensors = load_file(weights_file)
    model = pair.load()
    inner = "base_model.model.model.layers.0.mlp.experts.base_layer"
    save_file({key: value for key, value in tensors.items() if not key.startswith(inner)}, weights_file)
    with pytest.raises(AdapterError, match=r"model.layers.0.mlp.experts: 1 LoRA factor pair\(s\) where "
                                           r"target_parameters .* names 2 of its parameters"):
        model.load_adapter(folder)
    tensors[f"{inner}.lora_A.weight"] = tensors[f"{inner}.lora_A.weight"][:-1]  # 19 rows for 5 experts
    tensors[f"{inner}.lora_B.weight"] = tensors[f"{inner}.lora_B.weight"][:, :-1].contiguous()
    save_file(tensors, weights_file)
    with pytest.raises(AdapterError, match=r"experts.gate_up_proj: lora_A .* do not fit the model's"):
        model.load_adapter(folder)
    assert model.lora_adapters.names() == []  # nothing half-loaded


def test_adapters_that_do_not_fit_the_model_are_refused(tmp_path_factory, tiny_llama):
    oracle, folder = tiny_llama  # hidden 32: the 48-wide adapter below is for another size
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    pair = save_tiny(tmp_path_factory, "llama-other-size", transformers.LlamaForCausalLM, llama_config())
    wrong_size = tmp_path_factory.mktemp("wrong-size-lora")
    make_adapter(pair.oracle, wrong_size, ["q_proj"], seed=1)
    with pytest.raises(AdapterError, match="the adapter.s delta is 48 x 48, the model.s .* is 32 x 32"):
        model.load_adapter(wrong_size)
    head = tmp_path_factory.mktemp("lm-head-lora")
    make_adapter(oracle, head, ["lm_head"], seed=1)
    with pytest.raises(AdapterError, match="a full copy of a base layer"):
        model.load_adapter(head)
    save_file({"base_model.model.lm_head.lora_A.weight": torch.ones(2, 32),
               "base_model.model.lm_head.lora_B.weight": torch.ones(64, 2)}, head / "adapter_model.safetensors")
    with pytest.raises(AdapterError, match="not a projection LoRA applies to here"):
        model.load_adapter(head)
    with pytest.raises(AdapterError, match="not a local adapter folder"):
        model.load_adapter(tmp_path_factory.mktemp("empty") / "missing")
    with pytest.raises(NotImplementedError, match="inference only"):
        model.load_adapter(head, is_trainable=True)
    assert model.lora_adapters.names() == []  # nothing half-loaded
