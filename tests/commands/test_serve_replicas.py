"""`tokenmill serve --data-parallel-size N`: sizes and thread counts that cannot run are refused by name before
anything loads."""

import pytest

from tokenmill.cli import main
from tokenmill.commands.serve_replicas import replica_threads, usable_cores


def test_threads_default_to_the_cores_shared_out():
    assert replica_threads(2, "auto", 8) == 4
    assert replica_threads(3, "auto", 8) == 2
    assert replica_threads(2, "3", 8) == 3


@pytest.mark.parametrize("size, threads, message", [
    (0, "auto", "--data-parallel-size must be at least 1, got 0"),
    (-2, "auto", "--data-parallel-size must be at least 1, got -2"),
    (9, "auto", "--data-parallel-size 9 is more than the 8 CPU core"),
    (2, "many", "--threads must be a number or auto"),
    (2, "0", "--threads must be >= 1"),
])
def test_bad_sizes_are_refused(size, threads, message):
    with pytest.raises(SystemExit, match=message):
        replica_threads(size, threads, 8)


def test_the_command_refuses_before_loading(monkeypatch):
    from tokenmill.commands import serve_replicas

    with pytest.raises(SystemExit, match="--data-parallel-size must be at least 1"):
        main(["serve", "--data-parallel-size", "0"])
    with pytest.raises(SystemExit, match=f"more than the {usable_cores()} CPU core"):
        main(["serve", "--data-parallel-size", str(usable_cores() + 1)])
    monkeypatch.setattr(serve_replicas, "usable_cores", lambda: 4)
    with pytest.raises(SystemExit, match="--allow-runtime-lora is not available with --data-parallel-size"):
        main(["serve", "--data-parallel-size", "2", "--allow-runtime-lora"])
