"""Resolving the padding / truncation arguments of a tokenizer call, with transformers' rules."""

from __future__ import annotations

from dataclasses import dataclass

VERY_LARGE_INTEGER = int(1e30)  # model_max_length of a model with no stated limit
LARGE_INTEGER = int(1e20)

PADDING_STRATEGIES = ("longest", "max_length", "do_not_pad")
TRUNCATION_STRATEGIES = ("longest_first", "only_first", "only_second", "do_not_truncate")


@dataclass(frozen=True)
class EncodingOptions:
    padding: str  # one of PADDING_STRATEGIES
    truncation: str  # one of TRUNCATION_STRATEGIES
    max_length: int | None
    pad_to_multiple_of: int | None


def _padding_strategy(padding) -> str:
    padding = getattr(padding, "value", padding)
    if padding is True:
        return "longest"
    if padding is False or padding is None:
        return "do_not_pad"
    if padding not in PADDING_STRATEGIES:
        raise ValueError(f"padding must be a bool or one of {PADDING_STRATEGIES}, got {padding!r}")
    return padding


def _truncation_strategy(truncation) -> str:
    truncation = getattr(truncation, "value", truncation)
    if truncation is True:
        return "longest_first"
    if truncation is False or truncation is None:
        return "do_not_truncate"
    if truncation not in TRUNCATION_STRATEGIES:
        raise ValueError(f"truncation must be a bool or one of {TRUNCATION_STRATEGIES}, got {truncation!r}")
    return truncation


def resolve_encoding_options(
    padding, truncation, max_length: int | None, pad_to_multiple_of: int | None,
    model_max_length: int, has_pad_token: bool,
) -> EncodingOptions:
    """transformers' rules: a bare max_length truncates; no max_length falls back to model_max_length if it is real."""
    if max_length is not None and padding is False and truncation is None:
        truncation = "longest_first"
    padding_strategy = _padding_strategy(padding)
    truncation_strategy = _truncation_strategy(truncation)
    if max_length is None:
        has_real_limit = model_max_length <= LARGE_INTEGER
        if padding_strategy == "max_length":
            if has_real_limit:
                max_length = model_max_length
            else:
                padding_strategy = "do_not_pad"
        if truncation_strategy != "do_not_truncate":
            if has_real_limit:
                max_length = model_max_length
            else:
                truncation_strategy = "do_not_truncate"
    if padding_strategy != "do_not_pad" and not has_pad_token:
        raise ValueError(
            "asked to pad but the tokenizer has no padding token; set one (tokenizer.pad_token = tokenizer.eos_token) "
            "or add one with tokenizer.add_special_tokens({'pad_token': '[PAD]'})"
        )
    if (
        truncation_strategy != "do_not_truncate" and padding_strategy != "do_not_pad"
        and pad_to_multiple_of is not None and max_length is not None and max_length % pad_to_multiple_of != 0
    ):
        raise ValueError(
            f"truncation length ({max_length}) is not a multiple of pad_to_multiple_of ({pad_to_multiple_of})"
        )
    return EncodingOptions(padding_strategy, truncation_strategy, max_length, pad_to_multiple_of)


def pad_row(row: dict, length: int, side: str, pad_id: int, pad_type_id: int, with_attention_mask: bool) -> dict:
    """Pad one encoded row (lists) to `length` on `side`, transformers' `_pad` for already-encoded inputs."""
    ids = row["input_ids"]
    if with_attention_mask and "attention_mask" not in row:
        row["attention_mask"] = [1] * len(ids)
    missing = length - len(ids)
    if missing <= 0:
        return row
    fills = {"input_ids": pad_id, "attention_mask": 0, "token_type_ids": pad_type_id, "special_tokens_mask": 1}
    for key, fill in fills.items():
        if key in row and (key != "attention_mask" or with_attention_mask):
            padding = [fill] * missing
            row[key] = padding + list(row[key]) if side == "left" else list(row[key]) + padding
    return row


def padded_length(lengths: list[int], options: EncodingOptions) -> int | None:
    """The length every row is padded to, or None when nothing is padded."""
    if options.padding == "do_not_pad":
        return None
    target = max(lengths, default=0) if options.padding == "longest" else options.max_length
    multiple = options.pad_to_multiple_of
    if target is not None and multiple and target % multiple:
        target = (target // multiple + 1) * multiple
    return target
