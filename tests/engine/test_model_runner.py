"""The step's batch view: the vectorized layout against a row-by-row reference, and chunks cut into short
rows (segments) giving the same logits as transformers' forward over each whole sequence."""

import random

import pytest
import torch

from tokenmill.cache.paged import build_layout
from tokenmill.engine import model_runner
from tokenmill.engine import EngineConfig, LLMEngine, SamplingParams

from numerics import assert_matches_oracle


def _reference_layout(block_tables, starts, counts, block_size):
    """Row by row, the obvious way: right-aligned rows, padding reads slot 0."""
    query, columns = max(counts), max(s + c for s, c in zip(starts, counts))
    context = torch.zeros(len(counts), columns, dtype=torch.long)
    mask = torch.zeros(len(counts), columns, dtype=torch.long)
    positions = torch.zeros(len(counts), query, dtype=torch.long)
    new_rows, new_slots = [], []
    for row, (table, start, count) in enumerate(zip(block_tables, starts, counts)):
        total = start + count
        slots = [table[p // block_size] * block_size + p % block_size for p in range(total)]
        context[row, columns - total:] = torch.tensor(slots)
        mask[row, columns - total:] = 1
        positions[row, query - count:] = torch.arange(start, total)
        new_rows += range(row * query + query - count, (row + 1) * query)
        new_slots += slots[start:]
    return columns - query, context, mask, positions, torch.tensor(new_rows), torch.tensor(new_slots)


def test_layout_matches_the_row_by_row_reference():
    rng = random.Random(0)
    for _ in range(300):
        block_size = rng.choice([1, 2, 4, 16])
        tables, starts, counts = [], [], []
        for _ in range(rng.randint(1, 8)):
            start, count = rng.randint(0, 40), rng.randint(1, 20)
            blocks = -(-(start + count) // block_size) + rng.randint(0, 2)
            tables.append(rng.sample(range(200), blocks))
            starts.append(start)
            counts.append(count)
        layout, mask, positions = build_layout(tables, starts, counts, block_size, torch.device("cpu"))
        past, context, ref_mask, ref_positions, new_rows, new_slots = _reference_layout(
            tables, starts, counts, block_size)
        assert layout.past_length == past
        assert torch.equal(layout.context_slots, context) and torch.equal(mask, ref_mask)
        assert torch.equal(positions, ref_positions)
        assert torch.equal(layout.new_rows, new_rows) and torch.equal(layout.new_slots, new_slots)


def test_segment_length_packs_short_chunks_into_one_token_rows():
    assert model_runner.segment_length([1] * 32, columns=80) == 1  # decode only
    assert model_runner.segment_length([1] * 32 + [15], columns=80) == 1  # a short prompt joins the decodes
    assert model_runner.segment_length([500], columns=500) == 500  # one long prompt stays one row
    mixed = model_runner.segment_length([1] * 32 + [400], columns=400)
    assert 1 < mixed < 400


@pytest.mark.parametrize("segment", [1, 2, 3, None])
def test_split_rows_give_transformers_logits(tiny_model, hf_tiny, monkeypatch, segment):
    """Decode rows, a prefix-cached chunk and whole prompts in one step, cut into rows of `segment` tokens."""
    if segment is not None:
        monkeypatch.setattr(model_runner, "segment_length", lambda counts, columns: segment)
    engine = LLMEngine(tiny_model, config=EngineConfig(num_blocks=48, block_size=4, max_num_batched_tokens=64))
    generator = torch.Generator().manual_seed(21)
    prompts = [torch.randint(0, 96, (n,), generator=generator).tolist() for n in (6, 9, 13)]
    engine.add_request("a", prompts[0], SamplingParams(temperature=0, max_tokens=5))
    engine.step()  # "a" decodes from now on
    engine.add_request("b", prompts[1], SamplingParams(temperature=0, max_tokens=5, prompt_logprobs=1))
    engine.add_request("c", prompts[0][:4] + prompts[2], SamplingParams(temperature=0, max_tokens=5))
    plan = engine.scheduler.schedule()
    assert [chunk.count for chunk in plan.chunks][0] == 1 and plan.chunks[2].start == 4  # "c" reuses a block
    every = {i for i, chunk in enumerate(plan.chunks) if chunk.seq.prompt_logprobs is not None}
    last, every_position = engine.runner.run(plan.chunks, every)
    for index, chunk in enumerate(plan.chunks):
        tokens = chunk.seq.all_token_ids[:chunk.start + chunk.count]
        ids = torch.tensor([tokens])
        assert_matches_oracle(last[index], hf_tiny, ids, (0, -1), f"chunk {index} last")
        if index in every:
            assert_matches_oracle(every_position[index], hf_tiny, ids, (0, slice(chunk.start, None)),
                                  f"chunk {index} every position")


def test_an_engine_step_runs_on_the_execution_policys_threads(tiny_model):
    from tokenmill.engine import EngineConfig, LLMEngine, SamplingParams

    loaded, before = tiny_model.execution_policy, torch.get_num_threads()
    target = 1 if before != 1 else 2
    tiny_model.set_execution_policy(loaded.with_threads(target))
    try:
        engine = LLMEngine(tiny_model, config=EngineConfig(num_blocks=16, block_size=4))
        engine.add_request("a", [1, 2, 3], SamplingParams(max_tokens=2, temperature=0, ignore_eos=True))
        engine.step()
        assert torch.get_num_threads() == target
    finally:
        tiny_model.set_execution_policy(loaded)
        torch.set_num_threads(before)


# ---- without a model: which tokens a chunk feeds, the row length chosen, the pool's dtype ----

def test_chunk_token_ids_across_the_prompt_boundary():
    from tokenmill.engine.model_runner import chunk_token_ids
    from tokenmill.engine.sampling_params import SamplingParams
    from tokenmill.engine.scheduler import ScheduledChunk
    from tokenmill.engine.sequence import Sequence

    seq = Sequence("r", 0, [1, 2, 3], SamplingParams())
    seq.output_token_ids = [4, 5, 6]
    cases = {(3, 1): [4], (4, 2): [5, 6], (0, 3): [1, 2, 3], (2, 1): [3], (1, 3): [2, 3, 4], (2, 3): [3, 4, 5]}
    assert {key: chunk_token_ids(ScheduledChunk(seq, *key)) for key in cases} == cases


def test_segment_length_by_hand():
    from tokenmill.engine.model_runner import segment_length

    # cost = rows * (segment + columns * 0.01 + 0.2): 16 gives 3 rows * 16.82 = 50.46, 8 gives 6 * 8.82 = 52.92,
    # 27 gives 2 * 27.82 = 55.64
    assert segment_length([27, 13], 62) == 16
    # 4 gives 4 + 18 = 22 rows * 4.9 = 107.8; 2 gives 4 + 35 = 39 rows * 2.9 = 113.1
    assert segment_length([1, 1, 1, 1, 70], 70) == 4


def test_the_pool_takes_the_kv_dtype_or_the_models():
    from types import SimpleNamespace

    from tokenmill.engine.model_runner import ModelRunner

    from tokenmill.execution.policy import ExecutionPolicy

    model = SimpleNamespace(device=torch.device("cpu"), dtype=torch.float16, execution_policy=ExecutionPolicy())
    model.eval = lambda: model
    assert ModelRunner(model, 4, 2).pool.dtype == torch.float16
    assert ModelRunner(model, 4, 2, kv_dtype=torch.float32).pool.dtype == torch.float32
