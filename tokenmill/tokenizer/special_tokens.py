"""Special-token bookkeeping: the named tokens (bos, eos, ... and model-specific ones) and the extra list."""

from __future__ import annotations

from collections.abc import Mapping

from tokenizers import AddedToken

STANDARD_SPECIAL_TOKENS = (
    "bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token",
)
_ADDED_TOKEN_FIELDS = ("content", "single_word", "lstrip", "rstrip", "normalized", "special")


def is_token_value(value) -> bool:
    """A string, a `tokenizers.AddedToken`, or a serialized AddedToken dict (with a `content`)."""
    return isinstance(value, (str, AddedToken)) or (isinstance(value, Mapping) and "content" in value)


def token_text(value) -> str:
    """The token's text, whichever form it comes in."""
    if isinstance(value, Mapping):
        return str(value["content"])
    return str(value)


def to_added_token(value, special: bool = True) -> AddedToken:
    """An `AddedToken` from a str (special unless told otherwise, never normalized), dict or AddedToken."""
    if isinstance(value, AddedToken):
        return value
    if isinstance(value, Mapping):
        fields = {key: value[key] for key in _ADDED_TOKEN_FIELDS if key in value}
        fields.setdefault("special", special)
        return AddedToken(**fields)
    if isinstance(value, str):
        return AddedToken(value, special=special, normalized=not special)
    raise TypeError(f"a token must be a str, tokenizers.AddedToken or dict with 'content'; got {type(value).__name__}")


def added_token_to_dict(token: AddedToken) -> dict:
    """The JSON form transformers writes in `added_tokens_decoder`."""
    return {field: getattr(token, field) for field in _ADDED_TOKEN_FIELDS}


class SpecialTokens:
    """Named special tokens (standard ones first, then model-specific `*_token` names) and extra special tokens."""

    def __init__(self):
        self.named: dict[str, str | AddedToken | None] = dict.fromkeys(STANDARD_SPECIAL_TOKENS)
        self.extra: list[str | AddedToken] = []

    @classmethod
    def from_config(cls, config: Mapping) -> "SpecialTokens":
        """Read `*_token` keys and `extra_special_tokens` (list, or dict of named tokens) from a tokenizer config."""
        tokens = cls()
        for key, value in config.items():
            if key.endswith("_token") and value is not None and is_token_value(value):
                tokens.set(key, value)
        extra = config.get("extra_special_tokens")
        if isinstance(extra, Mapping):
            for key, value in extra.items():
                tokens.set(key, value)
        elif isinstance(extra, (list, tuple)):
            tokens.extra = [_stored(value) for value in extra]
        return tokens

    def names(self) -> list[str]:
        return list(self.named)

    def get(self, name: str) -> str | None:
        value = self.named.get(name)
        return None if value is None else token_text(value)

    def set(self, name: str, value) -> None:
        if value is not None and not is_token_value(value):
            raise TypeError(f"{name} must be a str or AddedToken, got {type(value).__name__}")
        self.named[name] = None if value is None else _stored(value)

    def as_map(self) -> dict[str, str]:
        """name -> text for the named tokens that are set (transformers' `special_tokens_map`)."""
        return {name: token_text(value) for name, value in self.named.items() if value is not None}

    def extra_texts(self) -> list[str]:
        return [token_text(value) for value in self.extra]

    def all_texts(self) -> list[str]:
        """Every special token text, named then extra, without repeats."""
        seen: dict[str, None] = {}
        for value in [*self.named.values(), *self.extra]:
            if value is not None:
                seen.setdefault(token_text(value), None)
        return list(seen)

    def as_added_tokens(self) -> list[AddedToken]:
        """Named and extra tokens as special `AddedToken`s (keeping strip/normalize flags when given)."""
        tokens = []
        for value in [*self.named.values(), *self.extra]:
            if value is None:
                continue
            token = to_added_token(value)
            if not token.special:
                token.special = True
            tokens.append(token)
        return tokens


def _stored(value):
    """Keep AddedTokens (their flags matter when adding to the backend), plain text otherwise."""
    if isinstance(value, Mapping):
        return to_added_token(value)
    return value
