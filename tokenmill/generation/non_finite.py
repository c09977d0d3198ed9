"""Non-finite logits in generate(): detected for the cost of one reduction per step, diagnosed only on failure.

Argmax over NaN logits picks token 0 or <|endoftext|>, so the model would stop or babble silently. Weights are
checked finite at load (assembly/finite_weights.py); what is left is an activation overflowing (float16's
range is ±65504). The per-step test is a sum of the step's logits (a finite sum proves every logit finite:
~40 µs for a 49k vocabulary on a CPU, against milliseconds for the step; on a GPU, one more host sync in a
loop that already syncs every step). Only when it fails is the sequence run again, without cache, to name the
layer where values go bad. The serving engine has its own per-row handling and does not come through here.
"""

from __future__ import annotations

import torch

from ..errors import NonFiniteLogitsError


def logits_are_finite(raw_logits: torch.Tensor) -> bool:
    """Every logit of the step finite: NaN and inf absorb a sum; finite logits never overflow a float32 one."""
    return bool(torch.isfinite(raw_logits.sum()))


def non_finite_error(model, raw_logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     step: int) -> NonFiniteLogitsError:
    rows = torch.nonzero(~torch.isfinite(raw_logits).all(dim=-1)).flatten().tolist()
    where = first_non_finite_stage(model, input_ids, attention_mask)
    return NonFiniteLogitsError(
        f"the logits of row(s) {rows} are NaN or infinite at generation step {step}; non-finite values first "
        f"appear in {where}. The weights were checked finite when loaded, so an activation overflowed "
        f"(float16 holds at most ±65504: load in bfloat16 or float32)")


@torch.no_grad()
def first_non_finite_stage(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> str:
    """Where the sequence's hidden states first stop being finite: the embeddings, a layer, or the LM head."""
    hidden_states = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                          output_hidden_states=True).hidden_states
    for index, hidden in enumerate(hidden_states):
        if not bool(torch.isfinite(hidden).all()):
            if index == 0:
                return "the token embeddings"
            if index == len(hidden_states) - 1:
                return f"layer {index - 1} or the final norm (model.norm)"
            return f"layer {index - 1} (model.layers.{index - 1})"
    return "the LM head (lm_head): every hidden state is finite"
