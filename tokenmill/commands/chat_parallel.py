"""`tokenmill chat --tensor-parallel-size N`: rank 0 holds the conversation and reads the keyboard. Each turn it
broadcasts the messages, the sampling arguments and its random state, and every rank runs the same generate()
(the forward's collectives need every rank); the Ctrl-C stop request is broadcast each step, so every rank stops
at the same token."""

from __future__ import annotations

import signal

import torch

from ..execution.parallel import Collectives


class SharedStop:
    """A stopping criterion the ranks evaluate together: rank 0's stop request decides, broadcast each step."""

    def __init__(self, group: Collectives, local=None):
        self.group = group
        self.local = local  # rank 0's StopRequest (set by Ctrl-C); None on the other ranks

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        requested = self.group.broadcast_object(bool(self.local and self.local.requested))
        return torch.full((input_ids.shape[0],), requested, dtype=torch.bool, device=input_ids.device)


def announce_turn(group: Collectives, messages: list[dict], kwargs: dict) -> None:
    """Rank 0: the turn every rank generates next (its random state too: /set seed changes rank 0's)."""
    group.broadcast_object(("turn", messages, kwargs, torch.get_rng_state()))


def announce_end(group: Collectives) -> None:
    group.broadcast_object(None)


def follow_chat(model, tokenizer, group: Collectives) -> int:
    """A rank other than 0: generate each announced turn with rank 0, silently, until rank 0 ends the chat."""
    from ..generation.stopping_criteria import StoppingCriteriaList

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the terminal's whole process group: rank 0 decides
    while (turn := group.broadcast_object()) is not None:
        _, messages, kwargs, rng_state = turn
        torch.set_rng_state(rng_state)
        try:
            inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                   return_dict=True)
            model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                           tokenizer=tokenizer, stopping_criteria=StoppingCriteriaList([SharedStop(group)]),
                           **kwargs)
        except ValueError:  # rank 0 meets the same error on the same input, and reports it
            continue
    return 0
