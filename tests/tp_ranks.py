"""What each rank of a tensor-parallel test runs (importable without transformers: spawned ranks import it).

`run_jobs` loads each checkpoint as this rank's share and returns, on every rank, the logits of one forward and
the tokens of a greedy generation, so the test compares rank 0's results with one process's.
"""

from __future__ import annotations

import torch


def forward_and_generate(model, ids: torch.Tensor, new_tokens: int) -> tuple[torch.Tensor, list[int]]:
    with torch.no_grad():
        logits = model(ids).logits
    tokens = model.generate(ids, max_new_tokens=new_tokens, do_sample=False)
    return logits, tokens[0, ids.shape[1]:].tolist()


def run_jobs(collectives, jobs: list[tuple[str, dict, list[int], int]]) -> list:
    """jobs: (source, load keywords, prompt ids, new tokens); returns [(logits, tokens, policy dict)]."""
    from tokenmill.assembly.pretrained import load_model

    results = []
    for source, keywords, prompt, new_tokens in jobs:
        model = load_model(source, tensor_parallel=collectives, progress=False, **keywords)
        logits, tokens = forward_and_generate(model, torch.tensor([prompt]), new_tokens)
        results.append((logits, tokens, model.execution_policy.as_dict()))
    return results


def sum_of_ranks(collectives) -> tuple[float, list[float], object]:
    """(all-reduce of rank+1, all-gather of uneven pieces, rank 0's broadcast object) on this rank."""
    total = collectives.all_reduce(torch.tensor([collectives.rank + 1.0])).item()
    piece = torch.full((1, collectives.rank + 1), float(collectives.rank))  # widths 1 and 2
    gathered = collectives.all_gather_last(piece, [1, 2])[0].tolist()
    shared = collectives.broadcast_object({"step": 7} if collectives.rank == 0 else None)
    return total, gathered, shared


def rank_one_dies(collectives) -> None:
    """Rank 1 exits at once; rank 0 then waits on a collective that can never complete."""
    import os

    if collectives.rank == 1:
        os._exit(3)
    collectives.all_reduce(torch.ones(1))
