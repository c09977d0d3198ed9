"""The engine under tensor parallelism (2 ranks x 1 thread, gloo): rank 0 schedules, the follower runs each step.

One LLM serves 8 requests at once (one batch per step) and must give each the greedy tokens one process gives it
alone; then its follower is killed and the next step must fail with the rank named, the engine unhealthy,
within the group's timeout rather than hang.
"""

from __future__ import annotations

import time

import pytest

from tokenmill.engine.async_engine import AsyncEngine
from tokenmill.engine.llm import LLM
from tokenmill.engine.parallel_runner import TensorParallelRunner
from tokenmill.engine.sampling_params import SamplingParams
from tokenmill.execution.parallel import RankFailedError

PROMPTS = [f"Question {i}: what is {i} plus {i}?" for i in range(8)]
GREEDY = SamplingParams(max_tokens=8, temperature=0)


@pytest.fixture(scope="module")
def alone_answers(smollm2_gguf):
    single = LLM(str(smollm2_gguf))
    return [single.generate(prompt, GREEDY)[0].outputs[0].token_ids for prompt in PROMPTS]


def test_tp_engine_serves_concurrent_requests_then_reports_a_dead_rank(smollm2_gguf, alone_answers):
    llm = LLM(str(smollm2_gguf), tensor_parallel_size=2, threads_per_rank=1)
    try:
        assert isinstance(llm.engine.runner, TensorParallelRunner)
        together = [output.outputs[0].token_ids for output in llm.generate(PROMPTS, GREEDY)]
        assert together == alone_answers
        served = AsyncEngine(llm.engine)
        try:
            assert served.health().ok
            follower = llm.model.execution_policy.collectives.workers[0]
            follower.kill()
            follower.join()
            started = time.monotonic()
            with pytest.raises(RankFailedError, match="rank 1 exited with code -9"):
                llm.generate(PROMPTS[0], GREEDY)
            assert time.monotonic() - started < 70  # at most the group's timeout, never a hang
            health = served.health()
            assert not health.ok and "rank 1 exited" in health.reason
        finally:
            served.shutdown()
    finally:
        llm.shutdown()


def test_tp_size_needs_a_source_not_a_loaded_model(smollm2_gguf):
    with pytest.raises(ValueError, match="tensor_parallel_size must be at least 1"):
        LLM(str(smollm2_gguf), tensor_parallel_size=0)
