"""Reading and writing a tokenizer folder: tokenizer.json, tokenizer_config.json, special_tokens_map.json, templates.

The layout is transformers'; a folder written here loads back in transformers, and one written by
transformers (chat template in `chat_template.jinja`, extra templates in `additional_chat_templates/`)
loads here.
"""

from __future__ import annotations

import json
from pathlib import Path

import tokenizers

from ..errors import CheckpointError

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
CHAT_TEMPLATE_DIR = "additional_chat_templates"

# Keys of tokenizer_config.json that describe where files were, not how to tokenize.
_FILE_KEYS = ("tokenizer_file", "vocab_file", "merges_file", "special_tokens_map_file", "name_or_path",
              "files_loaded", "tokenizer_class", "auto_map", "init_inputs", "is_local", "local_files_only")


def read_backend(folder: Path) -> tokenizers.Tokenizer:
    path = folder / TOKENIZER_FILE
    if not path.is_file():
        raise CheckpointError(folder, f"no {TOKENIZER_FILE} (tokenmill reads fast-tokenizer files)")
    try:
        return tokenizers.Tokenizer.from_file(str(path))
    except Exception as error:  # the Rust side raises a bare Exception for every parse failure
        raise CheckpointError(path, f"cannot parse the tokenizer: {error}") from error


def read_json_object(path: Path) -> dict | None:
    """The JSON object in `path`, None if the file is absent; a clear error if it is not a JSON object."""
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(path, f"cannot read JSON: {error}") from error
    if not isinstance(value, dict):
        raise CheckpointError(path, f"expected a JSON object, found {type(value).__name__}")
    return value


def read_chat_templates(folder: Path) -> str | dict[str, str] | None:
    """Templates stored as files: `chat_template.jinja` (the default) plus `additional_chat_templates/*.jinja`."""
    templates: dict[str, str] = {}
    default_file = folder / CHAT_TEMPLATE_FILE
    if default_file.is_file():
        templates["default"] = default_file.read_text(encoding="utf-8")
    extra_dir = folder / CHAT_TEMPLATE_DIR
    if extra_dir.is_dir():
        for template_file in sorted(extra_dir.glob("*.jinja")):
            templates[template_file.stem] = template_file.read_text(encoding="utf-8")
    if not templates:
        return None
    if list(templates) == ["default"]:
        return templates["default"]
    return templates


def read_folder(folder: Path) -> tuple[tokenizers.Tokenizer, dict, dict | None]:
    """(backend, tokenizer config, special tokens map) as transformers would initialise a fast tokenizer from them."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(folder, "not a folder")
    backend = read_backend(folder)
    config = read_json_object(folder / CONFIG_FILE) or {}
    for key in _FILE_KEYS:
        config.pop(key, None)
    # With a tokenizer.json, its post-processor decides bos/eos; transformers drops these two flags.
    config.pop("add_bos_token", None)
    config.pop("add_eos_token", None)
    file_templates = read_chat_templates(folder)
    if file_templates is not None:
        config["chat_template"] = file_templates
    # special_tokens_map.json is the legacy source, read only when the config has no added_tokens_decoder.
    special_tokens_map = None
    if "added_tokens_decoder" not in config:
        special_tokens_map = read_json_object(folder / SPECIAL_TOKENS_MAP_FILE)
    return backend, config, special_tokens_map


def chat_template_for_config(chat_template):
    """A dict of named templates is stored as [{name, template}] in the config (transformers' legacy format)."""
    if isinstance(chat_template, dict):
        return [{"name": name, "template": text} for name, text in chat_template.items()]
    return chat_template


def chat_template_from_config(value):
    if isinstance(value, (list, tuple)):
        return {entry["name"]: entry["template"] for entry in value}
    return value


def write_folder(folder: Path, backend: tokenizers.Tokenizer, config: dict, special_tokens_map: dict) -> list[str]:
    folder = Path(folder)
    if folder.is_file():
        raise CheckpointError(folder, "save_pretrained needs a folder, this is a file")
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / CONFIG_FILE, folder / SPECIAL_TOKENS_MAP_FILE, folder / TOKENIZER_FILE]
    paths[0].write_text(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    paths[1].write_text(
        json.dumps(special_tokens_map, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    backend.save(str(paths[2]))
    return [str(path) for path in paths]
