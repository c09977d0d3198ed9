"""LoRA adapters as low-rank deltas on a model's linears, applied through an explicit per-forward argument.

The model's modules stay untouched (names, state_dict, fused projections, GGUF blocks): an adapter is, per
target linear, a pair (A [r, in], B [out, r] with the scale folded in) held by the model's `LoraAdapters`. Each
forward builds a `LoraBatch` (which adapter each batch row uses) and hands it down the layers next to `ops`;
a layer computes a projection as `lora.project(self.q_proj, x)`: the base output (float or quantized kernel
matmul) plus x @ A^T @ B^T for the rows whose adapter targets that linear. Rows are grouped by adapter, so a
batch mixing adapters costs one pair of small matmuls per adapter present, never a copy of a base weight.

A mixture-of-experts block's stacked expert weights and router weight are bare parameters, not linears (peft
targets them with `target_parameters`): their deltas are keyed by (module, parameter name), a stacked
[experts, out, in] parameter's delta holds one A and one B per expert, and the block computes each product as
`lora.project_parameter(module, name, x, expert, token_rows)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class LowRank:
    """One adapter's delta on one linear: x @ a.T @ b.T (b already multiplied by the adapter's scale)."""

    a: torch.Tensor  # [rank, in_features], or [experts, rank, in_features] on a stacked expert parameter
    b: torch.Tensor  # [out_features, rank], scaled, or [experts, out_features, rank]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.a.T) @ self.b.T

    def expert(self, index: int) -> LowRank:
        """One expert's delta of a stacked parameter's."""
        return LowRank(self.a[index], self.b[index])

    def dense(self) -> torch.Tensor:
        """The delta as an [out, in] matrix, or [experts, out, in] (for merging), computed in float32 at least."""
        wide = torch.promote_types(self.a.dtype, torch.float32)
        return self.b.to(wide) @ self.a.to(wide)

    def to(self, device=None, dtype=None) -> LowRank:
        return LowRank(self.a.to(device=device, dtype=dtype), self.b.to(device=device, dtype=dtype))


class LoraBatch:
    """Which adapter each row of one forward uses: `groups` lists (adapter name, row indices or None for every
    row). `deltas` maps a linear module to its per-adapter LowRank."""

    def __init__(self, deltas: dict[nn.Module, dict[str, LowRank]], groups: list[tuple[str, torch.Tensor | None]],
                 rows_per_batch_row: int = 1):
        self.deltas = deltas
        self.groups = groups
        self.rows_per_batch_row = rows_per_batch_row

    def project(self, linear: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """linear(x) plus each row's adapter delta on this linear, if any."""
        out = linear(x)
        return self._add_deltas(out, x, [linear]) if self.groups else out  # no adapter: nothing else runs

    def project_fused(self, fused, x: torch.Tensor) -> torch.Tensor:
        """A fused projection's output ([a | b | ...] of `fused.linears`) plus each part's delta."""
        out = fused(x)
        return self._add_deltas(out, x, fused.linears) if self.groups else out

    def project_parameter(self, module: nn.Module, parameter: str, x: torch.Tensor, expert: int | None = None,
                          token_rows: torch.Tensor | None = None) -> torch.Tensor:
        """x @ W^T for a bare weight W = module.<parameter> (one expert's slice of a stacked one when `expert` is
        given) plus each row's adapter delta on it. `token_rows`: which rows of this batch x holds (the tokens an
        expert was routed), where the groups' row indices refer to the whole batch."""
        weight = getattr(module, parameter)
        out = F.linear(x, weight if expert is None else weight[expert])
        deltas = self.deltas.get((module, parameter)) if self.groups else None
        if not deltas:
            return out
        for name, rows in self.groups:
            low_rank = deltas.get(name)
            if low_rank is None:
                continue
            if expert is not None:
                low_rank = low_rank.expert(expert)
            if rows is None:
                out = out + low_rank(x).to(out.dtype)
                continue
            if token_rows is not None:  # positions in x of this group's rows
                rows = torch.isin(token_rows, rows).nonzero().squeeze(1)
            out = out.index_add(0, rows, low_rank(x.index_select(0, rows)).to(out.dtype))
        return out

    def _add_deltas(self, out: torch.Tensor, x: torch.Tensor, linears: list[nn.Module]) -> torch.Tensor:
        per_linear = [self.deltas.get(linear) for linear in linears]
        if not any(per_linear):
            return out
        for name, rows in self.groups:
            parts = [deltas.get(name) if deltas else None for deltas in per_linear]
            if not any(parts):
                continue
            inputs = x if rows is None else x.index_select(0, rows)
            pieces = [part(inputs) if part is not None else
                      inputs.new_zeros(*inputs.shape[:-1], linear.out_features)
                      for part, linear in zip(parts, linears)]
            delta = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=-1)
            if rows is None:
                out = out + delta.to(out.dtype)
            else:
                out = out.index_add(0, rows, delta.to(out.dtype))
        return out

    def flattened(self, sequence_length: int) -> LoraBatch:
        """The same selection for activations flattened to [batch * sequence_length, features] (the MoE blocks'
        token rows): batch row r becomes token rows r * L .. r * L + L - 1."""
        if sequence_length == 1:
            return self
        offsets = torch.arange(sequence_length)
        groups = [(name, None if rows is None else
                   (rows[:, None] * sequence_length + offsets.to(rows.device)).reshape(-1))
                  for name, rows in self.groups]
        return LoraBatch(self.deltas, groups)


NO_LORA = LoraBatch({}, [])  # no adapter: every projection is the base linear alone


def _target(root: nn.Module, name: str):
    """A delta's key: the linear module `name`, or (module, parameter name) for a bare parameter's path."""
    try:
        return root.get_submodule(name)
    except AttributeError:
        owner, _, parameter = name.rpartition(".")
        module = root.get_submodule(owner)
        if not isinstance(getattr(module, parameter, None), nn.Parameter):
            raise
        return module, parameter


class LoraAdapters:
    """The adapters a model holds: name → {target: LowRank}, which one is active, and whether enabled.

    A target is a linear module or (module, parameter name) for a bare parameter, found by the assembly from the
    adapter's names: a forward's lookup is a dict hit. `rebind` follows a model whose modules were replaced
    (dequantize()).
    """

    def __init__(self):
        self.by_name: dict[str, dict[str, LowRank]] = {}  # adapter → {module or parameter path: delta}
        self._deltas: dict = {}  # target (module, or (module, parameter name)) → {adapter: delta}
        self.active: str | None = None
        self.enabled = True
        self.load_ids: dict[str, int] = {}  # a fresh id per load: a reloaded name is a different adapter
        self._loads = 0

    def __contains__(self, name: str) -> bool:
        return name in self.by_name

    def names(self) -> list[str]:
        return list(self.by_name)

    def add(self, name: str, deltas: dict[str, LowRank], root: nn.Module) -> None:
        if name in self.by_name:
            raise ValueError(f"an adapter named {name!r} is already loaded; delete_adapter({name!r}) first or "
                             f"choose another adapter_name")
        self.by_name[name] = deltas
        self._loads += 1
        self.load_ids[name] = self._loads
        self.rebind(root)

    def remove(self, name: str, root: nn.Module) -> None:
        self.require(name)
        del self.by_name[name]
        del self.load_ids[name]
        if self.active == name:  # as peft: the first remaining adapter becomes active
            self.active = next(iter(self.by_name), None)
        self.rebind(root)

    def require(self, name: str) -> None:
        if name not in self.by_name:
            loaded = ", ".join(repr(n) for n in self.by_name) or "none"
            raise KeyError(f"no adapter named {name!r} is loaded (loaded: {loaded})")

    def rebind(self, root: nn.Module) -> None:
        """Map each target's module object to its deltas again (after the model's modules changed)."""
        deltas: dict = {}
        for adapter, targets in self.by_name.items():
            for target_name, low_rank in targets.items():
                deltas.setdefault(_target(root, target_name), {})[adapter] = low_rank
        self._deltas = deltas

    def to(self, device=None, dtype=None) -> None:
        self.by_name = {adapter: {module: low_rank.to(device, dtype) for module, low_rank in targets.items()}
                        for adapter, targets in self.by_name.items()}

    def batch(self, row_adapters: list[str | None] | None, batch_size: int, device) -> LoraBatch:
        """The selection of one forward: `row_adapters` names each row's adapter (None: the base model); without
        it every row uses the active adapter, if adapters are enabled."""
        if row_adapters is None:
            if not self.enabled or self.active is None:
                return NO_LORA
            return LoraBatch(self._deltas, [(self.active, None)])
        if len(row_adapters) != batch_size:
            raise ValueError(f"adapter_names has {len(row_adapters)} entries for a batch of {batch_size} rows")
        for name in set(row_adapters) - {None}:
            self.require(name)
        if len(set(row_adapters)) == 1:
            only = row_adapters[0]
            return NO_LORA if only is None else LoraBatch(self._deltas, [(only, None)])
        groups = []
        for name in dict.fromkeys(n for n in row_adapters if n is not None):
            rows = [row for row, adapter in enumerate(row_adapters) if adapter == name]
            groups.append((name, torch.tensor(rows, dtype=torch.long, device=device)))
        return LoraBatch(self._deltas, groups)

    def merge(self, name: str, root: nn.Module) -> None:
        """Add the adapter's dense delta into each target's float weight, in place (fused views follow)."""
        self.require(name)
        weights = {}
        for target_name in self.by_name[name]:
            target = _target(root, target_name)
            if isinstance(target, tuple):  # a bare parameter (stacked experts, a router)
                target = getattr(*target)
                if not target.is_floating_point():
                    raise TypeError(f"{target_name} is {target.dtype}; merging needs float weights")
                weights[target_name] = target
                continue
            if not isinstance(target, nn.Linear):
                raise TypeError(f"{target_name} holds {type(target).__name__} weights; merging needs float weights "
                                f"(call model.dequantize() first, or keep the adapter unmerged: it runs on top of "
                                f"the GGUF block kernels)")
            weights[target_name] = target.weight
        for target_name, low_rank in self.by_name[name].items():
            weight = weights[target_name]
            with torch.no_grad():
                weight.copy_((weight.float() + low_rank.dense().to(weight.device)).to(weight.dtype))
