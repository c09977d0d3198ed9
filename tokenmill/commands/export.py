"""`tokenmill export MODEL OUT.gguf --type TYPE` (or `-m MODEL OUT.gguf`): a model and its tokenizer → one GGUF file llama.cpp reads."""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

from .common import add_model_arg, require_model_arg

USAGE = "tokenmill export MODEL OUT.gguf"

EXAMPLE = """example:
  tokenmill export smollm2-hf smollm2-q8_0.gguf --type q8_0"""


def add_args(parser: argparse.ArgumentParser) -> None:
    from ..assembly.export_gguf import EXPORT_TYPES

    add_model_arg(parser, "the model to write: a Hugging Face folder, a .gguf file or a Hub id")
    parser.add_argument("output", metavar="OUT.gguf", help="the .gguf file to write")
    parser.add_argument("--type", default="f16", choices=EXPORT_TYPES,
                        help="how the weight matrices are stored (norms stay f32)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def main(args: argparse.Namespace) -> int:
    from ..assembly.export_gguf import save_gguf
    from ..assembly.pretrained import load_model
    from ..errors import CheckpointError
    from ..tokenizer import Tokenizer

    from ..assembly.export_gguf import EXPORT_TYPES, ExportError

    source = require_model_arg(args, USAGE)
    if args.type not in EXPORT_TYPES:  # before minutes of loading (`convert ... out.gguf` passes any --type)
        raise ExportError(f"unknown GGUF export type {args.type!r}; choose one of {', '.join(EXPORT_TYPES)}")
    started = time.perf_counter()
    # dense float32 weights: each block type is made from the float values, never from other blocks
    model = load_model(source, dtype="float32", keep_quantized=False, progress=not args.no_progress)
    try:
        tokenizer = Tokenizer.from_pretrained(source)
    except CheckpointError as error:
        warnings.warn(f"tokenmill: no tokenizer written ({error})", RuntimeWarning, stacklevel=1)
        tokenizer = None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "tokenmill: .* without a tokenizer")  # said just above
        path = save_gguf(model, args.output, args.type, tokenizer)
    print(f"wrote {path} ({args.type}, {Path(path).stat().st_size / 2**20:.1f} MiB) in "
          f"{time.perf_counter() - started:.1f} s")
    return 0
