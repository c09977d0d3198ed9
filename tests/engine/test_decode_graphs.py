"""Decode steps replayed from captured graphs (engine/decode_graphs.py), the CPU standing in for CUDA graphs
(EagerStandIn re-runs the forward over the static buffers): padded batches and contexts, the scratch block and the
buffer refills must leave every output exactly as the eager engine gives it (the same computation on the same
rows: padding rows and columns are masked out or land in the scratch block), and real blocks untouched."""

from __future__ import annotations

import pytest
import torch

from tokenmill.engine import LLM, SamplingParams
from tokenmill.engine.decode_graphs import (BATCH_SIZES, MIN_COLUMNS, DecodeGraphs, EagerStandIn, padded_batch,
                                            padded_columns)
from tokenmill.engine.model_runner import ModelRunner
from tokenmill.execution.policy import ExecutionPolicy

BLOCKS, BLOCK_SIZE = 96, 4


def _prompts(count, seed=13):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 96, (n,), generator=generator).tolist() for n in range(3, 3 + 5 * count, 5)]


def _with_graphs(llm, capture=None):
    """The engine's runner replaced by one that replays decode steps (before any request: the pool is empty)."""
    runner = ModelRunner(llm.model, BLOCKS, BLOCK_SIZE, capture=capture or EagerStandIn())
    llm.engine.runner = runner
    return runner


def test_padded_sizes():
    assert [padded_batch(n) for n in (1, 2, 3, 5, 9, 200, 256)] == [1, 2, 4, 8, 16, 256, 256]
    assert padded_batch(BATCH_SIZES[-1] + 1) is None
    assert [padded_columns(n) for n in (1, MIN_COLUMNS, MIN_COLUMNS + 1, 300)] == [MIN_COLUMNS, MIN_COLUMNS,
                                                                                  2 * MIN_COLUMNS, 512]


def test_greedy_and_seeded_outputs_equal_the_eager_engine(tiny_model, hf_greedy):
    prompts = _prompts(5)
    greedy = [SamplingParams(temperature=0, max_tokens=14, ignore_eos=True) for _ in prompts]
    sampled = SamplingParams(temperature=0.9, top_p=0.95, seed=4, max_tokens=10, ignore_eos=True, n=2)
    eager = LLM(tiny_model, num_blocks=BLOCKS, block_size=BLOCK_SIZE)
    graphed = LLM(tiny_model, num_blocks=BLOCKS, block_size=BLOCK_SIZE)
    runner = _with_graphs(graphed)
    got = graphed.generate(prompts, greedy)
    assert [o.outputs[0].token_ids for o in got] == [hf_greedy(p, 14) for p in prompts]
    # five sequences finishing together pad to 8 rows; their contexts (< 64 columns) to MIN_COLUMNS
    assert (8, MIN_COLUMNS) in runner.graphs.graphs
    plain = eager.generate(prompts[:2], sampled)
    again = graphed.generate(prompts[:2], sampled)
    assert [[c.token_ids for c in o.outputs] for o in again] == [[c.token_ids for c in o.outputs] for o in plain]
    assert graphed.engine.blocks.num_used_blocks == 0


def test_padding_rows_write_only_the_scratch_block(tiny_model):
    llm = LLM(tiny_model, num_blocks=BLOCKS, block_size=BLOCK_SIZE)
    runner = _with_graphs(llm)
    llm.generate(_prompts(3), [SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)] * 3)
    keys = runner.pool.keys[0]
    assert keys.shape[0] == (BLOCKS + 1) * BLOCK_SIZE  # the engine's blocks and the scratch one
    used = set(range(0, 3 * 16 * BLOCK_SIZE))  # generously: every slot the three sequences could have held
    untouched = [slot for slot in range(BLOCKS * BLOCK_SIZE) if slot not in used]
    assert not keys[untouched].any(), "a padding row wrote into a block the engine could hand out"
    assert keys[BLOCKS * BLOCK_SIZE].any()  # the padding rows (3 -> 4) did write the scratch slot


def test_steps_it_does_not_serve_run_eagerly(tiny_model, hf_greedy):
    """Prefill chunks, prompt logprobs and LoRA rows go the eager way; outputs stay exact."""
    llm = LLM(tiny_model, num_blocks=BLOCKS, block_size=BLOCK_SIZE)
    runner = _with_graphs(llm)
    replays = []
    original = runner.graphs.run
    runner.graphs.run = lambda step: replays.append(len(step.rows.counts)) or original(step)
    [prompt] = _prompts(1)
    out = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=5, ignore_eos=True, prompt_logprobs=1))
    assert out[0].outputs[0].token_ids == hf_greedy(prompt, 5)
    assert len(replays) == 4  # the prefill step (with its prompt logprobs) ran eagerly, the 4 decode steps did not


def test_a_failed_capture_turns_graphs_off_with_one_warning(tiny_model, hf_greedy):
    class Failing:
        def capture(self, forward):
            raise RuntimeError("operation not permitted when stream is capturing")

    llm = LLM(tiny_model, num_blocks=BLOCKS, block_size=BLOCK_SIZE)
    runner = _with_graphs(llm, Failing())
    [prompt] = _prompts(1, seed=2)
    with pytest.warns(RuntimeWarning, match="decode steps run eagerly"):
        out = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))
    assert out[0].outputs[0].token_ids == hf_greedy(prompt, 6)
    assert not runner.graphs.enabled and not runner.graphs.graphs


def test_the_policy_captures_on_one_cuda_device_only_and_enforce_eager_turns_it_off(tiny_model):
    assert not ExecutionPolicy().captures_decode_steps
    assert ExecutionPolicy(device="cuda").captures_decode_steps  # a policy object: no device is touched
    assert LLM(tiny_model, num_blocks=8, block_size=4).engine.runner.graphs is None  # the CPU: eager
    assert LLM(tiny_model, num_blocks=8, block_size=4, enforce_eager=True).engine.runner.graphs is None
    runner = ModelRunner(tiny_model, 8, 4, capture=EagerStandIn())
    assert isinstance(runner.graphs, DecodeGraphs) and runner.pool.num_blocks == 9
