"""The parity checks every architecture test runs against transformers on a tiny random checkpoint.

A checkpoint is built with transformers' own config and model classes, its 1-D parameters (norm weights,
biases) perturbed so that offsets and missing biases show, saved with `save_pretrained`, and loaded by both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from tokenmill import AutoModelForCausalLM
from tokenmill.cache import DynamicCache

from numerics import assert_matches_oracle

PAD_ID = 0
GREEDY_TOKENS = 12


@dataclass
class Pair:
    oracle: torch.nn.Module  # transformers' model
    folder: Path  # where it was saved
    vocab_size: int

    def assert_within_bound(self, actual: torch.Tensor, ids: torch.Tensor, select=None, label: str = "",
                            **inputs) -> None:
        assert_matches_oracle(actual, self.oracle, ids, select, label, **inputs)

    def load(self, attn_implementation: str = "sdpa", **kwargs):
        return AutoModelForCausalLM.from_pretrained(self.folder, dtype=torch.float32,
                                                    attn_implementation=attn_implementation, **kwargs)


def save_tiny(tmp_path_factory, name: str, model_class, config, seed: int = 0, **save_kwargs) -> Pair:
    torch.manual_seed(seed)
    oracle = model_class(config).eval()
    with torch.no_grad():
        for parameter in oracle.parameters():
            if parameter.dim() == 1:
                parameter.add_(torch.randn_like(parameter) * 0.2)
    folder = tmp_path_factory.mktemp(name)
    oracle.save_pretrained(folder, **save_kwargs)
    return Pair(oracle, folder, config.vocab_size)


def prompt_batch(vocab_size: int, length: int = 40, pad_rows=((0, 7), (2, 3)), batch: int = 3, seed: int = 1):
    """Random ids (never the pad id) with left padding on some rows; returns (input_ids, attention_mask)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab_size, (batch, length), generator=generator)
    mask = torch.ones_like(ids)
    for row, pad in pad_rows:
        ids[row, :pad] = PAD_ID
        mask[row, :pad] = 0
    return ids, mask


def assert_logits_match(pair: Pair, attn_implementation: str, length: int = 40) -> None:
    model = pair.load(attn_implementation)
    ids, mask = prompt_batch(pair.vocab_size, length)
    with torch.no_grad():
        actual = model(ids, attention_mask=mask).logits
    real = mask.bool()  # transformers' outputs at padding positions are not meaningful
    pair.assert_within_bound(actual[real], ids, real, attn_implementation, attention_mask=mask)


def assert_cache_matches_recompute(pair: Pair, length: int = 40, prefill: int = 23) -> None:
    """Prefill part of the prompt, then decode one token at a time: the same logits as one uncached pass."""
    model = pair.load()
    ids, mask = prompt_batch(pair.vocab_size, length)
    with torch.no_grad():
        full = model(ids, attention_mask=mask, use_cache=False).logits
        cache = DynamicCache()
        pieces = [model(ids[:, :prefill], attention_mask=mask[:, :prefill], past_key_values=cache).logits]
        for step in range(prefill, length):
            pieces.append(model(ids[:, step:step + 1], attention_mask=mask[:, :step + 1],
                                past_key_values=cache).logits)
    real = mask.bool()
    # both orders measured against the same float64 run (so they are within twice the bound of each other)
    pair.assert_within_bound(torch.cat(pieces, dim=1)[real], ids, real, "incremental", attention_mask=mask)
    pair.assert_within_bound(full[real], ids, real, "recompute", attention_mask=mask)
    assert cache.get_seq_length() == length


def assert_greedy_matches(pair: Pair, attn_implementation: str = "sdpa", length: int = 40) -> None:
    """generate(do_sample=False) on a left-padded batch: token for token what transformers generates."""
    model = pair.load(attn_implementation)
    ids, mask = prompt_batch(pair.vocab_size, length)
    settings = dict(attention_mask=mask, do_sample=False, max_new_tokens=GREEDY_TOKENS, min_new_tokens=GREEDY_TOKENS,
                    pad_token_id=PAD_ID)
    with torch.no_grad():
        expected = pair.oracle.generate(ids, **settings)
        actual = model.generate(ids, **settings)
    assert actual.tolist() == expected.tolist()
