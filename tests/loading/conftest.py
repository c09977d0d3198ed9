"""GGUF checkpoints of the real models, opened once per session for the loading tests."""

import pytest

from tokenmill.loading.gguf import GGUFCheckpoint
from tokenmill.models.registry import gguf_architectures


@pytest.fixture(scope="session")
def smollm2(smollm2_gguf):
    return GGUFCheckpoint(smollm2_gguf, gguf_architectures())


@pytest.fixture(scope="session")
def gemma3(gemma3_gguf):
    return GGUFCheckpoint(gemma3_gguf, gguf_architectures())
