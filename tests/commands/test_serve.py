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


@pytest.mark.parametrize("flags, tool_format, reasoning", [
    ((), "hermes", None),  # auto: SmolLM2's template speaks <tool_call> and no <think>
    (("--tool-call-parser", "llama3_json", "--reasoning-parser", "deepseek_r1"), "llama3_json", "deepseek_r1"),
    (("--tool-call-parser", "mistral", "--reasoning-parser", "qwen3"), "mistral", "qwen3"),
    (("--tool-call-parser", "hermes", "--reasoning-parser", "none"), "hermes", None),
])
def test_parser_flags_reach_the_chat_plan(smollm2_gguf, flags, tool_format, reasoning):
    """The flags as `tokenmill serve` reads them decide how a chat request's output is parsed."""
    from types import SimpleNamespace

    from tokenmill import AutoTokenizer
    from tokenmill.server.chat_plan import plan_chat

    state = SimpleNamespace(tokenizer=AutoTokenizer.from_pretrained(smollm2_gguf),
                            settings=serve.server_settings(_parse(*flags)))
    tool = {"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}}
    plan = plan_chat(state, [{"role": "user", "content": "hi"}], [tool])
    assert (plan.tool_format.name, plan.reasoning_parser) == (tool_format, reasoning)


@pytest.mark.parametrize("flag, name, a_choice", [("--tool-call-parser", "gpt", "llama3_json"),
                                                   ("--reasoning-parser", "o1", "deepseek_r1")])
def test_an_unknown_parser_name_is_refused_by_the_cli(capsys, flag, name, a_choice):
    from tokenmill.cli import main

    with pytest.raises(SystemExit) as refused:
        main(["serve", flag, name])
    assert refused.value.code == 2
    error = capsys.readouterr().err
    assert flag in error and f"invalid choice: '{name}'" in error and a_choice in error


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


def test_max_connections_reaches_the_settings_and_refuses_nonsense(capsys):
    assert serve.server_settings(_parse()).max_connections == 1000
    assert serve.server_settings(_parse("--max-connections", "5")).max_connections == 5
    for bad in ("0", "-1", "many", "2.5"):
        with pytest.raises(SystemExit):
            _parse("--max-connections", bad)
        assert "--max-connections" in capsys.readouterr().err
