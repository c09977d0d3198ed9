"""Server settings refuse, at start-up, what no request could be served under."""

import pytest

from tokenmill.server.settings import ServerSettings


@pytest.mark.parametrize("name", ["header_timeout_seconds", "write_timeout_seconds", "request_body_seconds",
                                  "engine_stall_seconds"])
@pytest.mark.parametrize("seconds", [0, -1.0, float("inf"), float("nan")])
def test_a_time_limit_must_be_finite_and_positive(name, seconds):
    with pytest.raises(ValueError, match=name):
        ServerSettings(**{name: seconds})


def test_positive_time_limits_are_kept():
    settings = ServerSettings(header_timeout_seconds=0.5, request_body_seconds=2, engine_stall_seconds=30)
    assert (settings.header_timeout_seconds, settings.request_body_seconds, settings.engine_stall_seconds) == \
        (0.5, 2, 30)
