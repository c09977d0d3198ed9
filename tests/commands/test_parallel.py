"""`tokenmill generate --tensor-parallel-size 2`: the command starts its ranks and prints one process's answer."""

from __future__ import annotations

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
