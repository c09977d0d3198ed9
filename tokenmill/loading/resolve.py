"""Where a model source lives: a local folder, a .gguf file, or a Hub id found through the HF cache."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError, CheckpointNotFoundError


@dataclass
class ResolvedSource:
    folder: Path  # holds config/tokenizer files (for a GGUF: the file's folder)
    gguf_path: Path | None = None

    @property
    def is_gguf(self) -> bool:
        return self.gguf_path is not None


def _looks_like_hub_id(source: str) -> bool:
    parts = source.split("/")
    return 1 <= len(parts) <= 2 and all(parts) and not source.startswith((".", "/", "~"))


def _why_not_downloaded(local_files_only: bool, env_offline: bool) -> str:
    """The true reason the Hub was not used, for the not-found message."""
    reasons = [f"HF_HUB_OFFLINE={os.environ['HF_HUB_OFFLINE']} is set"] if env_offline else []
    reasons += ["local_files_only=True was passed"] if local_files_only else []
    if reasons:
        return "offline: " + " and ".join(reasons)
    return "the Hugging Face Hub could not be reached to download it (no network?)"


def _from_hub(repo_id: str, gguf_file: str | None, revision: str | None, cache_dir, local_files_only: bool) -> ResolvedSource:
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    env_offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    offline = local_files_only or env_offline
    try:
        if gguf_file is not None:
            path = Path(hf_hub_download(repo_id, gguf_file, revision=revision, cache_dir=cache_dir,
                                        local_files_only=offline))
            return ResolvedSource(path.parent, path)
        folder = Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, local_files_only=offline,
                                        allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]))
        return ResolvedSource(folder)
    except LocalEntryNotFoundError:
        raise CheckpointNotFoundError(repo_id, f"not a local path and not in the Hugging Face cache "
                                       f"({_why_not_downloaded(local_files_only, env_offline)})") from None
    except HFValidationError as error:
        raise CheckpointError(repo_id, f"not a local path nor a valid Hub id: {error}") from None
    except OSError as error:
        raise CheckpointError(repo_id, f"cannot fetch from the Hugging Face Hub: {error}") from None


def resolve(source: str | os.PathLike, gguf_file: str | None = None, revision: str | None = None,
            cache_dir: str | os.PathLike | None = None, local_files_only: bool = False) -> ResolvedSource:
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise CheckpointError(path, "a model file must be .gguf; for Hugging Face checkpoints pass the folder")
        return ResolvedSource(path.parent, path)
    if path.is_dir():
        if gguf_file is not None:
            gguf_path = path / gguf_file
            if not gguf_path.is_file():
                raise CheckpointNotFoundError(gguf_path, "GGUF file not found")
            return ResolvedSource(path, gguf_path)
        return ResolvedSource(path)
    if str(source).lower().endswith(".gguf") and not _looks_like_hub_id(str(source)):
        raise CheckpointNotFoundError(path, "GGUF file not found")
    if _looks_like_hub_id(str(source)):
        return _from_hub(str(source), gguf_file, revision, cache_dir, local_files_only)
    raise CheckpointNotFoundError(path, "no such file or folder")


def resolve_source(source, gguf_file: str | None = None, **hub_kwargs) -> ResolvedSource:
    """`resolve` with the Hub keywords every `from_pretrained` accepts (revision, cache_dir, local_files_only)."""
    hub = {k: hub_kwargs.get(k) for k in ("revision", "cache_dir")}
    return resolve(source, gguf_file=gguf_file, local_files_only=bool(hub_kwargs.get("local_files_only")), **hub)
