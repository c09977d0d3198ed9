"""`tokenmill verify`: the comparison with transformers, its verdict on greedy divergences, its loading choices,
and a clear message without transformers."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tokenmill.cli import main
from tokenmill.commands import verify


def test_tiny_model_agrees_with_transformers(tiny_chat_folder, capsys):
    code = main(["verify", str(tiny_chat_folder), "--new-tokens", "4", "--prompt", "Hello there", "--prompt", "abc"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "greedy 8/8 tokens agree" in out and "speed: tokenmill" in out and "Hello there" in out


def test_compare_prompt_reports_the_largest_logit_difference(tiny_chat_folder):
    import transformers

    from tokenmill import AutoModelForCausalLM

    ours = AutoModelForCausalLM.from_pretrained(tiny_chat_folder, dtype=torch.float32)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tiny_chat_folder, dtype=torch.float32).eval()
    ids = [1, 2, 3, 4]
    result = verify.compare_prompt("p", ids, ours, theirs, 3)
    with torch.no_grad():
        continued = theirs.generate(torch.tensor([ids]), max_new_tokens=3, do_sample=False)[0].tolist()
        expected = (ours(input_ids=torch.tensor([continued])).logits
                    - theirs(input_ids=torch.tensor([continued])).logits).abs().max().item()
    assert result.max_delta == expected and (result.agreed, result.compared) == (3, 3)
    assert result.divergence_gap is None and result.explained


def test_a_real_disagreement_exits_1(tiny_chat_folder, capsys, monkeypatch):
    from tokenmill import AutoModelForCausalLM

    load = AutoModelForCausalLM.from_pretrained

    def skewed(*args, **kwargs):  # tokenmill's model made to prefer token 7 by a wide margin
        model = load(*args, **kwargs)
        with torch.no_grad():
            model.lm_head.weight[7] += 50 * model.lm_head.weight.abs().max()
        return model

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", skewed)
    code = main(["verify", str(tiny_chat_folder), "--new-tokens", "3", "--prompt", "Hello there"])
    out = capsys.readouterr().out
    assert code == 1 and "LOGITS DIFFER" in out


def test_a_near_tie_divergence_is_explained():
    result = verify.PromptResult("p", max_delta=1e-3, agreed=2, compared=4, divergence_gap=1.5e-3,
                                 tokenmill_seconds=1, transformers_seconds=2)
    assert result.explained and result.agrees
    assert not verify.PromptResult("p", 1e-3, 2, 4, 3e-3, 1, 2).explained
    assert not verify.PromptResult("p", 1e-3, 4, 4, None, 1, 2, tolerance=5e-4).agrees


def test_without_transformers_the_message_says_how_to_get_it(monkeypatch, capsys):
    real_import = importlib.import_module

    def no_transformers(name, *args):
        if name == "transformers":
            raise ImportError("No module named 'transformers'")
        return real_import(name, *args)

    monkeypatch.setattr(verify.importlib, "import_module", no_transformers)
    code = main(["verify"])
    err = capsys.readouterr().err
    assert code == 1 and "pip install transformers" in err and "Traceback" not in err


def test_a_gguf_transformers_cannot_read_goes_through_the_converted_folder(monkeypatch, tmp_path):
    calls = []

    def from_pretrained(source, **kwargs):
        calls.append((source, kwargs.get("gguf_file")))
        if kwargs.get("gguf_file"):
            raise ValueError("GGUF model with architecture qwen3moe is not supported yet.")
        return SimpleNamespace(eval=lambda: "converted model")

    converted = []
    monkeypatch.setattr("tokenmill.assembly.convert.convert_gguf",
                        lambda gguf, out, **kwargs: converted.append((Path(gguf), Path(out))))
    fake = SimpleNamespace(AutoModelForCausalLM=SimpleNamespace(from_pretrained=from_pretrained))
    model, how = verify.load_transformers_model(fake, tmp_path / "m.gguf", None, torch.float32, tmp_path / "hf")
    assert model == "converted model" and "tokenmill convert" in how and "not supported yet" in how
    assert converted == [(tmp_path / "m.gguf", tmp_path / "hf")]
    assert calls == [(str(tmp_path), "m.gguf"), (str(tmp_path / "hf"), None)]
