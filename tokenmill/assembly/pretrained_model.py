"""The classes users hold: each family's model class with `generate` and `save_pretrained` composed on.

A model file knows nothing of generation or file formats; the assembly, which sits above both, adds them when it
builds a model, so `model.generate(...)` and `model.save_pretrained(...)` work as in transformers.
"""

from __future__ import annotations

from functools import cache

from ..generation.generate import GenerationMixin
from ..models.registry import model_class
from .adapters import AdapterMixin
from .save import save_pretrained


class PretrainedModelMixin(GenerationMixin, AdapterMixin):
    family_class: type  # the models/<family>.py class this one composes

    def save_pretrained(self, save_directory, max_shard_size: int | str = "5GB", **unused) -> list[str]:
        """Write a Hugging Face folder (config.json, safetensors, generation_config.json)."""
        return save_pretrained(self, save_directory, max_shard_size=max_shard_size)

    def __reduce_ex__(self, protocol):
        # pickle finds classes by name, and the composed class's name is the family class's: rebuild from that
        _, _, *state = super().__reduce_ex__(protocol)
        return (_bare_instance, (self.family_class,), *state)


@cache
def with_pretrained_methods(family_class: type) -> type:
    """The family's class (same name and module) with generate() and save_pretrained(); one class per family."""
    namespace = {"__module__": family_class.__module__, "__qualname__": family_class.__qualname__,
                 "__doc__": family_class.__doc__, "family_class": family_class}
    return type(family_class.__name__, (family_class, PretrainedModelMixin), namespace)


def pretrained_class(model_type: str) -> type:
    return with_pretrained_methods(model_class(model_type))


def _bare_instance(family_class: type):
    """An uninitialised instance of the composed class; pickle and copy then restore its state."""
    composed = with_pretrained_methods(family_class)
    return composed.__new__(composed)
