"""Arguments and loading shared by the commands."""

from __future__ import annotations

import argparse
import sys
import time

from ..errors import TokenmillError
from ..loading.default_model import default_model_path


def require_valid_text(text: str, where: str) -> str:
    """Python keeps undecodable argv/stdin bytes as lone surrogates; refuse them before any work is done."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise TokenmillError(f"{where} is not valid UTF-8 (undecodable byte at character {error.start})") from None
    return text


MODEL_HELP = "folder, .gguf file or Hub id (default: the embedded SmolLM2-135M-Instruct)"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Each option's default after its help (unless the help already says it, or there is none to say); the
    epilog's examples kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text or default in (None, False, argparse.SUPPRESS) or text == argparse.SUPPRESS
                or not action.option_strings):
            return text
        shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})".strip()


def add_model_arg(parser: argparse.ArgumentParser, help_text: str = MODEL_HELP) -> None:
    """The model, the same on every command: a positional MODEL or -m/--model MODEL."""
    parser.add_argument("model", nargs="?", default=None, metavar="MODEL", help=help_text)
    parser.add_argument("--model", "-m", dest="model_option", default=None, metavar="MODEL",
                        help="the same as the positional MODEL")


def resolve_model_arg(args: argparse.Namespace) -> None:
    """args.model from the positional or -m (None: the embedded default); both, naming different models: refused."""
    if not hasattr(args, "model_option"):
        return
    positional, option = args.model, args.model_option
    if positional is not None and option is not None and positional != option:
        raise TokenmillError(f"two models named: {positional!r} (positional) and {option!r} (-m/--model); give one")
    args.model = option if option is not None else positional


def require_model_arg(args: argparse.Namespace, usage: str) -> str:
    """args.model where a command has no default model to fall back on (convert, export)."""
    if args.model is None:
        raise TokenmillError(f"name the model: {usage} (or -m/--model MODEL)")
    return args.model


def add_model_args(parser: argparse.ArgumentParser) -> None:
    add_model_arg(parser)
    add_load_args(parser)


def add_load_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gguf-file", default=None, help="GGUF file name inside --model (folder or Hub repo)")
    parser.add_argument("--dtype", default="auto", help="float32, bfloat16, float16 or auto")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    add_quantize_arg(parser)
    add_precision_arg(parser)


def add_precision_arg(parser: argparse.ArgumentParser) -> None:
    from ..execution.policy import PRECISIONS

    parser.add_argument("--precision", default="exact", choices=PRECISIONS,
                        help="block matmuls in float32 (exact: the dequantized weights' arithmetic) or with int8 "
                             "activations where the block type has an integer kernel (fast; GGUF or --quantize)")


def add_quantize_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quantize", default=None, metavar="TYPE",
                        help="quantize a float model's linear layers at load: q8_0, q4_0, q4_1, q5_0, q5_1, nf4, fp4, "
                             "q2_k, q3_k, q4_k, q5_k, q6_k, or q4_k_m (llama.cpp's mixture)")


def add_sampling_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-new-tokens", type=int, default=256, help="most tokens generated per answer")
    parser.add_argument("--do-sample", action="store_true", help="sample (implied by --temperature/--top-p/...)")
    parser.add_argument("--temperature", type=float, help="sampling temperature; 0 is greedy")
    parser.add_argument("--top-k", type=int, help="sample among the k likeliest tokens")
    parser.add_argument("--top-p", type=float, help="sample within this probability mass (nucleus)")
    parser.add_argument("--min-p", type=float, help="drop tokens below this fraction of the top probability")
    parser.add_argument("--repetition-penalty", type=float, help="above 1 discourages repeats")
    parser.add_argument("--seed", type=int, help="makes sampling reproducible")
    parser.add_argument("--stop", action="append", default=None, metavar="TEXT", help="stop string (repeatable)")


def sampling_kwargs(args: argparse.Namespace) -> dict:
    """generate() keyword arguments from the flags the user actually set."""
    kwargs = {"max_new_tokens": args.max_new_tokens}
    # --temperature 0 means greedy, as in vLLM and the OpenAI API (transformers would refuse it with sampling)
    greedy = args.temperature == 0
    sampling_flags = ("temperature", "top_k", "top_p", "min_p")
    for name in ("temperature", "top_k", "top_p", "min_p", "repetition_penalty"):
        value = getattr(args, name)
        if value is not None and not (greedy and name in sampling_flags):
            kwargs[name] = value
    sampled = not greedy and (args.do_sample or any(k in kwargs for k in sampling_flags))
    kwargs["do_sample"] = sampled
    if args.stop:
        kwargs["stop_strings"] = args.stop
    return kwargs


def model_source(args: argparse.Namespace):
    return args.model if args.model is not None else default_model_path()


def tensor_parallel_kwargs(args: argparse.Namespace) -> dict:
    """The rank's group when the command runs tensor-parallel (commands/parallel.py set it), else nothing."""
    group = getattr(args, "tensor_parallel", None)
    return {} if group is None else {"tensor_parallel": group}


def load_model_and_tokenizer(args: argparse.Namespace):
    from ..auto import AutoModelForCausalLM, AutoTokenizer

    source = model_source(args)
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=args.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=args.gguf_file, dtype=args.dtype,
                                                 device=args.device, quantization_config=args.quantize,
                                                 precision=args.precision, **tensor_parallel_kwargs(args))
    print(f"loaded {source} in {time.perf_counter() - started:.2f} s", file=sys.stderr)
    return model, tokenizer


def thread_count(threads: str) -> int:
    """A fixed `tokenmill serve --threads` value (not "auto") as a count of at least 1."""
    try:
        count = int(threads)
    except ValueError:
        raise SystemExit(f"tokenmill serve: --threads must be a number or auto, got {threads!r}") from None
    if count < 1:
        raise SystemExit(f"tokenmill serve: --threads must be >= 1, got {count}")
    return count
