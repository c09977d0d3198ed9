"""`tokenmill info SRC`: architecture, parameter count, dtypes / quant types, context, chat template, special tokens."""

from __future__ import annotations

import argparse
import json

from .common import model_source


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", nargs="?", default=None, help="folder, .gguf or Hub id (default: embedded SmolLM2)")
    parser.add_argument("--gguf-file", default=None)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _human(count: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size:
            return f"{count / size:.1f}{unit}"
    return str(count)


def main(args: argparse.Namespace) -> int:
    from ..assembly.describe import describe

    args.model = args.source
    info = describe(model_source(args), args.gguf_file)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    types = ", ".join(f"{name} ×{count}" for name, count in info["tensor_types"].items())
    rows = [
        ("architecture", info["architecture"]),
        ("parameters", f"{_human(info['parameters'])} ({info['parameters']:,})"),
        ("tensor types", types),
        ("context length", info["context_length"]),
        ("layers / hidden", f"{info['layers']} / {info['hidden_size']}"),
        ("heads / kv heads", f"{info['attention_heads']} / {info['kv_heads']}"),
        ("vocabulary", info["vocab_size"]),
        ("chat template", "yes" if info["chat_template"] else "no"),
        ("special tokens", ", ".join(f"{k}={v!r}" for k, v in info["special_tokens"].items() if v is not None)),
        ("size on disk", f"{info['size_bytes'] / 2**20:.1f} MiB in {len(info['files'])} file(s)"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0
