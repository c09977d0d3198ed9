"""The thread tuner on simulated step times: it moves to the faster count, stays off a slow one while probing
it ever more rarely, and does not switch on one lucky step."""

from tokenmill.engine.thread_tuner import ThreadTuner


def _run(tuner, seconds_for, steps, tokens=32):
    used = []
    for step in range(steps):
        threads = tuner.threads_for_next_step()
        used.append(threads)
        tuner.record(threads, seconds_for(threads, step), tokens)
    return used


def test_moves_to_the_faster_count_and_stays():
    tuner = ThreadTuner([1, 2])
    used = _run(tuner, lambda threads, step: 0.05 if threads == 2 else 0.08, 200)
    assert used[0] == 1 and tuner.current == 2
    assert used[-100:].count(1) <= 4  # later probes of the slow count are rare


def test_stays_on_one_thread_when_two_are_much_slower_and_probes_thin_out():
    tuner = ThreadTuner([1, 2], max_interval=1024, max_seconds=float("inf"))
    used = _run(tuner, lambda threads, step: 1.0 if threads == 2 else 0.1, 2000)
    assert tuner.current == 1 and tuner.switches == 0
    assert used.count(2) <= 9  # probes after 8, 16, 32, ... steps: a handful in 2000 steps


def test_one_lucky_probe_step_does_not_switch():
    tuner = ThreadTuner([1, 2])
    fast_once = {"left": 1}

    def seconds(threads, step):
        if threads == 2 and fast_once["left"]:
            fast_once["left"] -= 1
            return 0.01  # a lucky step
        return 0.5 if threads == 2 else 0.1

    _run(tuner, seconds, 300)
    assert tuner.current == 1 and tuner.switches == 0


def test_step_cost_compares_steps_of_different_sizes():
    tuner = ThreadTuner([1, 2])
    # big prefill steps on 1 thread take long but are cheap per token: 2 threads must not look better
    used = []
    for step in range(300):
        threads = tuner.threads_for_next_step()
        tokens = 512 if step % 10 == 0 else 32
        per_token = 0.002 if threads == 1 else 0.004
        tuner.record(threads, per_token * (tokens + 32), tokens)
        used.append(threads)
    assert tuner.current == 1


def test_leaves_a_count_that_turned_slow_within_the_time_cap():
    """Two threads won while the machine was idle; then other work arrives and they turn ten times slower."""
    tuner = ThreadTuner([1, 2], max_seconds=30.0)

    def seconds(threads, step):
        busy = step >= 300
        if threads == 2:
            return 1.0 if busy else 0.05
        return 0.1

    used = _run(tuner, seconds, 400)
    assert 2 in used[250:300] and tuner.current == 1
    assert used[300:].count(2) <= 40  # back on one thread after about 30 s of slow steps


# ---- exact traces (step times that are powers of two, so every comparison is exact) ----

import pytest  # noqa: E402

from tokenmill.engine.thread_tuner import TOKENS_PER_FIXED_COST, step_cost  # noqa: E402


def test_step_cost_is_per_token_plus_the_fixed_share():
    assert TOKENS_PER_FIXED_COST == 32 and step_cost(1.0, 32) == 1 / 64 and step_cost(3.0, 0) == 3 / 32


def test_choices_are_checked_sorted_and_the_start_is_the_fewest():
    tuner = ThreadTuner([4, 2, 4])
    assert tuner.choices == [2, 4] and tuner.current == 2
    assert (tuner.min_interval, tuner.max_interval, tuner.margin, tuner.max_seconds) == (8, 1024, 0.93, 30.0)
    for bad in ([], [0, 1]):
        with pytest.raises(ValueError) as error:
            ThreadTuner(bad)
        assert str(error.value) == f"thread counts must be >= 1, got {bad}"


def test_a_probe_costing_exactly_the_margin_loses_and_the_interval_doubles_to_its_cap():
    tuner = ThreadTuner([1, 2], min_interval=4, max_interval=16, margin=0.75, max_seconds=float("inf"))
    used = _run(tuner, lambda threads, step: 0.125 if threads == 1 else 0.09375, 50)
    assert used == [1] * 4 + [2] + [1] * 8 + [2] + [1] * 16 + [2] + [1] * 16 + [2] + [1] * 2
    assert tuner.current == 1 and tuner.switches == 0 and tuner.interval == 16


def test_two_cheaper_probe_steps_switch_and_probing_restarts_from_the_minimum():
    tuner = ThreadTuner([1, 2], min_interval=4, max_interval=64, margin=0.75, max_seconds=float("inf"))
    used = _run(tuner, lambda threads, step: 0.125 if threads == 1 else 0.0625, 24)
    assert used == [1] * 4 + [2, 2] + [2] * 4 + [1] + [2] * 8 + [1] + [2] * 4
    assert tuner.current == 2 and tuner.switches == 1 and tuner.probe is None and tuner.probe_wins == 0
    assert len(tuner.recent) == 8 and tuner.interval == 16


def test_no_probe_before_three_steps_are_known():
    tuner = ThreadTuner([1, 2], min_interval=1, max_interval=1, margin=0.75, max_seconds=float("inf"))
    used = _run(tuner, lambda threads, step: 0.125 if threads == 1 else 0.5, 8)
    assert used == [1, 1, 1, 2, 1, 2, 1, 2]


def test_the_time_cap_makes_a_probe_due_early():
    tuner = ThreadTuner([1, 2], min_interval=100, max_interval=100, margin=0.75, max_seconds=0.375)
    used = _run(tuner, lambda threads, step: 0.125 if threads == 1 else 0.5, 9)
    assert used == [1, 1, 1, 2, 1, 1, 1, 2, 1]
    assert tuner.seconds_since_probe == 0.125 and tuner.steps_until_probe == 99


def test_alternatives_take_turns_and_other_counts_are_ignored():
    tuner = ThreadTuner([1, 2, 3], min_interval=3, max_interval=3, margin=0.75, max_seconds=float("inf"))
    used = _run(tuner, lambda threads, step: 0.125 if threads == 1 else 0.5, 12)
    assert used == [1, 1, 1, 2, 1, 1, 1, 3, 1, 1, 1, 2]
    before = (list(tuner.recent), tuner.steps_until_probe, tuner.seconds_since_probe)
    tuner.record(3, 9.0, 32)  # neither the current count nor a probe: not counted
    assert (list(tuner.recent), tuner.steps_until_probe, tuner.seconds_since_probe) == before


def test_a_probe_win_then_a_loss_starts_over():
    tuner = ThreadTuner([1, 2], min_interval=3, max_interval=3, margin=0.75, max_seconds=float("inf"))
    times = iter([0.125] * 3 + [0.0625, 0.5] + [0.125] * 3 + [0.0625, 0.0625])
    used = _run(tuner, lambda threads, step: next(times), 10 - 1)
    assert used == [1, 1, 1, 2, 2, 1, 1, 1, 2]
    assert tuner.probe_wins == 1 and tuner.current == 1


def test_the_time_cap_counts_from_zero():
    tuner = ThreadTuner([1, 2], min_interval=100, max_interval=100, margin=0.75, max_seconds=1.0)
    used = _run(tuner, lambda threads, step: 0.125 if threads == 1 else 0.5, 10)
    assert used == [1] * 8 + [2, 1]


def test_three_alternatives_are_probed_in_order():
    tuner = ThreadTuner([1, 2, 3, 4], min_interval=3, max_interval=3, margin=0.75, max_seconds=float("inf"))
    used = _run(tuner, lambda threads, step: 0.125 if threads == 1 else 0.5, 16)
    assert [n for n in used if n != 1] == [2, 3, 4, 2]


def test_a_current_count_step_during_a_probe_counts_for_the_current_count():
    tuner = ThreadTuner([1, 2], min_interval=3, max_interval=3, margin=0.75, max_seconds=float("inf"))
    _run(tuner, lambda threads, step: 0.125, 3)
    assert tuner.threads_for_next_step() == 2 and tuner.probe == 2
    tuner.record(1, 0.0625, 32)  # a step that began on the current count before the probe was chosen
    assert tuner.probe == 2 and tuner.probe_wins == 0 and len(tuner.recent) == 4


def test_every_switch_is_counted():
    tuner = ThreadTuner([1, 2], min_interval=3, max_interval=3, margin=0.75, max_seconds=float("inf"))
    # two threads are faster for the first 20 steps, one thread after
    _run(tuner, lambda threads, step: (0.0625 if threads == 2 else 0.125) if step < 20
         else (0.0625 if threads == 1 else 0.125), 60)
    assert tuner.switches == 2 and tuner.current == 1
