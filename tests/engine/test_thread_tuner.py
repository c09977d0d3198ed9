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
