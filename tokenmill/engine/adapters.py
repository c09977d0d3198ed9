"""LoRA adapters in the engine: checking a request's adapter, the prefix-cache root it computes under, and
loading / unloading adapters between steps (never while a request still uses one)."""

from __future__ import annotations

from dataclasses import dataclass


class UnknownAdapterError(ValueError):
    """A request names an adapter the model does not hold."""


class AdapterInUseError(ValueError):
    """An adapter cannot be unloaded while requests still run through it."""


@dataclass(frozen=True)
class LoRARequest:
    """vLLM's way to name an adapter for `LLM.generate(..., lora_request=)`: loaded from `lora_path` on first use."""

    lora_name: str
    lora_int_id: int = 0  # vLLM's numeric id; names identify adapters here
    lora_path: str = ""


def adapter_of_request(engine, request: LoRARequest | None) -> str | None:
    """The adapter name a LoRARequest selects, loading its folder into the engine's model the first time."""
    if request is None:
        return None
    if request.lora_name not in engine.runner.model.lora_adapters:
        engine.load_adapter(request.lora_name, request.lora_path)
    return request.lora_name


def check_adapter(model, name: str | None) -> None:
    adapters = model.lora_adapters
    if name is not None and name not in adapters:
        loaded = ", ".join(repr(n) for n in adapters.names()) or "none"
        raise UnknownAdapterError(f"no LoRA adapter named {name!r} is loaded (loaded: {loaded})")


def prefix_root(model, name: str | None) -> int | None:
    """The root of a sequence's prefix-cache hash chain: None for the base model, else one per loaded adapter
    (a reloaded name gets a new one), so keys/values computed under another adapter are never reused."""
    if name is None:
        return None
    return hash(("lora", name, model.lora_adapters.load_ids[name]))


def load_adapter(model, name: str, path) -> None:
    """Load a PEFT folder as `name`; the model's active adapter is left as it was (requests name theirs)."""
    adapters = model.lora_adapters
    active, enabled = adapters.active, adapters.enabled
    model.load_adapter(path, adapter_name=name)
    adapters.active, adapters.enabled = active, enabled


def unload_adapter(model, name: str, in_use: int) -> None:
    """Remove `name`; AdapterInUseError while `in_use` unfinished requests still run through it."""
    check_adapter(model, name)
    if in_use:
        raise AdapterInUseError(f"the LoRA adapter {name!r} is used by {in_use} unfinished request(s); unload it "
                                f"when they have finished")
    model.delete_adapter(name)
