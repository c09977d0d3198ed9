"""`tokenmill serve` flags read before any model loads."""

import argparse

import pytest

from tokenmill.commands import serve


def _parse(*argv):
    parser = argparse.ArgumentParser()
    serve.add_args(parser)
    return parser.parse_args(list(argv))


def test_speculative_ngram_default_and_bounds(capsys):
    assert _parse().speculative_ngram == 0
    assert _parse("--speculative-ngram", "4").speculative_ngram == 4
    for bad in ("-1", "17", "four"):
        with pytest.raises(SystemExit):
            _parse("--speculative-ngram", bad)
        assert "--speculative-ngram" in capsys.readouterr().err
