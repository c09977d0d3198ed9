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


# ---- --precision: every command that loads a model takes it, refuses unknown values, and hands it to the load

PRECISION_COMMANDS = {"generate": ["hello"], "chat": [], "serve": [], "info": []}


@pytest.mark.parametrize("command", sorted(PRECISION_COMMANDS))
def test_precision_is_exact_by_default_and_fast_on_request(command):
    rest = PRECISION_COMMANDS[command]
    assert _parsed([command, *rest]).precision == "exact"
    assert _parsed([command, *rest, "--precision", "fast"]).precision == "fast"


@pytest.mark.parametrize("command", sorted(PRECISION_COMMANDS) + ["bench"])
def test_an_unknown_precision_is_refused_by_name(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _parsed([command, *PRECISION_COMMANDS.get(command, []), "--precision", "int4"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "--precision" in error and "'int4'" in error and "exact" in error and "fast" in error


def test_bench_compares_a_list_of_precisions():
    assert _parsed(["bench"]).precision == ["exact"]
    assert _parsed(["bench", "--precision", "exact,fast"]).precision == ["exact", "fast"]
    assert _parsed(["bench", "--precision", "fast, fast"]).precision == ["fast"]


class _Loaded(Exception):
    """Raised by the stand-in loader: the keyword arguments the command passed."""


def _capture_load(monkeypatch):
    from tokenmill import auto

    def from_pretrained(source, **kwargs):
        raise _Loaded(kwargs)

    monkeypatch.setattr(auto.AutoModelForCausalLM, "from_pretrained", staticmethod(from_pretrained))


@pytest.mark.parametrize("argv", [["generate", "hello"], ["chat"], ["serve"], ["info", "--execution"]])
def test_the_precision_reaches_the_load(monkeypatch, argv):
    _capture_load(monkeypatch)
    with pytest.raises(_Loaded) as loaded:
        main([*argv, "--precision", "fast"])
    assert loaded.value.args[0]["precision"] == "fast"


def test_replicas_load_with_the_precision(monkeypatch):
    from tokenmill.commands import serve_replicas
    from tokenmill.server import replica_app

    def build_replica_app(spec, *args, **kwargs):
        raise _Loaded(spec.load_kwargs)

    monkeypatch.setattr(serve_replicas, "usable_cores", lambda: 4)
    monkeypatch.setattr(replica_app, "build_replica_app", build_replica_app)
    with pytest.raises(_Loaded) as loaded:
        main(["serve", "--data-parallel-size", "2", "--precision", "fast"])
    assert loaded.value.args[0]["precision"] == "fast"


def test_bench_loads_each_precision(monkeypatch, tmp_path):
    _capture_load(monkeypatch)
    with pytest.raises(_Loaded) as loaded:
        main(["bench", "--precision", "fast", "--prompt-lengths", "4", "--new-tokens", "1", "--repeats", "1",
              "--no-progress", "--no-plots", "-o", str(tmp_path)])
    assert loaded.value.args[0]["precision"] == "fast"
