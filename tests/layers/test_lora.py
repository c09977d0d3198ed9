"""LoRA deltas on linears: a projection gains x @ A^T @ B^T only for the rows whose adapter targets it, fused
projections get each part's delta, token-flattened batches keep each row's adapter, merging refuses GGUF blocks."""

import pytest
import torch
from torch import nn

from tokenmill.layers.lora import NO_LORA, LoraAdapters, LowRank
from tokenmill.layers.mlp import FusedProjection
from tokenmill.layers.quantized_linear import QuantizedLinear, QuantizedWeight

from numerics import summation_tolerance


class Pair(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.first, self.second = nn.Linear(8, 5), nn.Linear(8, 3)


def _low_rank(out_features: int, rank: int = 2, seed: int = 1) -> LowRank:
    generator = torch.Generator().manual_seed(seed)
    return LowRank(torch.randn(rank, 8, generator=generator), torch.randn(out_features, rank, generator=generator))


def _adapters(root: Pair) -> LoraAdapters:
    adapters = LoraAdapters()
    adapters.add("a", {"first": _low_rank(5, seed=1)}, root)
    adapters.add("b", {"first": _low_rank(5, seed=2), "second": _low_rank(3, seed=3)}, root)
    return adapters


def _close(actual, expected, terms):
    assert (actual - expected).abs().max() <= summation_tolerance(terms) + 1e-6


def test_rows_get_their_own_adapter_delta():
    root = Pair()
    adapters = _adapters(root)
    x = torch.randn(4, 3, 8)
    lora = adapters.batch(["a", None, "b", "a"], 4, x.device)
    out = lora.project(root.first, x)
    expected = root.first(x).clone()
    for row, name in ((0, "a"), (2, "b"), (3, "a")):
        expected[row] += adapters.by_name[name]["first"](x[row])
    assert torch.allclose(out, expected, atol=1e-5)
    assert torch.equal(lora.project(root.second, x)[[0, 1, 3]], root.second(x)[[0, 1, 3]])  # only b targets it
    assert torch.equal(NO_LORA.project(root.first, x), root.first(x))


def test_fused_projection_gets_each_parts_delta():
    root = Pair()
    adapters = _adapters(root)
    fused = FusedProjection([root.first, root.second])
    x = torch.randn(2, 1, 8)
    lora = adapters.batch(["b", "a"], 2, x.device)
    together = lora.project_fused(fused, x)
    apart = torch.cat([lora.project(root.first, x), lora.project(root.second, x)], dim=-1)
    assert torch.allclose(together, apart, atol=1e-5)


def test_flattened_rows_follow_their_batch_row():
    root = Pair()
    adapters = _adapters(root)
    x = torch.randn(3, 4, 8)
    lora = adapters.batch(["a", None, "b"], 3, x.device)
    flat = lora.flattened(4).project(root.first, x.reshape(-1, 8)).view(3, 4, 5)
    assert torch.allclose(flat, lora.project(root.first, x), atol=1e-6)


def test_active_adapter_enable_and_unknown_names():
    root = Pair()
    adapters = _adapters(root)
    assert adapters.batch(None, 2, "cpu") is NO_LORA  # none active yet
    adapters.active = "a"
    assert adapters.batch(None, 2, "cpu").groups == [("a", None)]
    adapters.enabled = False
    assert adapters.batch(None, 2, "cpu") is NO_LORA
    with pytest.raises(KeyError, match="no adapter named 'c' is loaded .loaded: 'a', 'b'."):
        adapters.batch(["c", None], 2, "cpu")
    with pytest.raises(ValueError, match="already loaded"):
        adapters.add("a", {}, root)
    first_id = adapters.load_ids["a"]
    adapters.remove("a", root)
    adapters.add("a", {"first": _low_rank(5)}, root)
    assert adapters.load_ids["a"] != first_id  # a reloaded name is another adapter (prefix-cache roots differ)


def test_merge_adds_the_dense_delta_and_refuses_blocks():
    root = Pair()
    adapters = _adapters(root)
    x = torch.randn(2, 8)
    expected = adapters.batch(["b", "b"], 2, x.device).project(root.first, x)
    adapters.merge("b", root)
    _close(root.first(x), expected, x.abs() * 10)
    blocks = QuantizedWeight(torch.zeros(5, 34, dtype=torch.uint8), 8, 32)  # Q8_0: 34 bytes per 32 values
    holder = nn.Module()
    holder.first = QuantizedLinear(blocks)
    quantized = LoraAdapters()
    quantized.add("q", {"first": LowRank(torch.randn(2, 32), torch.randn(5, 2))}, holder)
    with pytest.raises(TypeError, match="merging needs float weights"):
        quantized.merge("q", holder)


def test_a_stacked_expert_parameter_gets_each_routed_rows_expert_delta():
    class Experts(nn.Module):
        def __init__(self):
            super().__init__()
            self.stack = nn.Parameter(torch.randn(3, 5, 8, generator=torch.Generator().manual_seed(0)))

    root = Experts()
    generator = torch.Generator().manual_seed(4)
    stacked = {name: LowRank(torch.randn(3, 2, 8, generator=generator), torch.randn(3, 5, 2, generator=generator))
               for name in ("a", "b")}
    adapters = LoraAdapters()
    for name, low_rank in stacked.items():
        adapters.add(name, {"stack": low_rank}, root)
    tokens = torch.randn(6, 8, generator=generator)
    lora = adapters.batch(["a", None, "b", "a", "b", None], 6, tokens.device)
    token_rows = torch.tensor([1, 2, 3])  # the tokens routed to expert 2: rows of adapters None, b, a
    out = lora.project_parameter(root, "stack", tokens[token_rows], expert=2, token_rows=token_rows)
    base, x = root.stack[2].detach().double(), tokens[token_rows].double()
    pieces = [None, stacked["b"].expert(2), stacked["a"].expert(2)]
    exact = torch.stack([x[i] @ (base + (0 if p is None else p.b.double() @ p.a.double())).T
                         for i, p in enumerate(pieces)])
    # each float32 output: a sum of 8 products x_i W_ji, plus (x A^T) B^T: 2 products of 8-term sums
    terms = torch.stack([torch.cat([(x[i, None, :] * base).abs(), torch.zeros(5, 2, dtype=torch.float64)
                                    if p is None else p.b.double().abs() * (p.a.double().abs() @ x[i].abs())],
                                   dim=-1) for i, p in enumerate(pieces)])
    assert (out.double() - exact).abs().max() <= summation_tolerance(terms)
    assert not torch.allclose(out[1:], (x[1:] @ base.T).float())  # the adapters' deltas show
    assert torch.equal(NO_LORA.project_parameter(root, "stack", tokens, expert=0), tokens @ root.stack[0].T)
    merged = root.stack.detach().double() + stacked["a"].dense().double()
    adapters.merge("a", root)
    assert (root.stack.double() - merged).abs().max() <= 2 ** -24 * merged.abs().max()  # one rounding each
