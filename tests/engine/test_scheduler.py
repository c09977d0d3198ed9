"""Scheduler: continuous batching under a token budget, chunked prefill, preemption by recompute."""

import pytest

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


def _plan_rows(plan):
    return [(c.seq.request_id, c.start, c.count) for c in plan.chunks]


def test_scheduler_defaults_are_the_engine_defaults_and_limits_must_be_positive():
    from tokenmill.engine.engine import EngineConfig

    scheduler = Scheduler(BlockManager(4, 4))
    assert (scheduler.max_num_seqs, scheduler.max_num_batched_tokens) == (
        EngineConfig.max_num_seqs, EngineConfig.max_num_batched_tokens)
    assert scheduler.num_preemptions == 0
    Scheduler(BlockManager(4, 4), max_num_seqs=1, max_num_batched_tokens=1)  # the smallest valid limits
    for seqs, tokens in ((0, 1), (1, 0)):
        with pytest.raises(ValueError) as error:
            Scheduler(BlockManager(4, 4), max_num_seqs=seqs, max_num_batched_tokens=tokens)
        assert str(error.value) == "max_num_seqs and max_num_batched_tokens must be >= 1"


def test_has_unfinished_and_finish_in_either_queue():
    blocks = BlockManager(8, 4)
    scheduler = Scheduler(blocks, max_num_seqs=1, max_num_batched_tokens=100)
    assert not scheduler.has_unfinished()
    running, waiting = _seq("running", 5), _seq("waiting", 2)
    scheduler.add(running)
    assert scheduler.has_unfinished()  # waiting only
    scheduler.add(waiting)
    _run(scheduler, scheduler.schedule())
    assert list(scheduler.waiting) == [waiting] and scheduler.running == [running]
    scheduler.finish(waiting, "abort")  # still queued: leaves the queue
    assert not scheduler.waiting and waiting.status is SequenceStatus.FINISHED and waiting.finish_reason == "abort"
    assert scheduler.has_unfinished()  # running only
    scheduler.finish(running, "stop")
    assert running.finish_reason == "stop" and running.block_table == [] and blocks.num_free_blocks == 8
    assert not scheduler.has_unfinished()
    scheduler.finish(running, "length")  # a second finish changes nothing
    assert running.finish_reason == "stop"


def test_a_prefill_tail_of_two_tokens_and_a_last_budget_token_are_scheduled():
    scheduler = Scheduler(BlockManager(64, 4), max_num_seqs=8, max_num_batched_tokens=2)
    scheduler.add(_seq("a", 1))
    scheduler.add(_seq("p", 4))
    plan = scheduler.schedule()  # p is admitted with the one budget token a leaves
    assert _plan_rows(plan) == [("a", 0, 1), ("p", 0, 1)]
    _run(scheduler, plan)
    plan = scheduler.schedule()  # a's decode leaves one token for p
    assert _plan_rows(plan) == [("a", 1, 1), ("p", 1, 1)]
    _run(scheduler, plan)
    scheduler.finish(scheduler.running[0], "stop")
    plan = scheduler.schedule()  # p has exactly two prompt tokens left
    assert _plan_rows(plan) == [("p", 2, 2)]


def test_preemption_counts_names_the_victim_and_takes_the_latest():
    blocks = BlockManager(6, 2, enable_prefix_caching=False)
    scheduler = Scheduler(blocks, max_num_seqs=4, max_num_batched_tokens=100)
    first, second, third = _seq("first", 3), _seq("second", 3), _seq("third", 3)
    for seq in (first, second, third):
        scheduler.add(seq)
    _run(scheduler, scheduler.schedule())
    _run(scheduler, scheduler.schedule())  # 4 tokens each: 2 blocks each, the pool is full
    plan = scheduler.schedule()  # first needs a 3rd block: the latest admitted (third) goes, second stays
    assert plan.preempted == [third] and scheduler.num_preemptions == 1
    assert _plan_rows(plan) == [("first", 4, 1), ("second", 4, 1)]
    assert second.status is SequenceStatus.RUNNING and third.status is SequenceStatus.WAITING
    _run(scheduler, plan)
    _run(scheduler, scheduler.schedule())
    plan = scheduler.schedule()  # 7 tokens each need a 4th block: second is preempted as well
    assert plan.preempted == [second] and scheduler.num_preemptions == 2


def test_a_sequence_that_must_preempt_itself_is_not_scheduled():
    blocks = BlockManager(4, 2, enable_prefix_caching=False)
    scheduler = Scheduler(blocks, max_num_seqs=4, max_num_batched_tokens=100)
    first, second = _seq("first", 3), _seq("second", 4)
    scheduler.add(first)
    scheduler.add(second)
    _run(scheduler, scheduler.schedule())  # first: 4 tokens in 2 blocks; second: 5 tokens in 2 blocks
    plan = scheduler.schedule()  # only second needs a 3rd block, and it is the latest: it preempts itself
    assert plan.preempted == [second] and _plan_rows(plan) == [("first", 3, 1)]
    assert second.block_table == [] and blocks.num_free_blocks == 2


def test_an_exact_fit_preempts_nobody():
    blocks = BlockManager(5, 2, enable_prefix_caching=False)
    scheduler = Scheduler(blocks, max_num_seqs=4, max_num_batched_tokens=100)
    first, second = _seq("first", 3), _seq("second", 2)
    scheduler.add(first)
    scheduler.add(second)
    _run(scheduler, scheduler.schedule())
    _run(scheduler, scheduler.schedule())
    plan = scheduler.schedule()  # first takes the one free block
    assert plan.preempted == [] and scheduler.num_preemptions == 0
    assert _plan_rows(plan) == [("first", 4, 1), ("second", 3, 1)] and len(first.block_table) == 3


def test_prefix_hits_count_toward_the_blocks_a_new_sequence_needs():
    blocks = BlockManager(16, 4)
    scheduler = Scheduler(blocks, max_num_seqs=4, max_num_batched_tokens=100)
    a = _seq("a", 10)
    scheduler.add(a)
    _run(scheduler, scheduler.schedule())
    b = Sequence("b", 0, a.prompt_token_ids[:8] + [1, 2, 3], SamplingParams(temperature=0))
    scheduler.add(b)
    scheduler.schedule()
    assert len(b.block_table) == 3 and blocks.num_free_blocks == 16 - 3 - 1


def test_admission_without_room_gives_back_its_prefix_hits():
    blocks = BlockManager(4, 4)
    scheduler = Scheduler(blocks, max_num_seqs=4, max_num_batched_tokens=100)
    a = _seq("a", 8)
    scheduler.add(a)
    _run(scheduler, scheduler.schedule())
    scheduler.finish(a, "stop")  # a's two full blocks stay cached
    holder = _seq("holder", 8)
    holder.prompt_token_ids = [50] * 4  # one block, not shared
    scheduler.add(holder)
    b = Sequence("b", 0, a.prompt_token_ids + [1, 2, 3, 4, 5, 6], SamplingParams(temperature=0))
    scheduler.add(b)
    plan = scheduler.schedule()  # b hits 2 blocks but needs 2 more and only 1 is free: it waits
    assert _plan_rows(plan) == [("holder", 0, 4)]
    assert list(scheduler.waiting) == [b]
    assert (b.block_table, b.block_hashes, b.num_computed_tokens) == ([], [], 0)
    assert blocks.num_free_blocks == 3


def test_at_least_the_last_prompt_token_is_computed_on_a_full_prefix_hit():
    for length, cached in ((8, 4), (9, 8)):
        blocks = BlockManager(16, 4)
        scheduler = Scheduler(blocks, max_num_seqs=4, max_num_batched_tokens=100)
        a = _seq("a", length)
        scheduler.add(a)
        _run(scheduler, scheduler.schedule())
        b = _seq("b", length)  # the same prompt
        scheduler.add(b)
        plan = scheduler.schedule()
        assert (b.num_computed_tokens, b.num_cached_prompt_tokens) == (cached, cached)
        assert next(c for c in plan.chunks if c.seq is b).count == length - cached
