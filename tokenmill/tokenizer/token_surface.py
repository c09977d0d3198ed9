"""The vocabulary side of `Tokenizer`: special-token attributes, id/token conversion, added tokens, `pad`.

A mixin so `tokenizer.py` stays about encoding and decoding; it expects `self._backend`
(`tokenizers.Tokenizer`), `self._special` (`SpecialTokens`) and `self._lock`.
"""

from __future__ import annotations

from collections.abc import Mapping

from tokenizers import AddedToken

from .batch_encoding import BatchEncoding, to_python
from .encoding_options import pad_row, padded_length, resolve_encoding_options
from .special_tokens import STANDARD_SPECIAL_TOKENS, to_added_token


def _named_token_property(name: str) -> property:
    def get_token(self):
        return self._special.get(name)

    def set_token(self, value):
        self._special.set(name, value)

    return property(get_token, set_token, doc=f"The {name.replace('_', ' ')} as text (None when unset).")


def _named_token_id_property(name: str) -> property:
    def get_id(self):
        token = self._special.get(name)
        return None if token is None else self.convert_tokens_to_ids(token)

    def set_id(self, value):
        self._special.set(name, None if value is None else self.convert_ids_to_tokens(int(value)))

    return property(get_id, set_id, doc=f"The id of the {name.replace('_', ' ')} (None when unset).")


class TokenSurfaceMixin:
    is_fast = True

    def __getattr__(self, name: str):
        """Model-specific named special tokens (e.g. `image_token`, `image_token_id`) read like the standard ones."""
        special = self.__dict__.get("_special")
        base = name.removesuffix("_id")
        if special is not None and base in special.named:
            token = special.get(base)
            return token if base == name or token is None else self.convert_tokens_to_ids(token)
        raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")

    # ---- special tokens ----
    @property
    def special_tokens_map(self) -> dict[str, str]:
        return self._special.as_map()

    @property
    def extra_special_tokens(self) -> list[str]:
        return self._special.extra_texts()

    @property
    def all_special_tokens(self) -> list[str]:
        return self._special.all_texts()

    @property
    def all_special_ids(self) -> list[int]:
        return self.convert_tokens_to_ids(self.all_special_tokens)

    def add_special_tokens(self, special_tokens_dict: dict, replace_extra_special_tokens: bool = True) -> int:
        """Set named special tokens (and extra ones); tokens missing from the vocabulary are added. Returns how many."""
        special_tokens_dict = dict(special_tokens_dict or {})
        if "additional_special_tokens" in special_tokens_dict and not special_tokens_dict.get("extra_special_tokens"):
            special_tokens_dict["extra_special_tokens"] = special_tokens_dict.pop("additional_special_tokens")
        allowed = set(self._special.names()) | {"extra_special_tokens"}
        to_add: list[AddedToken] = []
        for key, value in special_tokens_dict.items():
            if key not in allowed:
                raise ValueError(f"{key!r} is not a special token name; use one of {sorted(allowed)}")
            if key == "extra_special_tokens":
                tokens = [to_added_token(token) for token in value
                          if replace_extra_special_tokens or str(token) not in self.extra_special_tokens]
                if replace_extra_special_tokens and tokens:
                    self._special.extra = list(tokens)
                else:
                    self._special.extra.extend(tokens)
                to_add.extend(tokens)
            else:
                token = to_added_token(value)
                self._special.set(key, token)
                to_add.append(token)
        return self.add_tokens(to_add, special_tokens=True)

    # ---- vocabulary ----
    @property
    def backend_tokenizer(self):
        return self._backend

    @property
    def vocab_size(self) -> int:
        """Size of the base vocabulary, without added tokens."""
        return self._backend.get_vocab_size(with_added_tokens=False)

    def __len__(self) -> int:
        return self._backend.get_vocab_size(with_added_tokens=True)

    def __bool__(self) -> bool:
        return True

    def get_vocab(self) -> dict[str, int]:
        return self._backend.get_vocab(with_added_tokens=True)

    @property
    def vocab(self) -> dict[str, int]:
        return self.get_vocab()

    @property
    def added_tokens_decoder(self) -> dict[int, AddedToken]:
        return self._backend.get_added_tokens_decoder()

    @property
    def added_tokens_encoder(self) -> dict[str, int]:
        return {token.content: index for index, token in sorted(self.added_tokens_decoder.items())}

    def get_added_vocab(self) -> dict[str, int]:
        return self.added_tokens_encoder

    def add_tokens(self, new_tokens, special_tokens: bool = False) -> int:
        """Add tokens (str, `tokenizers.AddedToken` or dict with 'content') that are never split; returns the count
        of new ones."""
        if not new_tokens:
            return 0
        if isinstance(new_tokens, (str, AddedToken, Mapping)):
            new_tokens = [new_tokens]
        tokens = [token if isinstance(token, str) else to_added_token(token, special=special_tokens)
                  for token in new_tokens]
        with self._lock:
            if special_tokens:
                return self._backend.add_special_tokens(tokens)
            return self._backend.add_tokens(tokens)

    def convert_tokens_to_ids(self, tokens):
        """Id of a token (or ids of a list of tokens); unknown tokens map to the unk id (None without one)."""
        if isinstance(tokens, str):
            return self._token_to_id(tokens)
        return [self._token_to_id(token) for token in tokens]

    def _token_to_id(self, token: str) -> int | None:
        index = self._backend.token_to_id(token)
        if index is not None:
            return index
        unk = self._special.get("unk_token")
        return None if unk is None else self._backend.token_to_id(unk)

    def convert_ids_to_tokens(self, ids, skip_special_tokens: bool = False):
        """Token text of an id (or of each id in a sequence), optionally leaving out special tokens."""
        ids = to_python(ids)
        if isinstance(ids, int):
            return self._backend.id_to_token(ids)
        skipped = set(self.all_special_ids) if skip_special_tokens else set()
        return [self._backend.id_to_token(int(index)) for index in ids if int(index) not in skipped]

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        decoder = self._backend.decoder
        return decoder.decode(tokens) if decoder is not None else " ".join(tokens)

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        return self._backend.num_special_tokens_to_add(pair)

    def get_special_tokens_mask(self, token_ids_0, token_ids_1=None, already_has_special_tokens: bool = False):
        """1 where an (already formatted) sequence holds a special token, 0 elsewhere."""
        if not already_has_special_tokens or token_ids_1 is not None:
            raise NotImplementedError("only already_has_special_tokens=True with a single sequence is supported")
        special_ids = set(self.all_special_ids)
        return [1 if int(index) in special_ids else 0 for index in to_python(token_ids_0)]

    # ---- padding already-encoded inputs ----
    def pad(self, encoded_inputs, padding=True, max_length: int | None = None, pad_to_multiple_of: int | None = None,
            padding_side: str | None = None, return_attention_mask: bool | None = None,
            return_tensors=None, verbose: bool = True) -> BatchEncoding:
        """Pad encoded rows (a dict of lists, a list of dicts, or tensors) to a common length."""
        if isinstance(encoded_inputs, (list, tuple)) and encoded_inputs and isinstance(encoded_inputs[0], Mapping):
            encoded_inputs = {key: [row[key] for row in encoded_inputs] for key in encoded_inputs[0].keys()}
        if "input_ids" not in encoded_inputs:
            raise ValueError(f"pad() needs 'input_ids'; got fields {list(encoded_inputs.keys())}")
        first = encoded_inputs["input_ids"]
        if return_tensors is None and type(first).__name__ in ("Tensor", "ndarray"):
            return_tensors = "pt" if type(first).__name__ == "Tensor" else "np"
        fields = {key: to_python(value) for key, value in encoded_inputs.items()}
        options = resolve_encoding_options(padding, None, max_length, pad_to_multiple_of, self.model_max_length,
                                           self.pad_token is not None)
        with_mask = "attention_mask" in self.model_input_names if return_attention_mask is None \
            else return_attention_mask
        single = bool(fields["input_ids"]) and not isinstance(fields["input_ids"][0], list)
        rows = [fields] if single else [{key: value[index] for key, value in fields.items()}
                                        for index in range(len(fields["input_ids"]))]
        length = padded_length([len(row["input_ids"]) for row in rows], options)
        side = padding_side or self.padding_side
        padded = [pad_row(row, length, side, self.pad_token_id, 0, with_mask) if length else
                  _with_mask(row, with_mask) for row in rows]
        if single:
            return BatchEncoding(padded[0], tensor_type=return_tensors)
        merged = {key: [row[key] for row in padded] for key in padded[0]} if padded else {}
        return BatchEncoding(merged, tensor_type=return_tensors)


for _token_name in STANDARD_SPECIAL_TOKENS:
    setattr(TokenSurfaceMixin, _token_name, _named_token_property(_token_name))
    setattr(TokenSurfaceMixin, f"{_token_name}_id", _named_token_id_property(_token_name))


def _with_mask(row: dict, with_mask: bool) -> dict:
    if with_mask and "attention_mask" not in row:
        row["attention_mask"] = [1] * len(row["input_ids"])
    return row


