"""ReplicaEngine on its own: requests checked without a round trip, a replica that dies with no restart left
fails its requests at once and makes health() bad, and a replica that cannot start is named."""

import asyncio
import os
import signal
import time

import pytest

from tokenmill.engine.async_engine import EngineDeadError
from tokenmill.engine.engine import EngineConfig, default_kv_memory
from tokenmill.engine.limits import RequestLimitError
from tokenmill.engine.replica_worker import ReplicaSpec, error_message, rebuild_error
from tokenmill.engine.replicas import ReplicaEngine, ReplicaStartError, shared_pool
from tokenmill.engine.sampling_params import SamplingParams


@pytest.fixture(scope="module")
def lone_replica(smollm2_gguf):
    from tokenmill.auto import AutoTokenizer

    spec = ReplicaSpec(str(smollm2_gguf), engine_config=EngineConfig(num_blocks=64, block_size=16), threads=1)
    engine = ReplicaEngine(spec, 1, AutoTokenizer.from_pretrained(smollm2_gguf), max_restarts=0)
    yield engine
    engine.shutdown()


def test_validate_without_a_round_trip(lone_replica):
    params = lone_replica.validate([1, 2, 3], SamplingParams(max_tokens=None))
    assert params.max_tokens == lone_replica.limits.max_total_tokens - 3
    with pytest.raises(ValueError, match="out of range"):
        lone_replica.validate([10**7], SamplingParams())
    with pytest.raises(RequestLimitError, match="max_tokens"):
        lone_replica.validate([1], SamplingParams(max_tokens=10**6))
    with pytest.raises(ValueError, match="no LoRA adapter named 'x'"):
        lone_replica.validate([1], SamplingParams(adapter="x"))


def test_a_send_that_raises_closes_the_stream(lone_replica, monkeypatch):
    def refuse(message):
        raise TypeError("cannot pickle")

    monkeypatch.setattr(lone_replica.replicas[0], "send", refuse)

    async def run():
        with pytest.raises(TypeError, match="cannot pickle"):
            await lone_replica.generate([1, 2, 3], SamplingParams(max_tokens=2)).__anext__()

    asyncio.run(asyncio.wait_for(run(), 30))
    assert lone_replica._streams == {} and lone_replica.router.loads == [0]


def test_errors_cross_the_process_boundary_by_kind():
    limit = rebuild_error(*error_message("r", RequestLimitError("too long", "prompt"))[2:])
    assert isinstance(limit, RequestLimitError) and limit.param == "prompt" and str(limit) == "too long"
    assert type(rebuild_error(*error_message("r", KeyError("x"))[2:])).__name__ == "EngineStepError"


def test_death_without_restart_fails_requests_and_health(lone_replica):
    async def run():
        outputs = lone_replica.generate([1, 2, 3, 4], SamplingParams(max_tokens=500, temperature=0, ignore_eos=True))
        await outputs.__anext__()
        os.kill(lone_replica.replicas[0].process.pid, signal.SIGKILL)
        with pytest.raises(EngineDeadError, match="replica 0 stopped"):
            async for _ in outputs:
                pass
        deadline = time.monotonic() + 10
        while lone_replica.replicas[0].state != "failed":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        with pytest.raises(EngineDeadError, match="no engine replica is running"):
            await lone_replica.generate([1, 2], SamplingParams(max_tokens=2)).__anext__()

    asyncio.run(asyncio.wait_for(run(), 60))
    health = lone_replica.health()
    assert not health.ok and "replica 0 died and could not be restarted" in health.reason
    assert lone_replica.router.loads == [0]


def test_the_kv_pool_is_shared_out():
    assert shared_pool(EngineConfig(num_blocks=640), 2).num_blocks == 320
    assert shared_pool(EngineConfig(kv_cache_memory=3 << 30), 3).kv_cache_memory == 1 << 30
    assert shared_pool(None, 2).kv_cache_memory == default_kv_memory() // 2


def test_a_replica_that_cannot_load_is_named(tmp_path):
    spec = ReplicaSpec(str(tmp_path / "missing.gguf"), threads=1)
    with pytest.raises(ReplicaStartError, match="engine replica 0 could not start: .*missing.gguf"):
        ReplicaEngine(spec, 1, tokenizer=None)
