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


@pytest.mark.parametrize("flag, setting", [("--header-timeout", "header_timeout_seconds"),
                                           ("--write-timeout", "write_timeout_seconds"),
                                           ("--request-body-seconds", "request_body_seconds"),
                                           ("--engine-stall-seconds", "engine_stall_seconds")])
def test_time_limits_reach_the_settings_and_refuse_no_time(capsys, flag, setting):
    assert getattr(serve.server_settings(_parse(flag, "0.5")), setting) == 0.5
    for bad in ("0", "-1", "inf", "nan", "soon"):
        with pytest.raises(SystemExit):
            _parse(flag, bad)
        assert flag in capsys.readouterr().err


def test_the_connection_deadlines_default_to_ten_and_sixty_seconds():
    settings = serve.server_settings(_parse())
    assert (settings.header_timeout_seconds, settings.write_timeout_seconds) == (10.0, 60.0)
