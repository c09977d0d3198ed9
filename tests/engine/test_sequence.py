"""Sequence: its token counts, its prefill state, and what preemption by recompute resets and keeps."""

from tokenmill.engine.sampling_params import SamplingParams
from tokenmill.engine.sequence import Sequence, SequenceStatus


def _seq(prompt=(1, 2, 3), outputs=()):
    seq = Sequence("r", 2, list(prompt), SamplingParams())
    seq.output_token_ids.extend(outputs)
    return seq


def test_a_new_sequence_waits_with_nothing_computed():
    seq = _seq()
    assert seq.seq_id == ("r", 2)
    assert seq.status is SequenceStatus.WAITING and not seq.is_finished
    assert (seq.block_table, seq.block_hashes, seq.output_token_ids, seq.output_logprobs) == ([], [], [], [])
    assert (seq.num_computed_tokens, seq.num_cached_prompt_tokens, seq.num_preemptions) == (0, 0, 0)
    assert (seq.finish_reason, seq.stop_text, seq.error, seq.generator, seq.prompt_logprobs) == (None,) * 5
    assert seq.first_token_time is None and seq.arrival_time > 0


def test_token_counts_cover_prompt_and_outputs():
    seq = _seq(outputs=(7, 8))
    assert seq.all_token_ids == [1, 2, 3, 7, 8] and seq.num_tokens == 5
    seq.num_computed_tokens = 4
    assert seq.num_uncomputed_tokens == 1


def test_in_prefill_until_the_whole_prompt_is_computed():
    seq = _seq()
    seq.num_computed_tokens = 2
    assert seq.in_prefill
    seq.num_computed_tokens = 3
    assert not seq.in_prefill


def test_status_values_and_finished():
    assert [s.value for s in SequenceStatus] == ["waiting", "running", "finished"]
    seq = _seq()
    seq.status = SequenceStatus.RUNNING
    assert not seq.is_finished
    seq.status = SequenceStatus.FINISHED
    assert seq.is_finished


def test_recompute_drops_the_cache_keeps_the_outputs_and_counts():
    seq = _seq(outputs=(7,))
    seq.status, seq.block_table, seq.block_hashes, seq.num_computed_tokens = SequenceStatus.RUNNING, [4, 5], [9], 4
    seq.draft_token_ids = [3, 3]  # drafts of the step it was preempted from
    seq.reset_for_recompute()
    assert (seq.block_table, seq.block_hashes, seq.num_computed_tokens, seq.draft_token_ids) == ([], [], 0, [])
    assert seq.status is SequenceStatus.WAITING and seq.output_token_ids == [7] and seq.num_preemptions == 1
    seq.reset_for_recompute()
    assert seq.num_preemptions == 2
