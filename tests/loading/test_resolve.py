"""Hub ids resolve offline through a folder laid out like the Hugging Face cache."""

from __future__ import annotations

import shutil

import pytest
import torch

from tokenmill import AutoModelForCausalLM
from tokenmill.errors import CheckpointError
from tokenmill.loading.resolve import resolve

from numerics import assert_matches_oracle

REPO_ID = "tokenmill-tests/tiny-llama"
REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory, tiny_llama):
    """models--org--name/{refs/main, snapshots/<sha>/...}: the layout huggingface_hub reads."""
    oracle, folder = tiny_llama
    cache = tmp_path_factory.mktemp("hf-cache")
    repo = cache / ("models--" + REPO_ID.replace("/", "--"))
    snapshot = repo / "snapshots" / REVISION
    shutil.copytree(folder, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(REVISION)
    return cache, oracle


def test_hub_id_resolves_from_cache_offline(hub_cache, monkeypatch):
    cache, oracle = hub_cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    resolved = resolve(REPO_ID, cache_dir=cache)
    assert resolved.folder.name == REVISION and not resolved.is_gguf
    model = AutoModelForCausalLM.from_pretrained(REPO_ID, cache_dir=cache)
    ids = torch.randint(0, 64, (1, 8))
    with torch.no_grad():
        assert_matches_oracle(model(ids).logits, oracle, ids, label="from the hub cache")


def test_hub_id_missing_from_cache_is_clear(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="not in the Hugging Face cache"):
        resolve("nobody/nothing", cache_dir=tmp_path)


def test_gguf_file_in_folder(tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    resolved = resolve(tmp_path, gguf_file="m.gguf")
    assert resolved.gguf_path == tmp_path / "m.gguf"
    with pytest.raises(CheckpointError, match="GGUF file not found"):
        resolve(tmp_path, gguf_file="other.gguf")


def test_generation_config_from_hub_id_and_gguf(hub_cache, monkeypatch, smollm2_gguf):
    from tokenmill import GenerationConfig

    cache, oracle = hub_cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from_hub = GenerationConfig.from_pretrained(REPO_ID, cache_dir=cache)
    assert from_hub.to_dict() == GenerationConfig.from_pretrained(resolve(REPO_ID, cache_dir=cache).folder).to_dict()
    from_gguf = GenerationConfig.from_pretrained(smollm2_gguf)
    assert (from_gguf.bos_token_id, from_gguf.eos_token_id, from_gguf.pad_token_id) == (1, 2, 2)


def test_not_found_message_names_the_true_reason(tmp_path, monkeypatch):
    # it claimed "HF_HUB_OFFLINE is set" even when only local_files_only was passed, or the network was down
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(CheckpointError, match="local_files_only=True was passed") as only_local:
        resolve("nobody/nothing", cache_dir=tmp_path, local_files_only=True)
    assert "HF_HUB_OFFLINE" not in str(only_local.value)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE=1 is set") as env_offline:
        resolve("nobody/nothing", cache_dir=tmp_path)
    assert "local_files_only" not in str(env_offline.value)


def test_not_found_online_says_the_hub_was_unreachable(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def unreachable(*args, **kwargs):  # what huggingface_hub raises online when the connection fails
        raise LocalEntryNotFoundError("cannot reach the Hub and not in the cache")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    with pytest.raises(CheckpointError, match="Hub could not be reached") as online:
        resolve("nobody/nothing", cache_dir=tmp_path)
    assert "HF_HUB_OFFLINE" not in str(online.value) and "offline" not in str(online.value)
