"""LoRA adapters on a built model: PEFT's module names mapped onto the family's modules, and the model methods
transformers users call (`load_adapter`, `set_adapter`, `disable_adapters`, `enable_adapters`,
`active_adapters`, `delete_adapter`) plus peft's `merge_and_unload`.

PEFT names the base checkpoint's modules; a family's `sanitize` already maps that checkpoint's weights onto its
own modules (renames, q/k/v or gate/up splits, GPT-2's transposed Conv1D). The adapter's B factor has the
target weight's rows, so passing B through `sanitize` as if it were that weight yields each tokenmill module's
B rows; A is shared by the pieces. Every piece is then checked against the module it lands on.

Mixture-of-experts weights are bare parameters (stacked experts [E, out, in], the router's [E, hidden]), which
peft targets with `target_parameters`: it wraps the module once per targeted parameter, in the order the module
registers them, and saves each wrapper's factors one `.base_layer` deeper than the next, so the innermost is the
first. Stacked factors hold every expert's: A [E * r, in] expert-major, B [out, r * E] expert-minor; expert e's
delta is B[:, e::E] @ A[e * r:(e + 1) * r] times the scale (peft's ParamWrapper.get_delta_weight).
"""

from __future__ import annotations

from pathlib import Path

import re

import torch
from torch import nn

from ..layers.lora import LowRank
from ..layers.quantized_linear import QuantizedLinear
from ..loading.peft import AdapterError, LoraModule, PeftLora, module_scale, read_peft_lora

DEFAULT_ADAPTER = "default"  # transformers' and peft's name for an adapter loaded without one
_MOE_PARTS = ("experts", "block_sparse_moe.gate", "mlp.gate", "router")
_WRAPPERS = re.compile(r"(\.base_layer)+$")


def _refuse_moe(module_path: str, where: Path) -> None:
    """A module-style target inside a mixture-of-experts block: the layout of adapters trained on transformers 4's
    unfused experts (one Linear per expert, `experts.<e>.w1`, a Linear router), which peft cannot make any more
    and no oracle checks here."""
    if ".experts." in f".{module_path}." or any(module_path.endswith(part) for part in _MOE_PARTS):
        raise AdapterError(f"{where}: target {module_path!r}: LoRA on mixture-of-experts experts or routers as "
                           f"modules (one Linear per expert, as transformers 4 had) is not supported; tokenmill "
                           f"applies expert and router LoRA made with peft's target_parameters on the stacked "
                           f"parameters (e.g. target_parameters=['experts.gate_up_proj', 'experts.down_proj', "
                           f"'mlp.gate.weight'])")


def _matches(path: str, patterns) -> bool:
    """peft's target_parameters rule: the parameter's path is a pattern or ends with '.' + a pattern."""
    return any(path == pattern or path.endswith(f".{pattern}") for pattern in patterns)


def _parameter_targets(model, lora: PeftLora) -> dict[str, str]:
    """{adapter module key: the model parameter it adapts} for the keys on modules with bare-parameter targets."""
    by_module: dict[str, list[str]] = {}
    for key in lora.modules:
        owner = _WRAPPERS.sub("", key)
        try:
            module = model.get_submodule(owner)
        except AttributeError:
            continue
        if hasattr(module, "lora_parameters"):
            by_module.setdefault(owner, []).append(key)
    wanted = lora.config.get("target_parameters") or []
    targets = {}
    for owner, keys in by_module.items():
        named = [name for name in model.get_submodule(owner).lora_parameters if _matches(f"{owner}.{name}", wanted)]
        depths = sorted(key.count(".base_layer") for key in keys)
        if not named or depths != list(range(len(named))):
            raise AdapterError(f"{lora.path}: {owner}: {len(keys)} LoRA factor pair(s) where target_parameters "
                               f"({wanted}) names {len(named)} of its parameters ({named}); an adapter for another "
                               f"architecture or peft version?")
        for key in keys:  # the innermost wrapper (deepest key) is the first parameter peft wrapped
            targets[key] = f"{owner}.{named[len(named) - 1 - key.count('.base_layer')]}"
    return targets


def _parameter_delta(model, lora: PeftLora, parameter: str, factors: LoraModule) -> LowRank:
    """peft's ParamWrapper factors as a LowRank on the parameter (per expert on a stacked one), scale folded in."""
    weight = model.get_parameter(parameter)
    a, b = factors.a, factors.b
    experts = weight.shape[0] if weight.dim() == 3 else 1
    out_features, in_features = weight.shape[-2:]
    if a.shape[0] % experts or a.shape[1] != in_features or b.shape[0] != out_features:
        raise AdapterError(f"{lora.path}: {parameter}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} do not "
                           f"fit the model's {tuple(weight.shape)} (an adapter for another model size?)")
    rank = a.shape[0] // experts
    scale = module_scale(lora.config, parameter, rank)
    if weight.dim() == 3:
        a = a.reshape(experts, rank, in_features)
        b = b.reshape(out_features, rank, experts).permute(2, 0, 1)
    dtype, device = model.execution_policy.dtype, model.device
    return LowRank(a.to(device=device, dtype=dtype), (b.double() * scale).to(device=device, dtype=dtype).contiguous())


def _pieces(model, module_path: str, b_weight: torch.Tensor, where: Path) -> dict[str, torch.Tensor]:
    """{tokenmill module name: its rows of B}, through the family's checkpoint-name mapping."""
    try:
        mapped = type(model).sanitize(model.config, {f"{module_path}.weight": b_weight})
    except (ValueError, KeyError) as error:
        raise AdapterError(f"{where}: target {module_path!r} does not map onto this model ({error})") from None
    if not mapped or any(not name.endswith(".weight") for name in mapped):
        raise AdapterError(f"{where}: target {module_path!r} has no counterpart in this {model.config.model_type} "
                           f"model that LoRA can apply to")
    return {name.removesuffix(".weight"): rows for name, rows in mapped.items()}


def _check_target(model, name: str, module_path: str, a: torch.Tensor, b: torch.Tensor, where: Path) -> None:
    parent_name, _, attribute = name.rpartition(".")
    try:
        module, parent = model.get_submodule(name), model.get_submodule(parent_name)
    except AttributeError:
        raise AdapterError(f"{where}: target {module_path!r} ({name}) is not a module of this "
                           f"{model.config.model_type} model (an adapter for another architecture?)") from None
    if attribute not in getattr(parent, "lora_targets", ()) or not isinstance(module, (nn.Linear, QuantizedLinear)):
        raise AdapterError(f"{where}: target {module_path!r} is not a projection LoRA applies to here (attention "
                           f"and MLP projections only; embeddings and lm_head are not)")
    if (module.out_features, module.in_features) != (b.shape[0], a.shape[1]):
        raise AdapterError(f"{where}: target {module_path!r}: the adapter's delta is {b.shape[0]} x {a.shape[1]}, "
                           f"the model's {name} is {module.out_features} x {module.in_features} (an adapter for "
                           f"another model size?)")


def adapter_deltas(model, lora: PeftLora) -> dict[str, LowRank]:
    """Each target module's LowRank, in the model's activation dtype and on its device."""
    dtype, device = model.execution_policy.dtype, model.device
    parameters = _parameter_targets(model, lora)
    deltas = {parameters[key]: _parameter_delta(model, lora, parameters[key], lora.modules[key])
              for key in parameters}
    for module_path, factors in lora.modules.items():
        if module_path in parameters:
            continue
        _refuse_moe(module_path, lora.path)
        b_layout = factors.b.T if lora.fan_in_fan_out else factors.b  # sanitize expects the checkpoint's layout
        for name, b_rows in _pieces(model, module_path, b_layout, lora.path).items():
            _check_target(model, name, module_path, factors.a, b_rows, lora.path)
            scaled = b_rows.double() * factors.scale
            deltas[name] = LowRank(factors.a.to(device=device, dtype=dtype),
                                   scaled.to(device=device, dtype=dtype).contiguous())
    return deltas


def _names(adapter_names) -> list[str]:
    return [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)


class AdapterMixin:
    """The adapter methods composed onto each family's class (see pretrained_model.py)."""

    def load_adapter(self, peft_model_id=None, adapter_name: str | None = None, *, is_trainable: bool = False,
                     peft_config=None, adapter_state_dict=None, **unused):
        """Load a PEFT LoRA folder under `adapter_name` ("default"); the first adapter loaded becomes active."""
        if is_trainable or peft_config is not None or adapter_state_dict is not None:
            raise NotImplementedError("tokenmill loads saved PEFT LoRA folders for inference only (no "
                                      "is_trainable, peft_config or adapter_state_dict)")
        if peft_model_id is None or not Path(peft_model_id).is_dir():
            raise AdapterError(f"{peft_model_id!r}: not a local adapter folder (holding adapter_config.json and "
                               f"adapter_model.safetensors); download Hub adapters first (huggingface-cli download)")
        name = adapter_name or DEFAULT_ADAPTER
        adapters = self.lora_adapters
        adapters.add(name, adapter_deltas(self, read_peft_lora(peft_model_id)), self)
        if adapters.active is None:
            adapters.active = name
        return self

    def set_adapter(self, adapter_name: str) -> None:
        """Run every later forward through `adapter_name` (and enable adapters)."""
        if not isinstance(adapter_name, str):
            raise ValueError("tokenmill applies one adapter per forward; pass one adapter name")
        self.lora_adapters.require(adapter_name)
        self.lora_adapters.active = adapter_name
        self.lora_adapters.enabled = True

    def disable_adapters(self) -> None:
        self.lora_adapters.enabled = False

    def enable_adapters(self) -> None:
        self.lora_adapters.enabled = True

    def active_adapters(self) -> list[str]:
        adapters = self.lora_adapters
        return [adapters.active] if adapters.enabled and adapters.active is not None else []

    def active_adapter(self) -> str | None:
        return self.lora_adapters.active

    def delete_adapter(self, adapter_names) -> None:
        for name in _names(adapter_names):
            self.lora_adapters.remove(name, self)

    def merge_and_unload(self, adapter_names=None):
        """Add the adapters' deltas (default: the active one) into the float weights, then unload every adapter
        (as peft's). A model kept in GGUF blocks is refused: dequantize() it first, or keep the adapter unmerged."""
        adapters = self.lora_adapters
        names = _names(adapter_names) if adapter_names is not None else [n for n in [adapters.active] if n]
        if not names:
            raise ValueError("no adapter to merge: load_adapter() first, or name one in adapter_names")
        for name in names:
            adapters.merge(name, self)
        for name in adapters.names():
            adapters.remove(name, self)
        return self
