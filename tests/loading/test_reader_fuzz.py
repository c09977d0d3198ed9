"""Seeded header mutations of small valid GGUF and safetensors files: every case either loads cleanly (and runs
a forward) or is refused with a CheckpointError naming the file, and no case runs past HANG_SECONDS.

GGUF_CASES + SAFETENSORS_CASES = 600 cases per run, the same ones every run (fixed seeds). The per-case bound
is a hang detector (a SIGALRM), not a speed assertion: a clean case takes milliseconds.
"""

from __future__ import annotations

import json
import random
import signal
import struct
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from tokenmill import AutoModelForCausalLM
from tokenmill.errors import CheckpointError, UnsupportedArchitectureError
from tokenmill.loading.gguf import GGUFCheckpoint
from tokenmill.loading.gguf_header import parse_header
from tokenmill.models.registry import gguf_architectures

from tiny_gguf import write_tiny_llama

GGUF_CASES, SAFETENSORS_CASES, BATCHES = 360, 240, 10
HANG_SECONDS = 5
EXTREMES_64 = (0, 1, 2 ** 31, 2 ** 32 - 1, 2 ** 32, 2 ** 40, 2 ** 63, 2 ** 64 - 1)
EXTREMES_32 = (0, 1, 3, 7, 9, 12, 13, 2 ** 16, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1)


class Hang(Exception):
    pass


@contextmanager
def hang_detector(case: str):
    def expired(*_):
        raise Hang(f"{case} ran past {HANG_SECONDS} s")

    if threading.current_thread() is not threading.main_thread():  # signals reach only the main thread
        yield
        return

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, HANG_SECONDS)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def mutate(data: bytes, header_end: int, rng: random.Random) -> bytes:
    """One random mutation of the header bytes [0, header_end): a byte flip, a 4- or 8-byte field set to an
    extreme, a truncation, or bytes inserted or deleted (which shifts every field after them)."""
    kind = rng.choice(("flip", "u32", "u64", "truncate", "insert", "delete"))
    at = rng.randrange(4, header_end)
    if kind == "flip":
        return data[:at] + bytes([data[at] ^ (1 << rng.randrange(8))]) + data[at + 1:]
    if kind == "u32":
        return data[:at] + struct.pack("<I", rng.choice(EXTREMES_32)) + data[at + 4:]
    if kind == "u64":
        return data[:at] + struct.pack("<Q", rng.choice(EXTREMES_64)) + data[at + 8:]
    if kind == "truncate":
        return data[:rng.randrange(0, len(data))]
    if kind == "insert":
        return data[:at] + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9))) + data[at:]
    return data[:at] + data[at + rng.randrange(1, 9):]


def assert_clean(path: Path, load, case: str) -> str:
    """Run `load`; a clean refusal names the file. Returns the outcome's kind."""
    with hang_detector(case):
        try:
            load()
        except (CheckpointError, UnsupportedArchitectureError) as error:  # both name the file
            assert str(path) in str(error), f"{case}: the error does not name the file: {error}"
            return "refused"
    return "loaded"


@pytest.fixture(scope="module")
def valid_gguf(tmp_path_factory) -> tuple[bytes, int]:
    path = write_tiny_llama(tmp_path_factory.mktemp("fuzz") / "valid.gguf")
    data = path.read_bytes()
    _, tensors = parse_header(path, memoryview(data))
    return data, min(info.offset for info in tensors)  # the header ends where the tensor data begins


def load_everything_gguf(path: Path):
    checkpoint = GGUFCheckpoint(path, gguf_architectures())
    checkpoint.tokenizer_config()
    checkpoint.generation_config_dict()
    checkpoint.tokenizer().encode("t5 t6")
    model = AutoModelForCausalLM.from_pretrained(path, progress=False)
    with torch.no_grad():
        model(torch.tensor([[1, 5, 6]]))


@pytest.mark.parametrize("batch", range(BATCHES))
def test_gguf_header_mutations(tmp_path, valid_gguf, batch):
    data, header_end = valid_gguf
    rng = random.Random(f"gguf-{batch}")
    outcomes = []
    for index in range(GGUF_CASES // BATCHES):
        path = tmp_path / f"case{index}.gguf"
        path.write_bytes(mutate(data, header_end, rng))
        outcomes.append(assert_clean(path, lambda: load_everything_gguf(path), f"gguf batch {batch} case {index}"))
        path.unlink()
    assert len(outcomes) == GGUF_CASES // BATCHES and "refused" in outcomes


# ---- safetensors ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def valid_safetensors(tiny_llama) -> tuple[Path, bytes]:
    folder = tiny_llama[1]
    return folder, (folder / "model.safetensors").read_bytes()


def mutate_safetensors(data: bytes, rng: random.Random) -> bytes:
    """Raw mutations of the length prefix and JSON header, or a semantic one: an entry's dtype, shape or
    offsets replaced by an odd or extreme value."""
    (length,) = struct.unpack_from("<Q", data)
    if rng.random() < 0.5:
        return mutate(data, 8 + length, rng) if rng.random() < 0.8 else \
            struct.pack("<Q", rng.choice(EXTREMES_64)) + data[8:]
    header = json.loads(data[8:8 + length])
    name = rng.choice(sorted(key for key in header if key != "__metadata__"))
    field = rng.choice(("dtype", "shape", "data_offsets"))
    header[name][field] = {
        "dtype": lambda: rng.choice(("F64", "I8", "BOOL", "F8_E4M3", "XX", 7)),
        "shape": lambda: rng.choice(([], [0], [2 ** 32, 2 ** 32], [-1, 4], [2 ** 62], "4", [1.5])),
        "data_offsets": lambda: rng.choice(([0, 2 ** 63], [10, 2], [-8, 8], [0, 0], [2 ** 40, 2 ** 40 + 4])),
    }[field]()
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    return struct.pack("<Q", len(encoded)) + encoded + data[8 + length:]


@pytest.mark.parametrize("batch", range(BATCHES))
def test_safetensors_header_mutations(tmp_path, valid_safetensors, batch):
    source, data = valid_safetensors
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_bytes((source / "config.json").read_bytes())
    rng = random.Random(f"safetensors-{batch}")
    outcomes = []
    for index in range(SAFETENSORS_CASES // BATCHES):
        weights = folder / "model.safetensors"
        weights.write_bytes(mutate_safetensors(data, rng))

        def load():
            model = AutoModelForCausalLM.from_pretrained(folder, progress=False)
            with torch.no_grad():
                model(torch.tensor([[1, 5, 6]]))

        outcomes.append(assert_clean(folder, load, f"safetensors batch {batch} case {index}"))
    assert len(outcomes) == SAFETENSORS_CASES // BATCHES and "refused" in outcomes
