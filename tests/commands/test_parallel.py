"""`tokenmill generate --tensor-parallel-size 2`: the command starts its ranks and prints one process's answer."""

from __future__ import annotations

import json

import pytest

from tokenmill import cli

PROMPT = "The capital of France is"


def test_generate_on_two_ranks_prints_the_single_process_answer(capsys):
    assert cli.main(["generate", PROMPT, "--max-new-tokens", "8"]) == 0
    single = capsys.readouterr().out
    assert cli.main(["generate", PROMPT, "--max-new-tokens", "8", "--tensor-parallel-size", "2",
                     "--threads-per-rank", "1"]) == 0
    assert capsys.readouterr().out == single  # greedy: the same tokens, printed once (rank 0)


def test_bad_rank_arguments_are_one_line_errors(capsys):
    assert cli.main(["generate", PROMPT, "--tensor-parallel-size", "0"]) == 1
    assert "--tensor-parallel-size must be at least 1, got 0" in capsys.readouterr().err


def test_bench_on_two_ranks_reports_once(tmp_path, capsys):
    arguments = ["bench", "--prompt-lengths", "8", "--new-tokens", "4", "--repeats", "1", "--warmup", "0",
                 "--no-plots", "--no-progress", "--tensor-parallel-size", "2", "--threads-per-rank", "1"]
    assert cli.main([*arguments, "-o", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    (model,) = report["models"].values()
    assert model["execution_policy"]["parallel"] == "tensor" and model["execution_policy"]["tp_size"] == 2
    assert model["execution_policy"]["threads"] == 1
    (point,) = report["points"]
    assert point["results"]["tokenmill"]["decode_tokens_per_s"]["median"] > 0
    assert capsys.readouterr().out.count("wrote ") == 1


def test_bench_refuses_what_tensor_parallelism_cannot_run_before_starting_ranks(monkeypatch):
    monkeypatch.setattr("tokenmill.commands.parallel.spawn_ranks", None)  # calling it would fail the test
    for flag, name in ((["--vs", "transformers"], "--vs"), (["--limit-search"], "--limit-search"),
                       (["--isolate-memory"], "--isolate-memory")):
        with pytest.raises(SystemExit, match=f"{name} does not combine with --tensor-parallel-size"):
            cli.main(["bench", "--tensor-parallel-size", "2", *flag])
