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
