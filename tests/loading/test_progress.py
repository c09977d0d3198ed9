"""`from_pretrained(folder, progress=False)` reaches the safetensors reader: no bar when asked for none."""

from __future__ import annotations

from tokenmill import AutoModelForCausalLM
from tokenmill.loading import safetensors


def test_progress_false_reaches_the_safetensors_reader(tiny_llama, monkeypatch):
    _, folder = tiny_llama
    asked = []
    original = safetensors._loading_bar

    def recording(files, enabled):
        asked.append(enabled)
        return original(files, enabled)

    monkeypatch.setattr(safetensors, "_loading_bar", recording)
    AutoModelForCausalLM.from_pretrained(folder, progress=False)
    assert asked == [False]
