"""`Tokenizer`: transformers' fast-tokenizer surface (PreTrainedTokenizerFast / TokenizersBackend) over `tokenizers`.

The `tokenizers.Tokenizer` backend does the text work (normalize, pre-tokenize, model, post-process,
decode); this class holds what transformers keeps beside it (special tokens, padding side,
model_max_length, chat template) and reproduces its rules for special tokens, padding and truncation.
"""

from __future__ import annotations

import copy
import threading
from pathlib import Path

import tokenizers
from tokenizers import processors

from ..errors import CheckpointError
from ..loading.resolve import resolve_source
from .batch_encoding import BatchEncoding, to_python
from .chat_api import ChatTemplateMixin
from .encoding_options import VERY_LARGE_INTEGER, EncodingOptions, resolve_encoding_options
from .special_tokens import STANDARD_SPECIAL_TOKENS, SpecialTokens, added_token_to_dict, to_added_token
from .tokenizer_files import chat_template_for_config, chat_template_from_config, read_folder, write_folder
from .token_surface import TokenSurfaceMixin

_SIDES = ("left", "right")
# Config keys consumed into attributes (the rest of the config is kept and written back as is).
_ATTRIBUTE_KEYS = ("model_max_length", "padding_side", "truncation_side", "clean_up_tokenization_spaces",
                   "split_special_tokens", "chat_template", "model_input_names", "add_bos_token", "add_eos_token",
                   "added_tokens_decoder", "extra_special_tokens", "additional_special_tokens")


def _merged_config(tokenizer_config: dict | None, special_tokens_map: dict | None) -> dict:
    """A private copy of the config, with special_tokens_map.json's entries (the legacy source) laid over it."""
    config = copy.deepcopy(dict(tokenizer_config or {}))
    if "additional_special_tokens" in config and not config.get("extra_special_tokens"):
        config["extra_special_tokens"] = config.pop("additional_special_tokens")
    for key, value in (special_tokens_map or {}).items():
        config["extra_special_tokens" if key == "additional_special_tokens" else key] = value
    return config


def _raise_if_not_unicode(inputs) -> None:
    """A clear error for text the backend cannot take: lone surrogates, which is how Python keeps broken UTF-8."""
    pending = [inputs]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as error:
                raise ValueError(f"the text is not valid Unicode: {error.object[error.start:error.end]!r} at "
                                 f"character {error.start} (broken UTF-8 decoded with surrogateescape?)") from None
        elif isinstance(item, (list, tuple)):
            pending.extend(item)


def _side(value: str, what: str) -> str:
    if value not in _SIDES:
        raise ValueError(f"{what} must be 'left' or 'right', got {value!r}")
    return value


class Tokenizer(TokenSurfaceMixin, ChatTemplateMixin):
    """A fast tokenizer with transformers' API; build it with `from_folder`, `from_gguf` or from a backend."""

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        tokenizer_config: dict | None = None,
        special_tokens_map: dict | None = None,
        padding_side: str | None = None,
        truncation_side: str | None = None,
        name_or_path: str = "",
    ):
        config = _merged_config(tokenizer_config, special_tokens_map)
        self._backend = backend
        self._lock = threading.RLock()
        self.name_or_path = name_or_path
        self._special = SpecialTokens.from_config(config)
        self._read_settings(config, padding_side, truncation_side)
        self._prepare_backend(config)

    def _read_settings(self, config: dict, padding_side: str | None, truncation_side: str | None) -> None:
        """The attributes transformers reads from tokenizer_config.json (arguments win over the config)."""
        self.model_max_length = int(config.get("model_max_length") or VERY_LARGE_INTEGER)
        self.padding_side = _side(padding_side or config.get("padding_side") or self._json_padding_side(),
                                  "padding_side")
        self.truncation_side = _side(truncation_side or config.get("truncation_side")
                                     or self._json_truncation_side(), "truncation_side")
        self._explicit_padding_side = padding_side is not None or "padding_side" in config
        self._explicit_truncation_side = truncation_side is not None or "truncation_side" in config
        self.clean_up_tokenization_spaces = bool(config.get("clean_up_tokenization_spaces", False))
        self._clean_up_bpe_anyway = bool(config.get(
            "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output", False))
        self.split_special_tokens = bool(config.get("split_special_tokens", False))
        self.chat_template = chat_template_from_config(config.get("chat_template"))
        self.model_input_names = list(config.get("model_input_names") or ["input_ids", "attention_mask"])
        self._add_bos_token = bool(config.get("add_bos_token", False))
        self._add_eos_token = bool(config.get("add_eos_token", False))
        self._extra_config = {key: value for key, value in config.items()
                              if key not in _ATTRIBUTE_KEYS and not key.endswith("_token")}

    def _prepare_backend(self, config: dict) -> None:
        """Clear padding/truncation baked into tokenizer.json (each call sets its own), register added and special
        tokens, and rebuild the post-processor when the config says whether to add bos/eos."""
        backend = self._backend
        if self._special.get("pad_token") is None and backend.padding is not None:
            self._special.set("pad_token", backend.padding["pad_token"])
        backend.no_padding()
        backend.no_truncation()
        backend.encode_special_tokens = self.split_special_tokens
        self._register_added_tokens(config.get("added_tokens_decoder") or {})
        if "add_bos_token" in config or "add_eos_token" in config or backend.post_processor is None:
            self._rebuild_post_processor()

    def _json_padding_side(self) -> str:
        return (self._backend.padding or {}).get("direction", "right")

    def _json_truncation_side(self) -> str:
        return (self._backend.truncation or {}).get("direction", "right")

    def _register_added_tokens(self, added_tokens_decoder: dict) -> None:
        """Make the config's added tokens and every special token an added token of the backend, like transformers."""
        from_config = [to_added_token(token, special=False) for _, token in
                       sorted(added_tokens_decoder.items(), key=lambda item: int(item[0]))]
        known = {token.content for token in self._backend.get_added_tokens_decoder().values()}
        known.update(token.content for token in from_config)
        missing_special = [token for token in self._special.as_added_tokens() if token.content not in known]
        if from_config or missing_special:
            self._backend.add_tokens(from_config + missing_special)

    # ---- loading and saving ----
    @classmethod
    def from_folder(cls, folder, padding_side: str | None = None) -> "Tokenizer":
        """Load tokenizer.json + tokenizer_config.json (+ special_tokens_map.json, chat templates) from a folder."""
        backend, config, special_tokens_map = read_folder(Path(folder))
        return cls(backend, config, special_tokens_map, padding_side=padding_side, name_or_path=str(folder))

    @classmethod
    def from_gguf(cls, path, padding_side: str | None = None) -> "Tokenizer":
        """The tokenizer stored in a GGUF file's metadata (vocabulary, merges, special ids, chat template)."""
        from ..loading.gguf import GGUFCheckpoint

        checkpoint = GGUFCheckpoint(path)
        return cls(checkpoint.tokenizer(), checkpoint.tokenizer_config(), padding_side=padding_side,
                   name_or_path=str(path))

    @classmethod
    def from_pretrained(cls, source, gguf_file: str | None = None, padding_side: str | None = None, **hub_kwargs):
        """Same as `tokenmill.AutoTokenizer.from_pretrained` (folder, GGUF file or Hub id)."""
        resolved = resolve_source(source, gguf_file, **hub_kwargs)
        if resolved.is_gguf:
            return cls.from_gguf(resolved.gguf_path, padding_side=padding_side)
        if not (resolved.folder / "tokenizer.json").is_file():
            raise CheckpointError(resolved.folder, "no tokenizer.json (tokenmill reads fast-tokenizer files)")
        return cls.from_folder(resolved.folder, padding_side=padding_side)

    def save_pretrained(self, folder) -> list[str]:
        """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json; transformers loads them back."""
        config = copy.deepcopy(self._extra_config)
        config.update(self._special.as_map())
        config["model_max_length"] = self.model_max_length
        if self._explicit_padding_side:
            config["padding_side"] = self.padding_side
        if self._explicit_truncation_side:
            config["truncation_side"] = self.truncation_side
        config["clean_up_tokenization_spaces"] = self.clean_up_tokenization_spaces
        config["split_special_tokens"] = self.split_special_tokens
        if self.model_input_names != ["input_ids", "attention_mask"]:
            config["model_input_names"] = self.model_input_names
        if self._special.extra:
            config["extra_special_tokens"] = self._special.extra_texts()
        if self.chat_template is not None:
            config["chat_template"] = chat_template_for_config(self.chat_template)
        config["added_tokens_decoder"] = {str(index): added_token_to_dict(token)
                                          for index, token in sorted(self.added_tokens_decoder.items())}
        config.setdefault("backend", "tokenizers")
        config["tokenizer_class"] = "TokenizersBackend"
        special_tokens_map = self._special.as_map()
        if self._special.extra:
            special_tokens_map["additional_special_tokens"] = self._special.extra_texts()
        with self._lock:
            return write_folder(Path(folder), self._backend, config, special_tokens_map)

    # ---- bos / eos added by the post-processor ----
    @property
    def add_bos_token(self) -> bool:
        return self._add_bos_token

    @add_bos_token.setter
    def add_bos_token(self, value: bool) -> None:
        self._add_bos_token = bool(value)
        self._rebuild_post_processor()

    @property
    def add_eos_token(self) -> bool:
        return self._add_eos_token

    @add_eos_token.setter
    def add_eos_token(self, value: bool) -> None:
        self._add_eos_token = bool(value)
        self._rebuild_post_processor()

    def _rebuild_post_processor(self) -> None:
        """A TemplateProcessing that adds bos/eos per add_bos_token/add_eos_token (transformers' rule)."""
        bos, eos = self.bos_token, self.eos_token
        self._add_bos_token = self._add_bos_token and bos is not None
        self._add_eos_token = self._add_eos_token and eos is not None
        prefix = [f"{bos}:0"] if self._add_bos_token else []
        suffix = [f"{eos}:0"] if self._add_eos_token else []
        single = [*prefix, "$A:0", *suffix]
        pair = [*single, *([f"{bos}:1"] if self._add_bos_token else []), "$B:1",
                *([f"{eos}:1"] if self._add_eos_token else [])]
        special_tokens = ([(bos, self.bos_token_id)] if self._add_bos_token else []) + \
                         ([(eos, self.eos_token_id)] if self._add_eos_token else [])
        self._backend.post_processor = processors.TemplateProcessing(
            single=" ".join(single), pair=" ".join(pair), special_tokens=special_tokens
        )

    # ---- encoding ----
    def __call__(
        self, text=None, text_pair=None, add_special_tokens: bool = True, padding=False, truncation=None,
        max_length: int | None = None, stride: int = 0, is_split_into_words: bool = False,
        pad_to_multiple_of: int | None = None, padding_side: str | None = None, return_tensors=None,
        return_token_type_ids: bool | None = None, return_attention_mask: bool | None = None,
        return_overflowing_tokens: bool = False, return_special_tokens_mask: bool = False,
        return_offsets_mapping: bool = False, return_length: bool = False, verbose: bool = True,
        split_special_tokens: bool | None = None,
    ) -> BatchEncoding:
        """Tokenize one text, a pair, or a batch; pad/truncate; optionally return tensors."""
        if text is None:
            raise ValueError("nothing to tokenize: pass `text`")
        options = resolve_encoding_options(padding, truncation, max_length, pad_to_multiple_of, self.model_max_length,
                                           self.pad_token is not None and self.pad_token_id is not None)
        inputs, is_batched = _batch_inputs(text, text_pair, is_split_into_words)
        with self._lock:
            self._configure_backend(options, stride, padding_side)
            self._backend.encode_special_tokens = (
                self.split_special_tokens if split_special_tokens is None else split_special_tokens)
            try:
                encodings = self._backend.encode_batch(inputs, add_special_tokens=add_special_tokens,
                                                       is_pretokenized=is_split_into_words)
            except TypeError:
                _raise_if_not_unicode(inputs)
                raise
            finally:
                self._backend.encode_special_tokens = self.split_special_tokens
        wanted = {
            "token_type_ids": _default(return_token_type_ids, "token_type_ids" in self.model_input_names),
            "attention_mask": _default(return_attention_mask, "attention_mask" in self.model_input_names),
            "special_tokens_mask": return_special_tokens_mask, "offset_mapping": return_offsets_mapping,
            "length": return_length,
        }
        fields, row_encodings = _encoding_fields(encodings, wanted, return_overflowing_tokens)
        if not is_batched and return_tensors is None and not return_overflowing_tokens:
            fields = {key: value[0] if value and isinstance(value[0], list) else value for key, value in fields.items()}
        return BatchEncoding(fields, row_encodings, tensor_type=return_tensors)

    def _configure_backend(self, options: EncodingOptions, stride: int, padding_side: str | None) -> None:
        """Set the backend's truncation and padding for this call (the caller holds the lock)."""
        if options.truncation == "do_not_truncate":
            self._backend.no_truncation()
        else:
            self._backend.enable_truncation(options.max_length, stride=stride, strategy=options.truncation,
                                            direction=self.truncation_side)
        if options.padding == "do_not_pad":
            self._backend.no_padding()
        else:
            self._backend.enable_padding(
                direction=_side(padding_side or self.padding_side, "padding_side"), pad_id=self.pad_token_id,
                pad_type_id=0, pad_token=self.pad_token, pad_to_multiple_of=options.pad_to_multiple_of,
                length=options.max_length if options.padding == "max_length" else None,
            )

    def encode(self, text, text_pair=None, add_special_tokens: bool = True, padding=False, truncation=None,
               max_length: int | None = None, stride: int = 0, padding_side: str | None = None,
               return_tensors=None, **kwargs) -> list[int]:
        """The token ids of `text` (a list, or a tensor of shape (1, n) with return_tensors)."""
        return self(text, text_pair=text_pair, add_special_tokens=add_special_tokens, padding=padding,
                    truncation=truncation, max_length=max_length, stride=stride, padding_side=padding_side,
                    return_tensors=return_tensors, **kwargs)["input_ids"]

    def tokenize(self, text: str, pair: str | None = None, add_special_tokens: bool = False, **kwargs) -> list[str]:
        return self(text, text_pair=pair, add_special_tokens=add_special_tokens, **kwargs).encodings[0].tokens

    # ---- decoding ----
    def decode(self, token_ids, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool | None = None,
               **kwargs):
        """Text of one sequence of ids (int, list, tensor); a list of texts for a batch (list of lists, 2-D tensor)."""
        token_ids = to_python(token_ids)
        if isinstance(token_ids, list) and token_ids and isinstance(token_ids[0], list):
            return [self._decode_one(row, skip_special_tokens, clean_up_tokenization_spaces) for row in token_ids]
        return self._decode_one(token_ids, skip_special_tokens, clean_up_tokenization_spaces)

    def batch_decode(self, sequences, skip_special_tokens: bool = False,
                     clean_up_tokenization_spaces: bool | None = None, **kwargs) -> list[str]:
        decoded = self.decode(sequences, skip_special_tokens, clean_up_tokenization_spaces)
        return [decoded] if isinstance(decoded, str) else decoded

    def _decode_one(self, token_ids, skip_special_tokens: bool, clean_up_tokenization_spaces: bool | None) -> str:
        if isinstance(token_ids, dict):
            token_ids = token_ids["input_ids"]
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        text = self._backend.decode(token_ids, skip_special_tokens=skip_special_tokens)
        clean_up = self.clean_up_tokenization_spaces if clean_up_tokenization_spaces is None \
            else clean_up_tokenization_spaces
        # transformers skips the clean-up for BPE models: it was made for WordPiece and corrupts BPE text.
        if clean_up and (type(self._backend.model).__name__ != "BPE" or self._clean_up_bpe_anyway):
            text = clean_up_tokenization(text)
        return text

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_lock")
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return (f"Tokenizer(name_or_path={self.name_or_path!r}, vocab_size={self.vocab_size}, "
                f"model_max_length={self.model_max_length}, padding_side={self.padding_side!r}, "
                f"truncation_side={self.truncation_side!r}, special_tokens={self.special_tokens_map})")


def clean_up_tokenization(text: str) -> str:
    """transformers' clean-up: drop the space before punctuation and English contractions."""
    for spaced, joined in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                           (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(spaced, joined)
    return text


def _default(requested: bool | None, default: bool) -> bool:
    return default if requested is None else requested


_FIELD_READERS = {
    "token_type_ids": lambda row: row.type_ids,
    "attention_mask": lambda row: row.attention_mask,
    "special_tokens_mask": lambda row: row.special_tokens_mask,
    "offset_mapping": lambda row: row.offsets,
    "length": lambda row: len(row.ids),
}


def _encoding_fields(encodings: list, wanted: dict[str, bool], with_overflow: bool) -> tuple[dict, list]:
    """Column lists (input_ids + the wanted fields) over the rows; overflow windows become extra rows."""
    if with_overflow:
        rows = [(index, row) for index, encoding in enumerate(encodings) for row in [encoding, *encoding.overflowing]]
    else:
        rows = list(enumerate(encodings))
    fields = {"input_ids": [row.ids for _, row in rows]}
    for name, read in _FIELD_READERS.items():
        if wanted[name]:
            fields[name] = [read(row) for _, row in rows]
    if with_overflow:
        fields["overflow_to_sample_mapping"] = [index for index, _ in rows]
    return fields, [row for _, row in rows]


def _batch_inputs(text, text_pair, is_split_into_words: bool) -> tuple[list, bool]:
    """The backend's batch input for `text` (+ `text_pair`), and whether the caller passed a batch."""
    _check_text(text, "text")
    if text_pair is not None:
        _check_text(text_pair, "text_pair")
    if is_split_into_words:
        is_batched = isinstance(text, (list, tuple)) and bool(text) and isinstance(text[0], (list, tuple))
    else:
        is_batched = isinstance(text, (list, tuple))
    if not is_batched:
        return ([(text, text_pair)] if text_pair else [text]), False
    if isinstance(text_pair, str):
        raise TypeError("when tokenizing a batch, text_pair must be a list of the same length as text")
    if text_pair is not None and len(text) != len(text_pair):
        raise ValueError(f"batch length of text ({len(text)}) does not match text_pair ({len(text_pair)})")
    return (list(zip(text, text_pair)) if text_pair is not None else list(text)), True


def _check_text(value, name: str) -> None:
    def is_text(item, depth: int) -> bool:
        if isinstance(item, str):
            return True
        if isinstance(item, (list, tuple)) and depth < 3:
            return len(item) == 0 or is_text(item[0], depth + 1)
        return False

    if not is_text(value, 0):
        raise ValueError(f"{name} must be a str, a list of str (a batch, or words with is_split_into_words=True) "
                         f"or a list of lists of str; got {type(value).__name__}")


__all__ = ["Tokenizer", "BatchEncoding", "STANDARD_SPECIAL_TOKENS"]
