"""GGUF → Hugging Face folder: dequantized float weights in transformers' names and layout, config.json,
generation_config.json and the tokenizer files, loadable by transformers and tokenmill alike."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..config import ModelConfig
from ..errors import CheckpointError
from .save import save_pretrained
from ..execution.policy import ExecutionPolicy
from .weights import build_model


def convert_gguf(gguf_path: str | os.PathLike, output_dir: str | os.PathLike, *, dtype: torch.dtype = torch.float32,
                 max_shard_size: int | str = "5GB", progress: bool = True) -> list[str]:
    """Write a Hugging Face folder from a GGUF file; returns the written file names."""
    from ..generation.config import GenerationConfig
    from ..tokenizer import Tokenizer
    from ..loading.gguf import GGUFCheckpoint
    from ..models.registry import gguf_architectures

    gguf_path, output_dir = Path(gguf_path), Path(output_dir)
    if not gguf_path.is_file():
        raise CheckpointError(gguf_path, "GGUF file not found")
    if output_dir.exists() and not output_dir.is_dir():
        raise CheckpointError(output_dir, "output exists and is not a folder")
    # an unsupported family fails here, naming the supported ones
    checkpoint = GGUFCheckpoint(gguf_path, gguf_architectures())
    config = ModelConfig.from_dict(checkpoint.config_dict())
    weights = checkpoint.state_dict(dtype=dtype, progress=progress)
    # building the model checks every name and shape before anything is written
    model = build_model(config, weights, source=gguf_path, policy=ExecutionPolicy(dtype=dtype))
    model.generation_config = GenerationConfig.from_dict(checkpoint.generation_config_dict())
    written = save_pretrained(model, output_dir, max_shard_size=max_shard_size, progress=progress)
    written += Tokenizer.from_gguf(gguf_path).save_pretrained(output_dir)
    return written
