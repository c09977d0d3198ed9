"""`tokenmill export`: a folder without a tokenizer is written with one warning, the file loads back; a type it
cannot write and a missing source are clear errors (SmolLM2 with its tokenizer: tests/assembly/test_export_gguf.py)."""

from __future__ import annotations

import pytest
import torch

from tokenmill import AutoModelForCausalLM
from tokenmill.cli import main as cli_main
from tokenmill.kernels.gguf_types import BY_NAME


def test_export_without_a_tokenizer_warns_once_and_loads_back(tiny_llama, tmp_path, capsys):
    _, folder = tiny_llama
    out = tmp_path / "tiny-q8_0.gguf"
    with pytest.warns(RuntimeWarning, match="no tokenizer written") as caught:
        assert cli_main(["export", str(out), "--model", str(folder), "--type", "q8_0", "--no-progress"]) == 0
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1
    assert f"wrote {out} (q8_0" in capsys.readouterr().out
    model = AutoModelForCausalLM.from_pretrained(out, progress=False)
    assert model.is_quantized() and model(torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, 64)


def test_unknown_type_and_missing_source_are_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["export", str(tmp_path), str(tmp_path / "x.gguf"), "--type", "iq4_xs"])
    assert exit_info.value.code == 2 and "invalid choice: 'iq4_xs'" in capsys.readouterr().err
    assert cli_main(["export", str(tmp_path / "absent"), str(tmp_path / "x.gguf"), "--no-progress"]) == 1
    assert "tokenmill: error:" in capsys.readouterr().err and not (tmp_path / "x.gguf").exists()


def test_convert_to_a_gguf_name_exports(tiny_llama, tmp_path, capsys):
    _, folder = tiny_llama
    out = tmp_path / "tiny-q4_0.gguf"
    with pytest.warns(RuntimeWarning, match="no tokenizer written"):
        assert cli_main(["convert", "-m", str(folder), str(out), "--type", "q4_0", "--no-progress"]) == 0
    projection = AutoModelForCausalLM.from_pretrained(out, progress=False).model.layers[0].self_attn.q_proj
    assert projection.ggml_type == BY_NAME["Q4_0"].type_id
    assert cli_main(["convert", str(folder), str(tmp_path / "y.gguf"), "--type", "nf4", "--no-progress"]) == 1
    assert "unknown GGUF export type 'nf4'" in capsys.readouterr().err
