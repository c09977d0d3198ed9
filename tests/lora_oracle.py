"""Adapters made by `peft` itself for the LoRA tests: a copy of a transformers model, LoRA-wrapped with random
(non-zero) A and B so that a dropped or misplaced delta changes the logits, saved as a PEFT folder."""

from __future__ import annotations

import copy
from pathlib import Path

import peft
import torch


def make_adapter(oracle: torch.nn.Module, folder: Path, targets, seed: int, rank: int = 4, alpha: int = 8,
                 **lora_options) -> torch.nn.Module:
    """peft's model (a deep copy of `oracle` with the adapter), saved to `folder`. init_lora_weights=False: B is
    random like A instead of zero, so the delta shows in the logits (the tests also check that it does)."""
    torch.manual_seed(seed)
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, init_lora_weights=False,
                             lora_dropout=0.0, **lora_options)
    wrapped = peft.get_peft_model(copy.deepcopy(oracle), config).eval()
    wrapped.save_pretrained(folder)
    return wrapped


def peft_logits(wrapped, ids: torch.Tensor, **inputs) -> torch.Tensor:
    with torch.no_grad():
        return wrapped(input_ids=ids, **inputs).logits
