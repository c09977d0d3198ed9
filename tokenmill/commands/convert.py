"""`tokenmill convert MODEL.gguf OUT_DIR` (or `-m MODEL.gguf OUT_DIR`): a GGUF file → a Hugging Face folder (float weights + tokenizer);
an output ending in .gguf (`tokenmill convert MODEL_DIR out.gguf --type q8_0`) is `tokenmill export`."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..assembly.pretrained import parse_dtype
from .common import add_model_arg, require_model_arg

USAGE = "tokenmill convert MODEL.gguf OUT_DIR"


EXAMPLE = """examples:
  tokenmill convert SmolLM2-135M-Instruct-Q4_1.gguf smollm2-hf --dtype bfloat16
  tokenmill convert -m SmolLM2-135M-Instruct-Q4_1.gguf smollm2-hf   (the model as an option, as elsewhere)
  tokenmill convert smollm2-hf smollm2-q8_0.gguf --type q8_0   (the same as tokenmill export)"""


def add_args(parser: argparse.ArgumentParser) -> None:
    add_model_arg(parser, "the .gguf file to convert (a model of any kind when OUT_DIR ends in .gguf)")
    parser.add_argument("output_dir", metavar="OUT_DIR", help="folder to write (created if missing)")
    parser.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    parser.add_argument("--max-shard-size", default="5GB", help="split weights into shards above this size")
    parser.add_argument("--type", default="f16", help="with an output ending in .gguf: how its matrices are "
                                                      "stored, as `tokenmill export --type`")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def main(args: argparse.Namespace) -> int:
    from ..assembly.convert import convert_gguf

    source = require_model_arg(args, USAGE)
    if args.output_dir.endswith(".gguf"):  # a model → GGUF, as transformers users name it
        from . import export

        return export.main(argparse.Namespace(model=source, output=args.output_dir, type=args.type,
                                              no_progress=args.no_progress))

    started = time.perf_counter()
    written = convert_gguf(source, args.output_dir, dtype=parse_dtype(args.dtype, "float32"),
                           max_shard_size=args.max_shard_size, progress=not args.no_progress)
    print(f"wrote {len(written)} files to {args.output_dir} in {time.perf_counter() - started:.1f} s:")
    for name in sorted({Path(name).name for name in written}):
        print(f"  {name}")
    return 0
