"""The vocabulary-parallel embedding and head, each rank's part computed here in one process (SINGLE group)."""

from __future__ import annotations

import torch
from torch import nn

from tokenmill.execution.parallel import SINGLE
from tokenmill.layers.parallel import VocabParallelEmbedding, VocabParallelHead


def test_ranks_embeddings_sum_to_the_full_lookup_exactly():
    torch.manual_seed(0)
    full = nn.Embedding(7, 5)
    ids = torch.tensor([[0, 3, 4, 6, 2]])
    parts = [VocabParallelEmbedding(nn.Embedding.from_pretrained(full.weight.detach()[start:end]), start, end, 7,
                                    SINGLE) for start, end in ((0, 4), (4, 7))]
    first, second = (part(ids) for part in parts)
    assert torch.equal(first[0, 2], torch.zeros(5))  # id 4 belongs to the second rank: zeros here
    assert torch.equal(first + second, full(ids))  # one non-zero term per id: the sum is exact


def test_head_of_one_rank_is_its_linear():
    local = nn.Linear(5, 3)
    head = VocabParallelHead(local, [3], SINGLE)
    hidden = torch.randn(2, 5)
    assert torch.equal(head(hidden), local(hidden)) and head.out_features == 3
