"""The Triton kernel set inside a model, the CPU standing in for the GPU (TRITON_INTERPRET=1): a tiny Llama whose
policy hands its forwards TritonOps decodes with the dynamic cache (generate) and with the paged pool (the
engine's runner) to the same greedy tokens as ATen, its decode logits within tests/numerics.py's agreement bound
for two float32 runs of one computation in different summation orders. On CUDA the policy picks this set itself."""

from __future__ import annotations

import pytest
import torch
from numerics import assert_runs_agree, matmuls, reduction_len

import triton  # noqa: E402,F401  (the test extra; on the CPU through its interpreter: tests/conftest.py)

from tokenmill import AutoModelForCausalLM  # noqa: E402
from tokenmill.engine import LLM, SamplingParams  # noqa: E402
from tokenmill.execution.ops import TritonOps  # noqa: E402

pytestmark = pytest.mark.triton


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    folder = tmp_path_factory.mktemp("tiny-llama-triton")
    transformers.LlamaForCausalLM(config).eval().save_pretrained(folder)
    return folder


@pytest.fixture
def kernel_calls(monkeypatch):
    """How many times the Triton kernel ran (each test checks it did)."""
    from tokenmill.kernels import triton_attention

    calls = []
    original = triton_attention.attention

    def counted(*args, **kwargs):
        calls.append(args[6] is not None)  # slots: the paged pool read in place
        return original(*args, **kwargs)

    monkeypatch.setattr(triton_attention, "attention", counted)
    return calls


@pytest.fixture
def fused_calls(monkeypatch):
    """Which fused Triton kernels (RMSNorm, rotary, silu * up) the forwards launched."""
    from tokenmill.kernels import triton_fused

    launched = set()
    for name in ("rms_norm", "rotary", "silu_mul"):
        def counted(*args, _name=name, _original=getattr(triton_fused, name)):
            launched.add(_name)
            return _original(*args)

        monkeypatch.setattr(triton_fused, name, counted)
    return launched


def _with_triton(model):
    model.execution_policy.__dict__["ops"] = TritonOps()  # what the policy hands forwards on CUDA
    return model


def test_generate_with_the_dynamic_cache(tiny_folder, kernel_calls, fused_calls):
    ids = torch.tensor([[1, 5, 9, 13, 40, 7]])
    plain = AutoModelForCausalLM.from_pretrained(tiny_folder, progress=False, kernels="torch")
    triton_model = _with_triton(AutoModelForCausalLM.from_pretrained(tiny_folder, progress=False, kernels="torch"))
    greedy = dict(max_new_tokens=8, do_sample=False, output_logits=True, return_dict_in_generate=True)
    expected, got = plain.generate(ids, **greedy), triton_model.generate(ids, **greedy)
    assert torch.equal(got.sequences, expected.sequences)
    for step, (mine, theirs) in enumerate(zip(got.logits[1:], expected.logits[1:])):  # decode: the Triton kernel's
        assert_runs_agree(mine, theirs, reduction_len(plain.config, ids.shape[1] + step + 1), matmuls(plain.config),
                          label=f"decode step {step}")
    assert kernel_calls and not any(kernel_calls)  # decode steps, on the dynamic cache's own tensors
    assert fused_calls == {"rms_norm", "rotary", "silu_mul"}  # the model's element-wise work went to Triton too


PROMPTS = [[1, 5, 9, 13, 40, 7], [3, 4, 5], [8, 8, 2, 90, 14, 2, 6, 7, 1]]


def _engine_tokens(folder, triton: bool = False, capture=None):
    """Greedy tokens of PROMPTS through the engine (ATen, or the Triton set; capture: decode steps replayed from
    graphs), and the engine's runner."""
    from tokenmill.engine.model_runner import ModelRunner

    model = AutoModelForCausalLM.from_pretrained(folder, progress=False, kernels="torch")
    if triton:
        _with_triton(model)
    llm = LLM(model, skip_tokenizer_init=True, num_blocks=32, block_size=4)
    if capture is not None:
        llm.engine.runner = ModelRunner(model, 32, 4, capture=capture)
    outputs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS],
                           SamplingParams(max_tokens=6, temperature=0, ignore_eos=True))
    return [o.outputs[0].token_ids for o in outputs], llm.engine.runner


def test_engine_steps_read_the_paged_pool(tiny_folder, kernel_calls):
    expected, _ = _engine_tokens(tiny_folder)
    got, _ = _engine_tokens(tiny_folder, triton=True)
    assert got == expected
    assert kernel_calls and all(kernel_calls)  # every call read the pool through slot tables


def test_engine_decode_steps_replayed_from_graphs(tiny_folder, kernel_calls):
    """The engine's captured decode steps (engine/decode_graphs.py, the CPU stand-in for CUDA graphs) with the
    Triton kernel reading the pool through padded slot tables: the eager engine's greedy tokens."""
    from tokenmill.execution.graphs import EagerStandIn

    expected, _ = _engine_tokens(tiny_folder)
    got, runner = _engine_tokens(tiny_folder, triton=True, capture=EagerStandIn())
    assert got == expected
    assert (4, 64) in runner.graphs.graphs and all(kernel_calls)  # 3 rows padded to 4, read in place
