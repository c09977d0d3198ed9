"""The model argument is the same on every command (a positional MODEL or -m/--model), and every command's help
shows its defaults and an example."""

from __future__ import annotations

import pytest

from tokenmill.cli import COMMANDS, build_parser, main
from tokenmill.commands.common import resolve_model_arg

MODEL_COMMANDS = {"generate": ["hello"], "chat": [], "serve": [], "bench": [], "info": [], "verify": [],
                  "convert": ["out"], "export": ["out.gguf"]}
NO_DEFAULT_MODEL = {"convert": "tokenmill convert MODEL.gguf OUT_DIR", "export": "tokenmill export MODEL OUT.gguf"}


def _parsed(argv):
    args = build_parser().parse_args(argv)
    resolve_model_arg(args)
    return args


@pytest.mark.parametrize("command", sorted(MODEL_COMMANDS))
def test_model_as_positional_or_option(command):
    rest = MODEL_COMMANDS[command]
    assert _parsed([command, "m.gguf", *rest]).model == "m.gguf"
    assert _parsed([command, *rest, "-m", "m.gguf"]).model == "m.gguf"
    assert _parsed([command, *rest, "--model", "m.gguf"]).model == "m.gguf"
    assert _parsed([command, "-m", "m.gguf", *rest]).model == "m.gguf"
    assert _parsed([command, *rest]).model is None  # the embedded default, or refused where there is none


@pytest.mark.parametrize("command", sorted(NO_DEFAULT_MODEL))
def test_convert_and_export_keep_the_output_and_refuse_a_missing_model(command, capsys):
    args = _parsed([command, "-m", "m.gguf", "o.gguf", "--type", "q8_0"])
    assert (args.model, args.output_dir if command == "convert" else args.output) == ("m.gguf", "o.gguf")
    assert main([command, "o.gguf", "--no-progress"]) == 1  # one positional is the output, never the model
    assert f"name the model: {NO_DEFAULT_MODEL[command]} (or -m/--model MODEL)" in capsys.readouterr().err


def test_generate_takes_one_positional_as_the_prompt_and_two_as_model_and_prompt():
    args = _parsed(["generate", "Hello there"])
    assert (args.model, args.prompt) == (None, "Hello there")
    args = _parsed(["generate", "m.gguf", "Hello there", "--max-new-tokens", "3"])
    assert (args.model, args.prompt, args.max_new_tokens) == ("m.gguf", "Hello there", 3)


def test_bench_model_positional_keeps_options_on_both_sides_and_bench_serve():
    args = _parsed(["bench", "--threads", "4", "m.gguf", "--repeats", "2"])
    assert (args.model, args.threads, args.repeats, args.bench_mode) == ("m.gguf", [4], 2, None)
    args = _parsed(["bench", "serve", "--url", "http://127.0.0.1:9"])
    assert args.bench_mode == "serve" and args.model is None


def test_two_different_models_are_refused(capsys):
    assert main(["info", "a.gguf", "-m", "b.gguf"]) == 1
    assert "two models named" in capsys.readouterr().err


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_shows_defaults_and_an_example(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    assert "example" in text and f"tokenmill {command}" in text.split("example", 1)[1]
    if command in ("generate", "chat", "bench", "serve", "verify", "convert", "export"):
        assert "(default: " in text
