"""LogitsProcessor (the base class) and LogitsProcessorList (applies a sequence of them).

Re-exported by `tokenmill.generation.logits_process`, which is the public module.
"""

from __future__ import annotations

import inspect

import torch


class LogitsProcessor:
    """Base class: `__call__(input_ids [batch, seq], scores [batch, vocab]) -> processed scores [batch, vocab]`.

    A subclass may declare extra keyword parameters after `scores`; LogitsProcessorList passes them from its own
    keyword arguments (and raises if a required one is missing).
    """

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(
            f"{type(self).__name__} is an abstract class. Only classes inheriting this class can be called."
        )


_SIGNATURES: dict = {}


def _extra_parameters(processor) -> tuple[tuple[str, ...], tuple[str, ...], bool]:
    """(required extra parameter names, all extra parameter names, whether it takes **kwargs), where "extra"
    means declared after (input_ids, scores). Cached per class."""
    key = type(processor) if not inspect.isfunction(processor) else processor
    if key in _SIGNATURES:
        return _SIGNATURES[key]
    call = processor if inspect.isfunction(processor) else processor.__call__
    try:
        parameters = list(inspect.signature(call).parameters.values())
    except (TypeError, ValueError):
        parameters = []
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    extra = positional[2:] + [p for p in parameters if p.kind == p.KEYWORD_ONLY]
    result = (
        tuple(p.name for p in extra if p.default is p.empty),
        tuple(p.name for p in extra),
        any(p.kind == p.VAR_KEYWORD for p in parameters),
    )
    _SIGNATURES[key] = result
    return result


class LogitsProcessorList(list):
    """A list of processors; calling it applies each in order. Extra keyword arguments reach only the
    processors whose `__call__` declares parameters beyond (input_ids, scores)."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        for processor in self:
            required, names, var_keyword = _extra_parameters(processor)
            if not names and not var_keyword:
                scores = processor(input_ids, scores)
                continue
            missing = [name for name in required if name not in kwargs]
            if missing:
                raise ValueError(
                    f"Make sure that all the required parameters {missing} for {type(processor).__name__} "
                    "are passed to the logits processor."
                )
            passed = kwargs if var_keyword else {k: v for k, v in kwargs.items() if k in names}
            scores = processor(input_ids, scores, **passed)
        return scores
