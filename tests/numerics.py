"""Tolerances derived from a stated rounding-error bound, not from what one CPU printed.

The reference is a float64 run of the same weights (transformers' model `.double()`: for a GGUF this is the
float32-dequantized blocks widened exactly to float64). Both float32 engines are measured against it.

Derivation (u = unit roundoff, 2**-24 for float32):
- One dot product of length K accumulated in float32 is off by at most ~K*u*sum|x_i*y_i| in the worst case
  (Higham, "Accuracy and Stability of Numerical Algorithms", recursive summation). That worst case needs every
  rounding to fall the same way; rounding errors are in practice independent and zero-mean, so the error is a
  random walk of K steps, ~sqrt(K)*u*|result| (Higham & Mary's probabilistic analysis, 2019). We use the
  sqrt(K) form: the K form would give 45x looser tolerances at K=2048 and stop catching real numeric bugs.
  Blocked, tiled, multi-threaded or SIMD summation (oneDNN, MKL, AVX-512, AVX2, scalar, AMX) only reorders the
  same K additions: each chain is at most K long, so the sqrt(K) form holds for every kernel set / ISA.
- A decoder evaluates about MATMULS_PER_LAYER sequential products per layer (q/k/v projection, q.k, softmax.v,
  output projection, gate/up, down) plus the LM head. RMSNorm rescales the residual stream, so a relative
  error injected by one product reaches the logits with gain ~1; independent errors add in variance, so the
  relative error of a logit is ~ u*sqrt(K*matmuls).
- The tolerance is on the maximum over N compared logits; the maximum of N zero-mean errors with deviation s
  stays below s*sqrt(2*ln N) with high probability.
  floor = sqrt(2 ln N) * u * sqrt(K * matmuls) * max|exact logit|
- A model can amplify errors more than gain 1 (ill conditioning); transformers' own float32 error against
  float64 measures that amplification on the same weights and inputs. tokenmill performs the same operations
  with the same reduction lengths (only the order of the sums differs), so it may be ORACLE_MULTIPLE times as
  inexact as transformers. allowed = ORACLE_MULTIPLE * err(transformers fp32) + floor.
Comparisons of two float32 runs with no float64 at hand (cache vs recompute, batched vs alone) use the
triangle inequality: each is within `floor` of the exact value, so they are within 2*floor of each other.
The float64 runs are not cached on disk: the longest (Gemma 3 270M, 790 tokens) takes ~3 s, less than reading
its 134 MB of float64 logits back would save.
"""

from __future__ import annotations

import copy
import math
import weakref

import torch

UNIT_ROUNDOFF = {torch.float32: 2.0 ** -24, torch.float64: 2.0 ** -53, torch.bfloat16: 2.0 ** -8,
                 torch.float16: 2.0 ** -11}
MATMULS_PER_LAYER = 6  # qkv projection, q.k, softmax.v, output projection, gate/up, down
ORACLE_MULTIPLE = 2.0  # same operations and reduction lengths as transformers; only the summation order differs


def depth_of(config) -> tuple[int, int]:
    """(K, matmuls) of a decoder config: the longest reduction of one layer and the products from input to logit."""
    hidden = config.hidden_size
    heads = getattr(config, "num_attention_heads", 1)
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    widths = [hidden, head_dim, getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None)
              or 4 * hidden, getattr(config, "moe_intermediate_size", None) or 0,
              getattr(config, "shared_expert_intermediate_size", None) or 0]
    return max(widths), MATMULS_PER_LAYER * config.num_hidden_layers + 1


def reduction_len(config, sequence_len: int) -> int:
    """Longest dot product of a forward pass: a layer's width, or the keys softmax.v sums over."""
    return max(depth_of(config)[0], sequence_len)


def matmuls(config) -> int:
    return depth_of(config)[1]


def rounding_floor(reduction: int, products: int, outputs: int, magnitude: float,
                   dtype: torch.dtype = torch.float32) -> float:
    """sqrt(2 ln N) * u * sqrt(K * matmuls) * magnitude: the statistical float rounding bound (module docstring)."""
    spread = math.sqrt(2.0 * math.log(max(outputs, 2)))
    return spread * UNIT_ROUNDOFF[dtype] * math.sqrt(reduction * products) * magnitude


def _max_error(values: torch.Tensor, exact: torch.Tensor) -> float:
    return (values.double() - exact).abs().max().item() if values.numel() else 0.0


def assert_logits_within_bound(actual: torch.Tensor, oracle32: torch.Tensor, exact64: torch.Tensor,
                               reduction: int, products: int, label: str = "") -> None:
    """tokenmill's float32 logits within ORACLE_MULTIPLE * transformers' error + the rounding floor of exact64."""
    assert actual.shape == oracle32.shape == exact64.shape, (label, actual.shape, oracle32.shape, exact64.shape)
    exact = exact64.double()
    ours, theirs = _max_error(actual, exact), _max_error(oracle32, exact)
    magnitude = exact.abs().max().item()
    floor = rounding_floor(reduction, products, exact.numel(), magnitude, actual.dtype)
    allowed = ORACLE_MULTIPLE * theirs + floor
    assert ours <= allowed, (
        f"{label}: max|tokenmill - float64| = {ours:.3e} exceeds the bound {allowed:.3e} "
        f"(= {ORACLE_MULTIPLE} x transformers' float32 error {theirs:.3e} + rounding floor {floor:.3e}; "
        f"K={reduction}, matmuls={products}, N={exact.numel()}, max|logit|={magnitude:.3g})")


def agreement_tolerance(reduction: int, products: int, outputs: int, magnitude: float,
                        dtype: torch.dtype = torch.float32) -> float:
    """Two runs of one computation in different summation orders: each within `floor` of exact, so 2 * floor apart."""
    return 2 * rounding_floor(reduction, products, outputs, magnitude, dtype)


def assert_runs_agree(first: torch.Tensor, second: torch.Tensor, reduction: int, products: int,
                      label: str = "") -> None:
    """Two float32 runs of the same computation in different orders: within 2 * floor (each is within floor)."""
    assert first.shape == second.shape, (label, first.shape, second.shape)
    magnitude = max(first.abs().max().item(), second.abs().max().item()) if first.numel() else 0.0
    allowed = agreement_tolerance(reduction, products, first.numel(), magnitude, first.dtype)
    error = _max_error(first, second.double())
    assert error <= allowed, (f"{label}: max|difference| = {error:.3e} exceeds 2 x rounding floor {allowed:.3e} "
                              f"(K={reduction}, matmuls={products}, N={first.numel()}, max|value|={magnitude:.3g})")


_FLOAT64_TWINS: "weakref.WeakKeyDictionary[torch.nn.Module, torch.nn.Module]" = weakref.WeakKeyDictionary()


def assert_same_model(loaded, reference, ids: torch.Tensor, label: str) -> None:
    """Two float32 models meant to hold the same weights (a file read back, the values it was written from): logits
    within assert_runs_agree's bound, and the same 8 greedy tokens."""
    with torch.no_grad():
        assert_runs_agree(loaded(ids).logits, reference(ids).logits, reduction_len(reference.config, ids.shape[1]),
                          matmuls(reference.config), label)
    assert torch.equal(loaded.generate(ids, max_new_tokens=8, do_sample=False),
                       reference.generate(ids, max_new_tokens=8, do_sample=False))


def float64_twin(oracle: torch.nn.Module) -> torch.nn.Module:
    """The oracle's weights widened exactly to float64 (made once per oracle): the exact reference."""
    if oracle not in _FLOAT64_TWINS:
        twin = copy.deepcopy(oracle).double().eval()
        if getattr(twin.config, "_experts_implementation", None) not in (None, "eager"):
            twin.set_experts_implementation("eager")  # torch's grouped GEMM has no float64
        _FLOAT64_TWINS[oracle] = twin
    return _FLOAT64_TWINS[oracle]


def exact_logits(twin: torch.nn.Module, ids: torch.Tensor, attention_mask=None, **inputs) -> torch.Tensor:
    """The float64 twin's logits; NaN at padding (transformers' fully masked rows turn NaN in float64, and would
    leak into real rows through 0 * NaN), so a padded row runs alone, unpadded, at the positions it has in the batch."""
    if attention_mask is None or bool(attention_mask.all()):
        return twin(ids, attention_mask=attention_mask, **inputs).logits
    rows = []
    for row_ids, row_mask in zip(ids, attention_mask.bool()):
        positions = torch.arange(ids.shape[-1])[row_mask][None]
        logits = twin(row_ids[row_mask][None], position_ids=positions, **inputs).logits
        full = logits.new_full((1, ids.shape[-1], logits.shape[-1]), float("nan"))
        full[0, row_mask] = logits[0]
        rows.append(full)
    return torch.cat(rows)


def assert_matches_oracle(actual: torch.Tensor, oracle: torch.nn.Module, ids: torch.Tensor, select=None,
                          label: str = "", **inputs) -> None:
    """tokenmill's logits (`[select]` of a full forward) within the bound, against transformers fp32 and fp64."""
    with torch.no_grad():
        theirs, exact = oracle(ids, **inputs).logits, exact_logits(float64_twin(oracle), ids, **inputs)
    if select is not None:
        theirs, exact = theirs[select], exact[select]
    config = oracle.config
    assert_logits_within_bound(actual, theirs, exact, reduction_len(config, ids.shape[-1]), matmuls(config),
                               label or config.model_type)


def score_tolerance(config, sequence_len: int, logits: torch.Tensor, steps: int = 1, log_softmaxes: int = 1) -> float:
    """Two float32 runs' processed scores, or a sum of `steps` of them (a sequence score); `logits` are the values
    the scores come from (raw logits, or log-probabilities, which are no smaller), the magnitude of the bound.
    Log-softmax can add the largest logit error once more (logsumexp moves by at most it): twice the agreement
    bound per log-softmax in the score (DoLa subtracts two); a sum of `steps` such values (divided by
    length**penalty, a divisor >= 1 when penalty >= 0) is off by at most `steps` times that."""
    finite = logits[torch.isfinite(logits)]
    magnitude = float(finite.abs().max()) if finite.numel() else 0.0
    one = agreement_tolerance(reduction_len(config, sequence_len), matmuls(config), max(logits.numel(), 2), magnitude)
    return steps * 2 * log_softmaxes * one


def summation_tolerance(terms: torch.Tensor) -> float:
    """Two float32 sums of the same n terms (last dim) in different orders: each is off by at most
    gamma_n * sum|x| (gamma_n = n*u / (1 - n*u), Higham's worst case; n is tiny here), so 2 * gamma_n * sum|x| apart."""
    count = terms.shape[-1]
    gamma = count * UNIT_ROUNDOFF[torch.float32] / (1 - count * UNIT_ROUNDOFF[torch.float32])
    finite = torch.where(torch.isfinite(terms), terms, torch.zeros_like(terms))
    return 2 * gamma * float(finite.double().abs().sum(-1).max())
