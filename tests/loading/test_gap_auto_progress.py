"""Gap in tokenmill/auto.py (not this test's owner's file): `AutoModelForCausalLM.from_pretrained(folder,
progress=False)` does not reach `read_folder_weights`, so a slow safetensors load still shows its bar.

Fix: pass `progress=progress` to `read_folder_weights` in `AutoModelForCausalLM.from_pretrained`; then remove the
xfail marker (strict: once fixed, this test reports XPASS as a failure so the marker is not forgotten).
"""

from __future__ import annotations

import pytest

from tokenmill import AutoModelForCausalLM
from tokenmill.loading import safetensors


@pytest.mark.xfail(strict=True, reason="auto.py does not pass progress= to read_folder_weights")
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
