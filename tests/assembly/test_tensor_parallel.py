"""Tensor parallelism at the model level: 2 ranks x 1 thread (gloo), spawned once for every checkpoint here.

Each checkpoint's TP=2 logits are compared with one process's: the sharded model runs the same products with
the same reduction lengths, only the row-parallel sums are split in two and added by the all-reduce, so both are
float32 runs of one computation in different summation orders, each within the rounding floor of the exact
value (tests/numerics.py), hence within 2 x floor of each other (`assert_runs_agree`). Greedy tokens must be
identical. Dense tiny checkpoints are built with transformers' own classes, biases and norms perturbed so a
bias added on both ranks (or none) shows.
"""

from __future__ import annotations

import pytest
import torch
import transformers
from numerics import assert_runs_agree, matmuls, reduction_len
from tp_ranks import forward_and_generate, run_jobs

from tokenmill.assembly.pretrained import load_model
from tokenmill.assembly.tensor_parallel import _columns
from tokenmill.execution.parallel import SINGLE, TensorParallelError, spawn_ranks
from tokenmill.kernels.gguf_types import BY_NAME
from tokenmill.layers.quantized_linear import QuantizedLinear, QuantizedWeight

PROMPT = [1, 504, 3458, 314, 253, 1345, 30, 378]
NEW_TOKENS = 6
COMMON = dict(hidden_size=32, num_hidden_layers=2, max_position_embeddings=64, bos_token_id=1, eos_token_id=2)


def _tiny_configs() -> dict:
    return {
        # kv heads split (one per rank), biases on q/k/v, o_proj and the MLP (row-parallel biases added once)
        "llama": (transformers.LlamaForCausalLM, transformers.LlamaConfig(
            vocab_size=64, intermediate_size=40, num_attention_heads=4, num_key_value_heads=2,
            attention_bias=True, mlp_bias=True, **COMMON)),
        # one kv head, replicated on both ranks; odd vocabulary and intermediate width: uneven shards
        "qwen2": (transformers.Qwen2ForCausalLM, transformers.Qwen2Config(
            vocab_size=101, intermediate_size=37, num_attention_heads=4, num_key_value_heads=1, **COMMON)),
        # tied embeddings (one vocabulary shard for embedding and head), sandwich norms, sliding layers, softcap
        "gemma3": (transformers.Gemma3ForCausalLM, transformers.Gemma3TextConfig(
            vocab_size=101, intermediate_size=44, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
            query_pre_attn_scalar=8, sliding_window=4, pad_token_id=0, final_logit_softcapping=30.0,
            **{**COMMON, "num_hidden_layers": 3})),
        # experts split along their intermediate width
        "mixtral": (transformers.MixtralForCausalLM, transformers.MixtralConfig(
            vocab_size=64, intermediate_size=24, num_attention_heads=4, num_key_value_heads=2,
            num_local_experts=4, num_experts_per_tok=2, **COMMON)),
        # routed experts split as Mixtral's, the shared expert as an MLP, its gate replicated
        "qwen2_moe": (transformers.Qwen2MoeForCausalLM, transformers.Qwen2MoeConfig(
            vocab_size=64, intermediate_size=24, moe_intermediate_size=12, shared_expert_intermediate_size=20,
            num_attention_heads=4, num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, **COMMON)),
        # q/k/v and gate/up fused in the checkpoint, partial rotary
        "phi3": (transformers.Phi3ForCausalLM, transformers.Phi3Config(
            vocab_size=64, intermediate_size=40, num_attention_heads=4, num_key_value_heads=2,
            partial_rotary_factor=0.5, pad_token_id=0, **COMMON)),
        # learned positions, biased c_attn / c_fc / c_proj (Conv1D in the checkpoint), tied head
        "gpt2": (transformers.GPT2LMHeadModel, transformers.GPT2Config(
            vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=1, eos_token_id=2)),
    }


def _save(folder, model_class, config) -> str:
    torch.manual_seed(0)
    oracle = model_class(config).eval()
    with torch.no_grad():
        for name, parameter in oracle.named_parameters():
            if "norm" in name or name.endswith("bias"):
                parameter.normal_(0.0, 0.3)
    oracle.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, smollm2_gguf):
    """name → (source, load keywords, model config for the bound)."""
    found = {"smollm2-blocks": (str(smollm2_gguf), {}), "smollm2-dense": (str(smollm2_gguf), {"keep_quantized": False})}
    for name, (model_class, config) in _tiny_configs().items():
        found[name] = (_save(tmp_path_factory.mktemp(name), model_class, config), {})
    return found


@pytest.fixture(scope="module")
def tp_results(checkpoints):
    """Every checkpoint run by 2 ranks x 1 thread in one spawn: name → (logits, tokens, policy)."""
    jobs = [(source, keywords, PROMPT if "smollm2" in name else [1, 5, 9, 13, 40, 7], NEW_TOKENS)
            for name, (source, keywords) in checkpoints.items()]
    results = spawn_ranks(2, run_jobs, (jobs,), threads=1)
    return dict(zip(checkpoints, results))


@pytest.mark.parametrize("name", ["smollm2-blocks", "smollm2-dense", "llama", "qwen2", "gemma3", "mixtral",
                                  "qwen2_moe", "phi3", "gpt2"])
def test_tp2_matches_one_process(checkpoints, tp_results, name):
    source, keywords = checkpoints[name]
    single = load_model(source, progress=False, **keywords)
    prompt = PROMPT if "smollm2" in name else [1, 5, 9, 13, 40, 7]
    logits, tokens = forward_and_generate(single, torch.tensor([prompt]), NEW_TOKENS)
    tp_logits, tp_tokens, policy = tp_results[name]
    assert policy["parallel"] == "tensor" and policy["tp_size"] == 2
    assert policy["weight_format"] == single.execution_policy.weight_format
    assert tp_tokens == tokens, name
    config = single.config
    assert_runs_agree(tp_logits, logits, reduction_len(config, len(prompt)), matmuls(config), label=name)


def test_gguf_split_must_fall_on_block_boundaries():
    q8 = BY_NAME["Q8_0"]
    blocks = torch.zeros(4, 2 * q8.block_bytes, dtype=torch.uint8)  # 4 rows of 64 columns: 2 blocks each
    linear = QuantizedLinear(QuantizedWeight(blocks, q8.type_id, 2 * q8.block_elements))
    assert _columns(linear, 32, 64, keep_bias=True).blocks.shape == (4, q8.block_bytes)
    with pytest.raises(TensorParallelError, match="Q8_0 blocks hold 32 columns"):
        _columns(linear, 16, 64, keep_bias=True)


def test_size_that_does_not_split_heads_is_refused_before_loading(smollm2_gguf):
    """SmolLM2-135M: 9 query heads, 3 KV heads → 1, 2, 3 (KV ranges) and 9 (KV replicated) split; 4 does not."""
    class FourRanks:
        rank, size = 0, 4

    with pytest.raises(TensorParallelError, match="sizes that do: 1, 2, 3, 9"):
        load_model(str(smollm2_gguf), tensor_parallel=FourRanks(), progress=False)


def test_tp_arguments_refused_outside_torchrun(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(TensorParallelError, match="torchrun"):
        load_model("unused", tp_plan="auto")
    with pytest.raises(TensorParallelError, match="tp_plan must be 'auto'"):
        load_model("unused", tp_plan="colwise")
    with pytest.raises(TensorParallelError, match="needs tp_plan='auto'"):
        load_model("unused", tp_size=2)
    assert SINGLE.size == 1
