"""`tokenmill serve --data-parallel-size N`: N engine replica processes (each loading the model, with its own
thread count) behind one HTTP server; the front process loads only the tokenizer."""

from __future__ import annotations

import argparse
import os
import sys

from .common import thread_count


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def replica_threads(size: int, threads: str, cores: int) -> int:
    """Each replica's torch thread count; SystemExit naming the flag for a size or count that cannot run."""
    if size < 1:
        raise SystemExit(f"tokenmill serve: --data-parallel-size must be at least 1, got {size}")
    if size > cores:
        raise SystemExit(f"tokenmill serve: --data-parallel-size {size} is more than the {cores} CPU core(s) this "
                         f"process may use; use at most {cores}")
    if threads == "auto":
        return max(1, cores // size)
    return thread_count(threads)


def serve_replicas(args: argparse.Namespace, settings, engine_config, adapters: dict[str, str]) -> int:
    """`settings`, `engine_config` and `adapters` as `tokenmill serve` reads them from `args`."""
    from ..auto import AutoTokenizer
    from ..engine.replica_worker import ReplicaSpec
    from ..engine.replicas import ReplicaStartError
    from ..loading.default_model import default_model_path
    from ..server.replica_app import build_replica_app
    from ..server.runner import make_server

    threads = replica_threads(args.data_parallel_size, args.threads, usable_cores())
    if args.allow_runtime_lora:
        raise SystemExit("tokenmill serve: --allow-runtime-lora is not available with --data-parallel-size > 1; "
                         "load adapters at start with --lora NAME=PATH")
    if settings.model_name in adapters:
        raise SystemExit(f"tokenmill serve: --lora {settings.model_name!r} is the served model's own name")
    source = str(args.model if args.model is not None else default_model_path())
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=args.gguf_file)
    load_kwargs = {"gguf_file": args.gguf_file, "dtype": args.dtype, "device": args.device,
                   "quantization_config": args.quantize, "precision": args.precision}
    spec = ReplicaSpec(source, load_kwargs, engine_config, threads, adapters, args.engine_stall_seconds)
    try:
        app = build_replica_app(spec, args.data_parallel_size, tokenizer, settings)
    except ReplicaStartError as error:
        raise SystemExit(f"tokenmill serve: {error}") from None
    info = app.state.tokenmill.engine.model_info()
    print(f"tokenmill: serving {settings.model_name!r} on http://{args.host}:{args.port} with "
          f"{args.data_parallel_size} engine replicas x {threads} thread(s) ({info.kv_blocks} KV blocks of "
          f"{info.block_size} tokens in all)", file=sys.stderr)
    make_server(app, args.host, args.port, args.log_level).run()
    app.state.tokenmill.engine.shutdown()
    return 0
