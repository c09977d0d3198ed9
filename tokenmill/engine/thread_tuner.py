"""The engine thread's torch intra-op thread count, chosen from measured step times.

A parallel torch op ends when its slowest thread does. On a CPU shared with other processes the second
thread often waits for a core, and a step then runs several times slower than on one thread; on an idle
machine two threads are faster. No setting is right for both, so the engine measures: it runs on one count
and now and then probes another for a single step (confirmed by a second one), switching when the probe is
clearly cheaper. While probes keep losing they thin out, so a slow choice costs little.
"""

from __future__ import annotations

import statistics
from collections import deque

# a step costs roughly (fixed weight reads) + (per token): seconds / (tokens + this) compares unlike steps
TOKENS_PER_FIXED_COST = 32


def step_cost(seconds: float, tokens: int) -> float:
    return seconds / (tokens + TOKENS_PER_FIXED_COST)


class ThreadTuner:
    """`margin`: a probe must cost below this fraction of the current median (twice in a row) to take over;
    `min_interval`..`max_interval`: steps between probes, doubling while probes lose, but at most
    `max_seconds` of stepping apart (the load on a shared machine changes: a count that won may turn slow)."""

    def __init__(self, choices: list[int], min_interval: int = 8, max_interval: int = 1024, margin: float = 0.93,
                 max_seconds: float = 30.0):
        self.choices = sorted(set(choices))
        if not self.choices or self.choices[0] < 1:
            raise ValueError(f"thread counts must be >= 1, got {choices}")
        self.current = self.choices[0]  # the safe start: one thread never waits for a busy core
        self.min_interval, self.max_interval, self.margin = min_interval, max_interval, margin
        self.max_seconds = max_seconds
        self.seconds_since_probe = 0.0
        self.interval = min_interval
        self.steps_until_probe = min_interval
        self.recent: deque[float] = deque(maxlen=8)  # costs of the latest steps on `current`
        self.probe: int | None = None  # the count being tried
        self.probe_wins = 0  # steps the probe has been cheaper in a row
        self.next_alternative = 0
        self.switches = 0

    def threads_for_next_step(self) -> int:
        due = self.steps_until_probe <= 0 or self.seconds_since_probe >= self.max_seconds
        if self.probe is None and due and len(self.recent) >= 3:
            others = [n for n in self.choices if n != self.current]
            if others:
                self.probe = others[self.next_alternative % len(others)]
                self.next_alternative += 1
        return self.probe if self.probe is not None else self.current

    def record(self, threads: int, seconds: float, tokens: int) -> None:
        """Report a finished step: it ran on `threads` and computed `tokens` tokens in `seconds`."""
        cost = step_cost(seconds, tokens)
        if self.probe is None or threads != self.probe:
            if threads == self.current:
                self.recent.append(cost)
                self.steps_until_probe -= 1
                self.seconds_since_probe += seconds
            return
        if cost >= self.margin * statistics.median(self.recent):
            self._end_probe(won=False)
            return
        self.probe_wins += 1
        if self.probe_wins >= 2:  # confirmed by a second step: one fast step may be luck
            self._end_probe(won=True)

    def _end_probe(self, won: bool) -> None:
        if won:
            self.current = self.probe
            self.recent.clear()
            self.interval = self.min_interval
            self.switches += 1
        else:
            self.interval = min(self.interval * 2, self.max_interval)
        self.probe, self.probe_wins = None, 0
        self.steps_until_probe = self.interval
        self.seconds_since_probe = 0.0
