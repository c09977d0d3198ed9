"""Mistral: Llama's layout with every layer attending through a sliding window (when the config sets one)."""

from __future__ import annotations

from .family import Family, RMSPreNormLM, uniform_windows


class MistralForCausalLM(RMSPreNormLM):
    layer_windows = staticmethod(uniform_windows)


FAMILY = Family("mistral", MistralForCausalLM)
