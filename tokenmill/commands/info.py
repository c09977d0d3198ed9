"""`tokenmill info SRC`: architecture, parameter count, dtypes / quant types, context, chat template, special tokens.
`tokenmill info --system`: this host's CPU and ISA, the kernels built for it, the GEMM libraries, torch."""

from __future__ import annotations

import argparse
import json

from .common import add_model_arg, add_precision_arg, model_source

EXAMPLE = """examples:
  tokenmill info model.gguf --json
  tokenmill info --system"""


def add_args(parser: argparse.ArgumentParser) -> None:
    add_model_arg(parser)
    parser.add_argument("--gguf-file", default=None)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--system", action="store_true",
                        help="describe this machine and the kernels a run uses on it instead of a checkpoint")
    execution = parser.add_argument_group("execution policy (loads the model)")
    execution.add_argument("--execution", action="store_true",
                           help="load the model and show how it would run: device, dtype, weight format, "
                                "kernel set, attention backend, threads")
    execution.add_argument("--dtype", default="auto", help="float32, bfloat16, float16 or auto")
    execution.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    execution.add_argument("--kernels", default=None, choices=["native", "exact", "torch"],
                           help="kernel set (default: the policy's choice)")
    execution.add_argument("--attn", default="sdpa", help="attention: sdpa, eager or native")
    add_precision_arg(execution)


def _human(count: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size:
            return f"{count / size:.1f}{unit}"
    return str(count)


def _print_rows(rows: list[tuple[str, object]]) -> None:
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def system_main(args: argparse.Namespace) -> int:
    import torch

    from .. import kernels
    from ..execution.calibration import describe_machine
    from ..kernels.system import describe

    if args.model is not None or args.gguf_file is not None:
        raise ValueError("info --system describes this machine: give it no checkpoint")
    info = describe()
    info["gemm_calibration"] = describe_machine(torch.get_num_threads(), kernels.build_id())
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    blocks, torch_info = info["block_kernels"], info["torch"]
    built = blocks["built_isa"] or "none (dense float32 weights)"
    _print_rows([
        ("cpu", f"{info['cpu_model']} ({info['machine']})"),
        ("isa", ", ".join(name for name, present in info["isa"].items() if present) or "baseline"),
        ("amx", "present" if info["isa"].get("amx") else "absent"),
        ("block kernels", f"{built} (TOKENMILL_KERNEL_ISA={blocks['requested_isa']})"),
        ("gemm dense / prefill", f"{info['gemm']['dense']} / {info['gemm']['prefill']}"),
        ("torch", f"{torch_info['version']}, {torch_info['threads']} threads"),
    ] + _gemm_rows(info["gemm_calibration"]))
    return 0


def _gemm_rows(calibration: dict) -> list[tuple[str, object]]:
    """The block matmuls' GEMM switch: the setting, then each measured shape's rule (out x in : type : kernel)."""
    rows = [("gemm calibration", f"{calibration['state']}; default rule: {calibration['default']}"),
            ("gemm cache", calibration["cache"] if calibration["shapes"] else
             f"{calibration['cache']} (none yet: written at the first load of a GGUF model)")]
    return rows + [("gemm rule", f"{key}: {rule}") for key, rule in calibration["shapes"].items()]


def _execution_policy(args: argparse.Namespace):
    """The policy the loader chooses for this source and these flags (loading is how to know it for sure)."""
    from ..auto import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_source(args), gguf_file=args.gguf_file, dtype=args.dtype,
                                                 device=args.device, kernels=args.kernels,
                                                 attn_implementation=args.attn, precision=args.precision,
                                                 progress=False)
    return model.execution_policy


def main(args: argparse.Namespace) -> int:
    if args.system:
        return system_main(args)
    from ..assembly.describe import describe

    info = describe(model_source(args), args.gguf_file)
    args.execution = args.execution or args.precision != "exact"  # asking for a precision asks how it would run
    if args.execution:
        info["execution_policy"] = _execution_policy(args).as_dict()
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
    if args.execution:
        rows += [(f"execution {name}", value) for name, value in info["execution_policy"].items()]
    _print_rows(rows)
    return 0
