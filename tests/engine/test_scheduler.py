"""Scheduler: continuous batching under a token budget, chunked prefill, preemption by recompute."""

from tokenmill.engine.block_manager import BlockManager
from tokenmill.engine.sampling_params import SamplingParams
from tokenmill.engine.scheduler import Scheduler
from tokenmill.engine.sequence import Sequence, SequenceStatus


def _seq(name, length):
    return Sequence(name, 0, list(range(100, 100 + length)), SamplingParams(temperature=0, max_tokens=50))


def _run(scheduler, plan, token=7):
    """Pretend the model ran: advance every chunk, append a token where the sequence is complete."""
    for chunk in plan.chunks:
        scheduler.record_computed(chunk)
        if chunk.completes_sequence:
            chunk.seq.output_token_ids.append(token)


def test_chunked_prefill_respects_the_token_budget():
    scheduler = Scheduler(BlockManager(64, 4), max_num_seqs=8, max_num_batched_tokens=10)
    long, short = _seq("long", 23), _seq("short", 3)
    scheduler.add(long)
    scheduler.add(short)
    plan = scheduler.schedule()
    assert [(c.seq.request_id, c.start, c.count) for c in plan.chunks] == [("long", 0, 10)]
    _run(scheduler, plan)
    plan = scheduler.schedule()
    assert [(c.seq.request_id, c.start, c.count) for c in plan.chunks] == [("long", 10, 10)]
    _run(scheduler, plan)
    plan = scheduler.schedule()  # long finishes its prompt (3 tokens), short joins in the same step
    assert [(c.seq.request_id, c.start, c.count) for c in plan.chunks] == [("long", 20, 3), ("short", 0, 3)]
    assert all(c.completes_sequence for c in plan.chunks)
    _run(scheduler, plan)
    plan = scheduler.schedule()  # both decode one token
    assert [(c.seq.request_id, c.start, c.count) for c in plan.chunks] == [("long", 23, 1), ("short", 3, 1)]


def test_max_num_seqs_caps_the_running_batch():
    scheduler = Scheduler(BlockManager(64, 4), max_num_seqs=2, max_num_batched_tokens=100)
    for i in range(3):
        scheduler.add(_seq(f"r{i}", 2))
    plan = scheduler.schedule()
    assert [c.seq.request_id for c in plan.chunks] == ["r0", "r1"]
    scheduler.finish(scheduler.running[0], "stop")
    _run(scheduler, plan)
    plan = scheduler.schedule()
    assert [c.seq.request_id for c in plan.chunks] == ["r1", "r2"]  # r2 joins r1's decode now that r0 has left
    assert len(scheduler.running) == 2


def test_decode_rows_and_prefill_chunks_share_a_step_decodes_first():
    scheduler = Scheduler(BlockManager(64, 4, enable_prefix_caching=False), max_num_seqs=8, max_num_batched_tokens=10)
    scheduler.add(_seq("a", 5))
    _run(scheduler, scheduler.schedule())
    scheduler.add(_seq("long", 12))
    plan = scheduler.schedule()  # a decodes; long's first chunk takes the rest of the budget in the same step
    assert [(c.seq.request_id, c.start, c.count) for c in plan.chunks] == [("a", 5, 1), ("long", 0, 9)]
    _run(scheduler, plan)
    scheduler.add(_seq("late", 2))
    plan = scheduler.schedule()  # decode first, then the continuing prefill, then the new arrival
    assert [(c.seq.request_id, c.start, c.count) for c in plan.chunks] == [
        ("a", 6, 1), ("long", 9, 3), ("late", 0, 2)]


def test_preemption_by_recompute_when_blocks_run_out():
    blocks = BlockManager(4, 2, enable_prefix_caching=False)
    scheduler = Scheduler(blocks, max_num_seqs=4, max_num_batched_tokens=100)
    first, second = _seq("first", 3), _seq("second", 3)
    scheduler.add(first)
    scheduler.add(second)
    _run(scheduler, scheduler.schedule())  # 2 blocks each: the pool is full
    assert blocks.num_free_blocks == 0
    _run(scheduler, scheduler.schedule())  # the 4th token still fits in 2 blocks each
    plan = scheduler.schedule()  # the 5th needs a 3rd block: the later sequence is preempted
    assert scheduler.num_preemptions >= 1
    assert second.status is SequenceStatus.WAITING and second.num_computed_tokens == 0
    assert second.output_token_ids  # outputs are kept and recomputed, not lost
    assert all(c.seq is first for c in plan.chunks)
    # when the first finishes, the second is prefilled again over prompt + outputs
    scheduler.finish(first, "stop")
    plan = scheduler.schedule()
    assert [(c.seq.request_id, c.start, c.count) for c in plan.chunks] == [("second", 0, second.num_tokens)]


def test_prefix_cache_skips_computing_shared_blocks():
    blocks = BlockManager(16, 4)
    scheduler = Scheduler(blocks, max_num_seqs=4, max_num_batched_tokens=100)
    a = _seq("a", 10)
    scheduler.add(a)
    _run(scheduler, scheduler.schedule())
    b = Sequence("b", 0, a.prompt_token_ids[:8] + [1, 2, 3], SamplingParams(temperature=0))
    scheduler.add(b)
    plan = scheduler.schedule()  # b joins a's decode step
    chunk = next(c for c in plan.chunks if c.seq is b)
    assert (chunk.start, chunk.count) == (8, 3)
    assert b.block_table[:2] == a.block_table[:2] and b.num_cached_prompt_tokens == 8
