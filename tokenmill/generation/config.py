"""GenerationConfig: transformers' generation parameters, by the same names, read from generation_config.json.

Unlike transformers 5 (whose fields default to None and get their effective values inside generate()), the
fields here hold the effective defaults directly (max_length=20, top_k=50, do_sample=False, ...), so code that
reads a config never has to resolve None. Saving writes only the fields that differ from these defaults, which is
what transformers would also do, so files round-trip between the two libraries.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import CheckpointError
from ..loading.resolve import ResolvedSource, resolve_source
from .config_fields import DEFAULTS, METADATA_FIELDS, token_id_list
from .config_validation import ignored_flags, problems_of

if TYPE_CHECKING:
    from ..loading.gguf import GGUFCheckpoint

logger = logging.getLogger(__name__)

GENERATION_CONFIG_NAME = "generation_config.json"


class GenerationConfigNotFoundError(CheckpointError, FileNotFoundError):
    """generation_config.json is missing: a CheckpointError that is also an OSError, as transformers raises."""

class GenerationConfig:
    """The parameters of one generate() call, with transformers' names, defaults and file format."""

    def __init__(self, **kwargs):
        self._fill(kwargs)
        self.validate()

    def _fill(self, kwargs: dict) -> None:
        for key, value in DEFAULTS.items():
            setattr(self, key, copy.deepcopy(value))
        kwargs = dict(kwargs)
        kwargs.pop("_commit_hash", None)
        self._from_model_config = kwargs.pop("_from_model_config", None)
        self.transformers_version = kwargs.pop("transformers_version", None)
        for key, value in kwargs.items():
            setattr(self, key, value)  # unknown keys are kept as attributes, as transformers does

    # ---- comparison and display ---------------------------------------------------------------------

    def __eq__(self, other) -> bool:
        if not isinstance(other, GenerationConfig):
            return NotImplemented
        return self._parameters() == other._parameters()

    def __hash__(self):
        return hash(json.dumps(self._parameters(), sort_keys=True, default=str))

    def __repr__(self) -> str:
        return f"{type(self).__name__} {json.dumps(self.to_diff_dict(), indent=2, sort_keys=True, default=str)}"

    def _parameters(self) -> dict[str, Any]:
        return {k: v for k, v in self.to_dict().items() if k not in METADATA_FIELDS}

    # ---- dict / json --------------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs) -> GenerationConfig:
        """A config from a dict (e.g. a parsed generation_config.json); kwargs override its values.

        With `return_unused_kwargs=True`, returns (config, kwargs that are not config fields), like transformers.
        """
        return_unused = kwargs.pop("return_unused_kwargs", False)
        kwargs.pop("_from_auto", None)
        kwargs.pop("_from_pipeline", None)
        # as transformers: every key (known or not) becomes an attribute, so nothing is ever unused
        config = cls(**{**config_dict, **kwargs})
        return (config, {}) if return_unused else config

    def to_dict(self) -> dict[str, Any]:
        """Every field (defaults included) as a plain dict; private runtime attributes (`_...`) are left out."""
        out = {}
        for key, value in self.__dict__.items():
            if key.startswith("_"):
                continue
            if hasattr(value, "to_dict") and not isinstance(value, dict):
                value = value.to_dict()
            out[key] = copy.deepcopy(value)
        return out

    def to_diff_dict(self) -> dict[str, Any]:
        """Only the fields whose value differs from the default (what save_pretrained writes)."""
        out = {}
        for key, value in self.to_dict().items():
            if key in METADATA_FIELDS:
                if value is not None:
                    out[key] = value
                continue
            if key not in DEFAULTS or value != DEFAULTS[key]:
                out[key] = value
        return out

    def to_json_string(self, use_diff: bool = True) -> str:
        data = self.to_diff_dict() if use_diff else self.to_dict()
        data = _json_ready(data)
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    def to_json_file(self, path: str | os.PathLike, use_diff: bool = True) -> None:
        Path(path).write_text(self.to_json_string(use_diff=use_diff), encoding="utf-8")

    # ---- files --------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls, folder: str | os.PathLike, config_file_name: str | None = None, **kwargs
    ) -> GenerationConfig:
        """Read `<folder>/generation_config.json` (or `config_file_name`); kwargs override the file's values.

        A missing file raises GenerationConfigNotFoundError (both a CheckpointError and an OSError) naming the
        path; a file that is not a JSON object raises CheckpointError. Invalid values are only logged here (like
        transformers, so that a model still loads); validate() / generate() raise for them.
        """
        name = config_file_name or GENERATION_CONFIG_NAME
        if str(folder).lower().endswith(".gguf") or kwargs.get("gguf_file") or not Path(folder).exists():
            from ..loading.gguf import GGUFCheckpoint  # numpy and torch, only for a GGUF file or a Hub id

            hub_keys = ("gguf_file", "revision", "cache_dir", "local_files_only")
            resolved = resolve_source(folder, **{k: kwargs.pop(k) for k in hub_keys if k in kwargs})
            located = generation_config_of(resolved, GGUFCheckpoint(resolved.gguf_path) if resolved.is_gguf else None)
            located.update(**kwargs)
            return located
        folder = Path(folder)
        path = folder if folder.is_file() else folder / name
        if not path.is_file():
            raise GenerationConfigNotFoundError(path, f"no {name} here; the folder must contain the generation "
                                                      "config file")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise CheckpointError(path, f"not a valid JSON file ({error})") from error
        if not isinstance(data, dict):
            raise CheckpointError(path, f"expected a JSON object, found {type(data).__name__}")
        kwargs.pop("return_unused_kwargs", None)
        # a published file with a questionable value must not stop the model from loading: warn here, and let
        # generate() (which validates after applying the call's own arguments) raise if it is still invalid then
        config = cls.__new__(cls)
        config._fill({**data, **kwargs})
        try:
            config.validate()
        except ValueError as error:
            logger.warning("%s: %s; generate() will refuse it unless the call overrides it", path, error)
        return config

    def save_pretrained(self, folder: str | os.PathLike, config_file_name: str | None = None) -> Path:
        """Validate, then write the non-default fields to `<folder>/generation_config.json`; returns the path."""
        self.validate()
        folder = Path(folder)
        if folder.is_file():
            raise ValueError(f"{folder} should be a directory, not a file")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / (config_file_name or GENERATION_CONFIG_NAME)
        self.to_json_file(path, use_diff=True)
        return path

    @classmethod
    def from_model_config(cls, model_config) -> GenerationConfig:
        """Generation fields (token ids, ...) taken from a model config object or dict."""
        source = model_config if isinstance(model_config, dict) else (
            model_config.to_dict() if hasattr(model_config, "to_dict") else vars(model_config))
        values = {k: v for k, v in source.items() if k in DEFAULTS and v is not None}
        config = cls(**values)
        config._from_model_config = True
        return config

    # ---- mutation -----------------------------------------------------------------------------------

    def update(self, defaults_only: bool = False, allow_custom_entries: bool = False, **kwargs) -> dict[str, Any]:
        """Set the kwargs that are fields of this config; return the ones that are not (left untouched).

        `defaults_only`: only fill fields that are currently None. `allow_custom_entries`: unknown keys become
        attributes too. The config is validated afterwards.
        """
        used = []
        for key, value in kwargs.items():
            if key in self.__dict__ and not key.startswith("_"):
                if not defaults_only or getattr(self, key) is None:
                    setattr(self, key, value)
                    used.append(key)
            elif allow_custom_entries:
                setattr(self, key, value)
                used.append(key)
        self.validate()
        return {key: value for key, value in kwargs.items() if key not in used}

    def copy(self) -> GenerationConfig:
        return copy.deepcopy(self)

    # ---- validation ---------------------------------------------------------------------------------

    def validate(self, strict: bool = False) -> None:
        """Raise ValueError naming the parameter for any value generate() could not honour.

        transformers raises for some of these only when the processor is built, and merely warns for others; we
        raise as early as possible. Flags that are set but ignored by the chosen strategy (e.g. temperature with
        greedy decoding) are logged, or raised when `strict=True`.
        """
        problems = problems_of(self)
        if problems:
            raise ValueError("invalid generation config: " + "; ".join(problems))
        ignored = ignored_flags(self)
        if ignored:
            message = "generation flags set but unused by this strategy: " + "; ".join(ignored)
            if strict:
                raise ValueError(message)
            logger.info(message)

    # ---- helpers for generate() ---------------------------------------------------------------------

    @property
    def eos_token_ids(self) -> list[int]:
        """eos_token_id as a list (empty when unset)."""
        return token_id_list(self.eos_token_id) or []


def _json_ready(value):
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def generation_config_of(resolved: ResolvedSource, gguf: GGUFCheckpoint | None = None) -> GenerationConfig:
    """A resolved source's generation config: its generation_config.json, else the GGUF metadata, else the special
    token ids of config.json, else the defaults."""
    path = resolved.folder / GENERATION_CONFIG_NAME
    if not resolved.is_gguf and path.is_file():
        return GenerationConfig.from_pretrained(resolved.folder)
    if gguf is not None:
        return GenerationConfig.from_dict(gguf.generation_config_dict())
    config_path = resolved.folder / "config.json"
    if config_path.is_file():
        source = json.loads(config_path.read_text(encoding="utf-8"))
        return GenerationConfig.from_dict({k: source[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")
                                           if source.get(k) is not None})
    return GenerationConfig()
