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


def test_draft_model_flags_make_the_default_or_are_refused():
    args = _parse("--draft-model", "draft-folder", "--speculative-draft", "3")
    config = serve.engine_config_of(args)
    assert config.draft_model == "draft-folder"
    assert (config.speculative.method, config.speculative.num_speculative_tokens) == ("draft_model", 3)
    assert serve.engine_config_of(_parse("--draft-model", "d")).speculative is None  # per request only
    with pytest.raises(SystemExit, match="needs --draft-model"):
        serve.engine_config_of(_parse("--speculative-draft", "3"))
    with pytest.raises(SystemExit, match="alternatives"):
        serve.engine_config_of(_parse("--draft-model", "d", "--speculative-draft", "2", "--speculative-ngram", "2"))
