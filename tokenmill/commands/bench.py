"""`tokenmill bench`: speed and memory over a sweep, optionally side by side with transformers.

`tokenmill bench serve ...` benchmarks a running server instead (tokenmill.bench.serving).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from .common import MODEL_HELP, model_source
from .parallel import add_parallel_args

DEFAULT_OUTPUT = Path("bench-results")


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _str_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _precision_list(text: str) -> list[str]:
    """--precision exact,fast: each a precision the execution policy knows, in order, once each."""
    from ..execution.policy import PRECISIONS

    values = list(dict.fromkeys(_str_list(text)))
    unknown = [value for value in values if value not in PRECISIONS]
    if not values or unknown:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(PRECISIONS)}, got {text!r}")
    return values


def _size(text: str) -> int:
    from ..assembly.save import parse_size

    return parse_size(int(text) if text.isdigit() else text)


def _budget(text: str) -> tuple:
    device, _, size = text.partition("=")
    if not device or not size:
        raise argparse.ArgumentTypeError(f"expected DEVICE=SIZE such as cpu=300MiB, got {text!r}")
    return (int(device) if device.isdigit() else device), size


def _placement(args: argparse.Namespace) -> dict | None:
    """from_pretrained's placement arguments, or None; each given option reaches it or is refused here."""
    if args.device_map is None:
        if args.max_memory or args.offload_folder:
            raise SystemExit("tokenmill: error: --max-memory and --offload-folder need --device-map")
        return None
    if args.vs:
        raise SystemExit("tokenmill: error: --device-map applies to tokenmill only; drop --vs")
    placement = {"device_map": args.device_map, "offload_folder": str(args.offload_folder or args.output / "offload")}
    if args.max_memory:
        placement["max_memory"] = dict(args.max_memory)
    return placement


def _serving_module():
    try:
        return importlib.import_module("tokenmill.bench.serving")
    except ModuleNotFoundError as error:
        if error.name != "tokenmill.bench.serving":
            raise
        return None


EXAMPLE = """examples:
  tokenmill bench model.gguf --prompt-lengths 128,512 --new-tokens 64 --vs transformers
  tokenmill bench serve --url http://127.0.0.1:8000 --num-requests 32"""


class _ServeOrModel(argparse._SubParsersAction):
    """`bench serve ...` runs the serving benchmark; `bench MODEL ...` names the model (the positional the other
    commands take), its options after it parsed by the bench parser."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.choices = None  # any word may be a MODEL: __call__ tells the two apart

    def __call__(self, parser, namespace, values, option_string=None):
        if values[0] in self._name_parser_map:
            return super().__call__(parser, namespace, values, option_string)
        namespace.model = values[0]
        parser.parse_args(values[1:], namespace)


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(model=None)
    parser.add_argument("--model", "-m", dest="model_option", default=None, metavar="MODEL",
                        help=MODEL_HELP + "; a positional MODEL works too")
    parser.add_argument("--gguf-file", default=None, help="GGUF file name inside MODEL (folder or Hub repo)")
    parser.add_argument("--prompt-lengths", type=_int_list, default=[32, 128, 512], help="prompt lengths in tokens")
    parser.add_argument("--new-tokens", type=_int_list, default=[32], help="decode lengths")
    parser.add_argument("--batch-sizes", type=_int_list, default=[1], help="rows generated together")
    parser.add_argument("--dtypes", type=_str_list, default=["float32"], help="float32, bfloat16, float16")
    parser.add_argument("--attn", type=_str_list, default=["sdpa"], help="attention implementations: sdpa,eager")
    parser.add_argument("--caches", type=_str_list, default=["dynamic"],
                        help="cache kinds: dynamic,static,offloaded,quantized,sliding_window,sink")
    parser.add_argument("--threads", type=_int_list, default=None,
                        help="torch threads (default 2; under --tensor-parallel-size: each rank's, default "
                             "--threads-per-rank)")
    parser.add_argument("--weights", type=_str_list, default=["auto"],
                        help="tokenmill's GGUF weights: gguf (blocks, float32 kernels), dense (dequantized at "
                             "load), auto (gguf on the CPU in float32), or a float model quantized at load "
                             "(q8_0, nf4, ...); transformers always dequantizes")
    parser.add_argument("--precision", type=_precision_list, default=["exact"], metavar="LIST",
                        help="tokenmill's block matmuls: exact (float32 arithmetic), fast (int8 activations where "
                             "the block type has an integer kernel), or both to compare: exact,fast")
    parser.add_argument("--quantize", action="append", default=[], metavar="TYPE",
                        help="also run tokenmill with the float model quantized at load to TYPE (q8_0, q4_0, "
                             "q4_1, q5_0, q5_1, nf4, fp4, q2_k ... q6_k, q4_k_m), in the same sweep as --weights (repeatable)")
    parser.add_argument("--repeats", type=int, default=3, help="measured runs per setting (medians reported)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured runs first")
    parser.add_argument("--vs", action="append", default=[], metavar="ENGINE",
                        help="also run this engine, interleaved: transformers, llama.cpp (needs llama-cpp-python), "
                             "or tokenmill-uncalibrated (the GEMM switch at its constants, not measured per machine)")
    parser.add_argument("--limit-search", action="store_true",
                        help="grow the sequence until memory runs out (or the context ends), then report it")
    parser.add_argument("--limit-start", type=int, default=256, help="first sequence length of the limit search")
    parser.add_argument("--limit-max", type=int, default=None, help="largest sequence length to try")
    parser.add_argument("--limit-batch", type=int, default=1, help="batch size of the limit search")
    parser.add_argument("--memory-budget", type=_size, default=None,
                        help="peak RSS that counts as out of memory on a CPU (e.g. 8GiB; default 80%% of available)")
    parser.add_argument("--device-map", default=None, metavar="MAP",
                        help="tokenmill's from_pretrained device_map: auto, balanced, sequential or a device")
    parser.add_argument("--max-memory", action="append", default=[], type=_budget, metavar="DEVICE=SIZE",
                        help="a device's budget for --device-map, e.g. cpu=300MiB or 0=20GiB (repeatable)")
    parser.add_argument("--offload-folder", type=Path, default=None,
                        help="where disk-offloaded weights go (default: OUTPUT/offload when --device-map is given)")
    parser.add_argument("--output", "-o", type=Path, default=DEFAULT_OUTPUT, help="folder for JSON and PNG files")
    parser.add_argument("--no-plots", action="store_true", help="no PNG files")
    parser.add_argument("--wide", action="store_true",
                        help="every column in the table (spread, tokens per CPU-second, KV bytes, all ratios)")
    memory = parser.add_mutually_exclusive_group()
    memory.add_argument("--isolate-memory", dest="isolate_memory", action="store_true", default=None,
                        help="measure each engine's peak RSS in a process of its own (the default when this "
                             "process holds more than one model, e.g. with --vs)")
    memory.add_argument("--memory-in-process", dest="isolate_memory", action="store_false",
                        help="read peak RSS in the sweep's own process (faster; counts every loaded model)")
    parser.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")
    add_parallel_args(parser)
    parser.set_defaults(refuse_on_ranks=refuse_on_ranks)
    serving = _serving_module()
    if serving is not None:
        modes = parser.add_subparsers(dest="bench_mode", metavar="{serve,MODEL}", action=_ServeOrModel)
        serve_parser = modes.add_parser("serve", help="benchmark a running server (OpenAI API)")
        serving.add_args(serve_parser)


def _options(args: argparse.Namespace):
    from ..bench.run import BenchOptions
    from ..bench.sweep import SweepSpec

    if args.repeats < 1 or args.warmup < 0:
        raise SystemExit("tokenmill: error: --repeats must be >= 1 and --warmup >= 0")
    unknown = [name for name in args.vs if name not in ("transformers", "llama.cpp", "tokenmill-uncalibrated")]
    if unknown:
        raise SystemExit(f"tokenmill: error: --vs supports transformers, llama.cpp and tokenmill-uncalibrated, "
                         f"not {unknown}")
    from ..assembly.quantization_config import LOAD_METHODS as methods

    weights = list(dict.fromkeys(args.weights + [method.lower() for method in args.quantize]))
    bad_weights = [kind for kind in weights if kind not in ("gguf", "dense", "auto", *methods)]
    if bad_weights:
        raise SystemExit(f"tokenmill: error: --weights takes gguf, dense, auto or a quantization method "
                         f"({', '.join(methods)}), not {bad_weights}")
    spec = SweepSpec(args.prompt_lengths, args.new_tokens, args.batch_sizes, args.dtypes, args.attn, args.caches,
                     args.threads or [2], args.repeats, args.warmup, weights, args.precision)
    options = BenchOptions(Path(model_source(args)), args.gguf_file, spec, list(dict.fromkeys(args.vs)),
                        limit_search=args.limit_search, limit_start=args.limit_start, limit_max=args.limit_max,
                        limit_batch=args.limit_batch, memory_budget=args.memory_budget,
                        progress=not args.no_progress, isolate_memory=args.isolate_memory,
                        placement=_placement(args))
    return _on_ranks(args, options)


def refuse_on_ranks(args: argparse.Namespace) -> None:
    """What a tensor-parallel sweep cannot run, refused before the ranks start."""
    if getattr(args, "bench_mode", None) == "serve":
        raise SystemExit("tokenmill: error: bench serve measures a running server: start it with "
                         "`tokenmill serve --tensor-parallel-size N`")
    for flag, given in (("--vs", args.vs), ("--limit-search", args.limit_search), ("--device-map", args.device_map),
                        ("--isolate-memory", args.isolate_memory)):
        if given:
            raise SystemExit(f"tokenmill: error: {flag} does not combine with --tensor-parallel-size")


def _on_ranks(args: argparse.Namespace, options):
    """Under --tensor-parallel-size every rank runs the same sweep (the same generate() calls, which the forward's
    collectives need), tokenmill only and in this process; rank 0 reports."""
    import dataclasses

    import torch

    group = getattr(args, "tensor_parallel", None)
    if group is None:
        return options
    refuse_on_ranks(args)
    spec = options.spec if args.threads else dataclasses.replace(options.spec, threads=[torch.get_num_threads()])
    return dataclasses.replace(options, spec=spec, isolate_memory=False, placement={"tensor_parallel": group},
                               progress=options.progress and group.rank == 0)


def main(args: argparse.Namespace) -> int:
    if getattr(args, "bench_mode", None) == "serve":
        return _serving_module().main(args)
    from ..bench.plots import write_plots
    from ..bench.report import format_table, write_json
    from ..bench.run import run_bench

    report = run_bench(_options(args))
    if getattr(args, "tensor_parallel", None) is not None and args.tensor_parallel.rank != 0:
        return 0  # rank 0 writes the report
    json_path = args.output / "bench.json"
    write_json(report, json_path)
    plots = [] if args.no_plots else write_plots(report, args.output)
    print(format_table(report, wide=args.wide))
    print(f"\nwrote {json_path}" + "".join(f", {p}" for p in plots))
    if not args.no_plots and not plots:
        print("(no plots: pip install matplotlib)", file=sys.stderr)
    return 0
