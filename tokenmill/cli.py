"""`tokenmill <command>`: each command lives in tokenmill/commands/<name>.py with add_args(parser) and main(args)."""

from __future__ import annotations

import argparse
import importlib
import sys

from .commands.common import HelpFormatter, resolve_model_arg
from .commands.parallel import run_on_ranks, wants_ranks
from .errors import TokenmillError
from .version import __version__

COMMANDS = {
    "generate": "generate text from a prompt",
    "chat": "interactive, streaming multi-turn chat",
    "info": "describe a checkpoint (architecture, parameters, quant types, context, template)",
    "convert": "convert a GGUF file into a Hugging Face folder",
    "export": "write a model (Hugging Face folder, GGUF, Hub id) as a GGUF file: f32, f16, q8_0, q4_0, ...",
    "bench": "measure speed and memory, side by side with transformers",
    "serve": "serve a model over HTTP (OpenAI and TGI APIs)",
    "verify": "check tokenmill's logits and greedy tokens against transformers on fixed prompts",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokenmill", description="LLM inference in native PyTorch",
                                     epilog="run `tokenmill COMMAND --help` for a command's options and an example")
    parser.add_argument("--version", action="version", version=f"tokenmill {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        try:
            module = importlib.import_module(f"tokenmill.commands.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"tokenmill.commands.{name}":
                raise
            continue
        command_parser = sub.add_parser(name, help=help_text, description=help_text, formatter_class=HelpFormatter,
                                        epilog=getattr(module, "EXAMPLE", None))
        module.add_args(command_parser)
        command_parser.set_defaults(run=module.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        resolve_model_arg(args)
        if wants_ranks(args):  # --tensor-parallel-size N: the command runs on N ranks
            return run_on_ranks(args)
        return args.run(args) or 0
    except (TokenmillError, ValueError) as error:  # bad input: a message, not a traceback
        print(f"tokenmill: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
