"""`tokenmill serve MODEL`: one HTTP server speaking the OpenAI API and TGI's API over a continuous-batching engine."""

from __future__ import annotations

import argparse
import math
import sys

from .common import add_model_arg, add_precision_arg, add_quantize_arg, tensor_parallel_kwargs, thread_count
from .parallel import add_parallel_args

EXAMPLE = """example:
  tokenmill serve model.gguf --port 8000 --served-model-name smollm2"""


def add_args(parser: argparse.ArgumentParser) -> None:
    add_model_arg(parser)
    parser.add_argument("--gguf-file", default=None, help="GGUF file name inside MODEL (folder or Hub repo)")
    parser.add_argument("--dtype", default="auto", help="float32, bfloat16, float16 or auto")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    add_quantize_arg(parser)
    add_precision_arg(parser)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--served-model-name", default=None, help="the model name clients use (default: MODEL)")
    parser.add_argument("--max-concurrent-requests", type=int, default=128,
                        help="sequences generated at once (a request counts prompts x n); beyond this: 429")
    parser.add_argument("--max-sequences-per-request", type=int, default=32,
                        help="prompts x n (best_of) of one request; beyond this: 422")
    parser.add_argument("--engine-stall-seconds", type=_seconds, default=120.0,
                        help="an engine step longer than this makes /health 503 and refuses new requests")
    parser.add_argument("--max-input-tokens", type=int, default=None, help="longest prompt accepted (422 beyond)")
    parser.add_argument("--max-total-tokens", type=int, default=None, help="prompt + new tokens limit (422 beyond)")
    parser.add_argument("--max-request-bytes", type=int, default=1 << 20, help="largest request body (413 beyond)")
    parser.add_argument("--request-body-seconds", type=_seconds, default=60.0,
                        help="time a request body may take to arrive (408 beyond)")
    parser.add_argument("--max-connections", type=_positive_int, default=1000, metavar="N",
                        help="client connections open at once; one more is closed as it opens")
    parser.add_argument("--header-timeout", type=_seconds, default=10.0, metavar="SECONDS",
                        help="time a request's headers may take to arrive, from the connection's opening or the next "
                             "request's first byte (the connection is closed beyond)")
    parser.add_argument("--write-timeout", type=_seconds, default=60.0, metavar="SECONDS",
                        help="time a response may wait at a stretch for a client that reads none of it (the "
                             "connection is closed and its request aborted beyond)")
    parser.add_argument("--default-max-tokens", type=int, default=256, help="new tokens when a request sets none")
    parser.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (or 'x-api-key: KEY') on every route but /health, /metrics, "
                             "/info, /version, /docs and /openapi.json")
    parser.add_argument("--cors-allow-origin", action="append", default=None, metavar="ORIGIN",
                        help="allow cross-origin requests from ORIGIN (repeatable; '*' for any)")
    parser.add_argument("--tool-call-parser", default="auto",
                        choices=["auto", "hermes", "llama3_json", "mistral"],
                        help="how tool calls are read from the model's text (auto: from the chat template's "
                             "markers, else hermes)")
    parser.add_argument("--reasoning-parser", default="auto", choices=["auto", "qwen3", "deepseek_r1", "none"],
                        help="split <think>...</think> into reasoning_content (auto: when the chat template "
                             "speaks <think>; none: never)")
    parser.add_argument("--stored-responses", type=int, default=1000,
                        help="responses kept in memory for /v1/responses previous_response_id")
    parser.add_argument("--block-size", type=int, default=16, help="tokens per KV-cache block")
    parser.add_argument("--num-kv-blocks", type=int, default=None, help="KV pool size in blocks (default: memory)")
    parser.add_argument("--kv-cache-memory", type=float, default=None, help="KV pool size in GiB (default: auto)")
    parser.add_argument("--max-num-seqs", type=int, default=64, help="largest running batch")
    parser.add_argument("--max-batch-tokens", type=int, default=512, help="tokens computed per step (chunked prefill)")
    parser.add_argument("--no-prefix-caching", action="store_true", help="do not reuse KV blocks of shared prefixes")
    parser.add_argument("--speculative-ngram", type=_draft_length, default=0, metavar="K",
                        help="prompt-lookup speculative decoding by default: up to K draft tokens per step, verified "
                             "in the same step (0: off; a request's `speculative` field overrides it)")
    parser.add_argument("--draft-model", default=None, metavar="SOURCE",
                        help="a smaller model with MODEL's tokenizer (folder, .gguf, hub id) whose greedy drafts "
                             "requests may ask for with speculative.method 'draft_model'")
    parser.add_argument("--speculative-draft", type=_draft_length, default=0, metavar="K",
                        help="draft-model speculative decoding by default (needs --draft-model): up to K drafts per "
                             "step (0: off; a request's `speculative` field overrides it)")
    parser.add_argument("--speculative-step-tokens", type=int, default=8, metavar="N",
                        help="drafts run only while a step's rows x (1 + drafts) stay within N positions (default 8: "
                             "beyond it a CPU step is compute-bound and speculation slows a busy server)")
    parser.add_argument("--threads", default="auto",
                        help="torch threads of the engine: a number, or auto (default): chosen from measured step "
                             "times between 1 (best on a busy shared CPU) and torch's default (best when idle)")
    parser.add_argument("--lora", action="append", default=None, metavar="NAME=PATH",
                        help="serve a PEFT LoRA adapter folder under NAME (repeatable); a request selects it with "
                             "model=NAME (OpenAI) or adapter_id=NAME (TGI). Example: --lora sql=./sql-lora")
    parser.add_argument("--allow-runtime-lora", action="store_true",
                        help="enable POST /v1/load_lora_adapter and /v1/unload_lora_adapter")
    parser.add_argument("--data-parallel-size", type=int, default=1,
                        help="engine replicas, each its own process with --threads threads (auto: the cores / N), "
                             "behind this one server: least-loaded routing with prefix-cache affinity")
    parser.add_argument("--log-level", default="info")
    add_parallel_args(parser)


def _seconds(text: str) -> float:
    """A time limit flag: a finite number of seconds more than 0."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not (math.isfinite(seconds) and seconds > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds more than 0, got {text!r}")
    return seconds


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"a whole number of at least 1, got {text!r}")
    return value


def _draft_length(text: str) -> int:
    """--speculative-ngram's K, checked where the flag is read (the engine's own bounds)."""
    from ..engine.spec_params import SpeculativeConfig

    try:
        return SpeculativeConfig(int(text)).num_speculative_tokens
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error).replace("speculative.num_speculative_tokens", "K")) from None


def lora_adapters(specs: list[str] | None) -> dict[str, str]:
    """`--lora NAME=PATH` flags → {name: path}; SystemExit naming a malformed or repeated one."""
    adapters: dict[str, str] = {}
    for spec in specs or []:
        name, separator, path = spec.partition("=")
        if not separator or not name or not path:
            raise SystemExit(f"tokenmill serve: --lora takes NAME=PATH, got {spec!r}")
        if name in adapters:
            raise SystemExit(f"tokenmill serve: --lora {name!r} is given twice")
        adapters[name] = path
    return adapters


def _thread_tuner(threads: str):
    """None for a fixed count (set here, before the model loads, so its execution policy records it and the
    engine's runner applies it), else a tuner."""
    import torch

    from ..engine.thread_tuner import ThreadTuner

    if threads == "auto":
        most = torch.get_num_threads()
        return ThreadTuner([1, most]) if most > 1 else None
    torch.set_num_threads(thread_count(threads))
    return None


def engine_config_of(args: argparse.Namespace):
    from ..engine.engine import EngineConfig

    return EngineConfig(
        block_size=args.block_size, num_blocks=args.num_kv_blocks,
        kv_cache_memory=int(args.kv_cache_memory * (1 << 30)) if args.kv_cache_memory else None,
        max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_batch_tokens,
        enable_prefix_caching=not args.no_prefix_caching,
        speculative=default_speculation(args), speculative_step_tokens=args.speculative_step_tokens,
        draft_model=args.draft_model,
    )


def default_speculation(args: argparse.Namespace):
    """--speculative-ngram K or --speculative-draft K (with --draft-model) as the requests' default."""
    from ..engine.spec_params import SpeculativeConfig

    if args.speculative_ngram and args.speculative_draft:
        raise SystemExit("tokenmill serve: --speculative-ngram and --speculative-draft are alternatives; give one")
    if args.speculative_draft and not args.draft_model:
        raise SystemExit("tokenmill serve: --speculative-draft needs --draft-model SOURCE")
    if args.speculative_draft:
        return SpeculativeConfig(args.speculative_draft, method="draft_model")
    return SpeculativeConfig(args.speculative_ngram) if args.speculative_ngram else None


def server_settings(args: argparse.Namespace):
    from ..server.settings import ServerSettings

    return ServerSettings(
        model_name=args.served_model_name or (args.model or "SmolLM2-135M-Instruct"),
        max_concurrent_requests=args.max_concurrent_requests, max_input_tokens=args.max_input_tokens,
        max_total_tokens=args.max_total_tokens, max_request_bytes=args.max_request_bytes,
        request_body_seconds=args.request_body_seconds, header_timeout_seconds=args.header_timeout,
        max_connections=args.max_connections,
        write_timeout_seconds=args.write_timeout,
        default_max_tokens=args.default_max_tokens, api_key=args.api_key, cors_origins=args.cors_allow_origin,
        max_sequences_per_request=args.max_sequences_per_request, engine_stall_seconds=args.engine_stall_seconds,
        tool_call_parser=None if args.tool_call_parser == "auto" else args.tool_call_parser,
        reasoning_parser=None if args.reasoning_parser == "auto" else args.reasoning_parser,
        stored_responses=args.stored_responses,
        allow_runtime_lora=args.allow_runtime_lora,
    )


def main(args: argparse.Namespace) -> int:
    from ..auto import AutoModelForCausalLM, AutoTokenizer
    from ..loading.default_model import default_model_path
    from ..server.app import build_server_app
    from ..server.runner import make_server

    if args.data_parallel_size != 1:
        from .serve_replicas import serve_replicas

        if args.tensor_parallel_size != 1:
            raise SystemExit("tokenmill serve: --data-parallel-size with --tensor-parallel-size is not supported: "
                             "choose one")
        return serve_replicas(args, server_settings(args), engine_config_of(args), lora_adapters(args.lora))
    parallel = tensor_parallel_kwargs(args)  # --tensor-parallel-size: this process is one rank
    thread_tuner = None if parallel else _thread_tuner(args.threads)  # a tuner would change rank 0's threads only
    adapters = lora_adapters(args.lora)
    source = args.model if args.model is not None else default_model_path()
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=args.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=args.gguf_file, dtype=args.dtype,
                                                 device=args.device, quantization_config=args.quantize,
                                                 precision=args.precision, **parallel)
    if parallel and parallel["tensor_parallel"].rank != 0:
        from ..engine.parallel_runner import follow_steps

        follow_steps(model)  # rank 0 runs the server and the engine; this rank runs its share of each step
        return 0
    engine_config, settings = engine_config_of(args), server_settings(args)
    if settings.model_name in adapters:
        raise SystemExit(f"tokenmill serve: --lora {settings.model_name!r} is the served model's own name")
    try:
        app = build_server_app(model, tokenizer, engine_config, settings, thread_tuner, adapters)
    except (KeyError, ValueError) as error:  # an adapter folder that cannot be read or does not fit the model
        raise SystemExit(f"tokenmill serve: {error}") from None
    info = app.state.tokenmill.engine.model_info()
    print(f"tokenmill: serving {settings.model_name!r} on http://{args.host}:{args.port} "
          f"({info.kv_blocks} KV blocks of {info.block_size} tokens)", file=sys.stderr)
    make_server(app, args.host, args.port, args.log_level).run()
    app.state.tokenmill.engine.shutdown()
    if parallel:
        app.state.tokenmill.engine.engine.runner.stop_followers()
    return 0
