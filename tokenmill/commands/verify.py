"""`tokenmill verify MODEL`: fixed prompts through tokenmill and transformers (the user's own oracle), token ids
shared; prints the largest |Δlogit|, how many greedy tokens agree, and the speed ratio.

transformers is imported here only, inside the command, only when run (as `bench --vs transformers` does): it is
the comparison, never a dependency. A GGUF reaches it through `gguf_file=` (needs the `gguf` package) or, where
that fails, through the Hugging Face folder `tokenmill convert` writes.

A greedy divergence is explained when transformers' own top-two gap at that step is at most 2·max|Δlogit|: logits
that differ by at most d cannot swap an argmax whose gap exceeds 2d. The logits agree when max|Δlogit| is within
RELATIVE_TOLERANCE of the largest |logit| (float32: rounding of thousands of accumulated products stays far below
1e-3; 16-bit formats keep 8 or 11 bits). A disagreement of either kind exits with status 1.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .common import add_model_arg, model_source

EXAMPLE = """examples:
  tokenmill verify                      (the embedded SmolLM2)
  tokenmill verify model.gguf --new-tokens 32 --dtype float32"""

RELATIVE_TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 6e-2, torch.float16: 1e-2}
PROMPTS = ["The capital of France is", "def fibonacci(n):\n    ", "Once upon a time, a small robot"]


def add_args(parser: argparse.ArgumentParser) -> None:
    add_model_arg(parser)
    parser.add_argument("--gguf-file", default=None, help="GGUF file name inside MODEL (folder or Hub repo)")
    parser.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16, for both engines")
    parser.add_argument("--new-tokens", type=int, default=16, help="greedy tokens generated per prompt")
    parser.add_argument("--prompt", action="append", default=None, metavar="TEXT",
                        help="a prompt to use instead of the fixed ones (repeatable)")


@dataclass
class PromptResult:
    prompt: str
    max_delta: float  # largest |Δlogit| over the prompt and transformers' greedy tokens (teacher-forced)
    agreed: int  # greedy tokens equal before the first divergence
    compared: int  # greedy tokens transformers produced
    divergence_gap: float | None  # transformers' logit gap between its token and tokenmill's where they split
    tokenmill_seconds: float
    transformers_seconds: float
    tolerance: float = float("inf")  # the largest max_delta called agreement (RELATIVE_TOLERANCE × max |logit|)

    @property
    def explained(self) -> bool:
        return self.divergence_gap is None or self.divergence_gap <= 2 * self.max_delta

    @property
    def agrees(self) -> bool:
        return self.max_delta <= self.tolerance and self.explained


def _greedy(model, ids: list[int], new_tokens: int) -> tuple[list[int], float]:
    started = time.perf_counter()
    with torch.no_grad():
        output = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                max_new_tokens=new_tokens, do_sample=False)
    return output[0, len(ids):].tolist(), time.perf_counter() - started


def _logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float()


def compare_prompt(prompt: str, ids: list[int], ours, theirs, new_tokens: int,
                   relative_tolerance: float = RELATIVE_TOLERANCE[torch.float32]) -> PromptResult:
    our_tokens, our_seconds = _greedy(ours, ids, new_tokens)
    their_tokens, their_seconds = _greedy(theirs, ids, new_tokens)
    sequence = ids + their_tokens
    our_logits, their_logits = _logits(ours, sequence), _logits(theirs, sequence)
    max_delta = (our_logits - their_logits).abs().max().item()
    agreed = 0
    while agreed < min(len(our_tokens), len(their_tokens)) and our_tokens[agreed] == their_tokens[agreed]:
        agreed += 1
    gap = None
    if agreed < len(their_tokens):
        row = their_logits[len(ids) + agreed - 1]
        ours_choice = our_tokens[agreed] if agreed < len(our_tokens) else int(our_logits[len(ids) + agreed - 1]
                                                                               .argmax())
        gap = (row[their_tokens[agreed]] - row[ours_choice]).item()
    tolerance = relative_tolerance * their_logits.abs().max().item()
    return PromptResult(prompt, max_delta, agreed, len(their_tokens), gap, our_seconds, their_seconds, tolerance)


def load_transformers_model(transformers, source: Path | str, gguf_file: str | None, dtype: torch.dtype,
                            scratch: Path):
    """(model, how it was loaded): gguf_file= for a GGUF where transformers can read it, else tokenmill's
    conversion to a Hugging Face folder; a folder or Hub id as it is."""
    path = Path(source)
    if path.suffix == ".gguf" or gguf_file:
        folder, name = (path.parent, path.name) if path.suffix == ".gguf" else (path, gguf_file)
        try:
            model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=name, dtype=dtype)
            return model.eval(), "the GGUF through transformers' gguf_file="
        except Exception as error:  # noqa: BLE001 - any failure of its GGUF reader: fall back to a converted folder
            reason = str(error).splitlines()[0][:120]
        from ..assembly.convert import convert_gguf

        convert_gguf(folder / name, scratch, dtype=torch.float32, progress=False)
        model = transformers.AutoModelForCausalLM.from_pretrained(str(scratch), dtype=dtype)
        return model.eval(), f"tokenmill convert's folder (its gguf_file= failed: {reason})"
    return transformers.AutoModelForCausalLM.from_pretrained(str(source), dtype=dtype).eval(), str(source)


def format_report(results: list[PromptResult], how: str) -> str:
    lines = [f"transformers loaded {how}", "",
             f"{'prompt':<34} {'max |Δlogit|':>12} {'greedy agree':>13} {'tokenmill s':>11} {'transformers s':>14}"]
    for result in results:
        shown = repr(result.prompt)[:32]
        agree = f"{result.agreed}/{result.compared}"
        lines.append(f"{shown:<34} {result.max_delta:>12.2e} {agree:>13} {result.tokenmill_seconds:>11.2f} "
                     f"{result.transformers_seconds:>14.2f}")
        if result.max_delta > result.tolerance:
            lines.append(f"  LOGITS DIFFER: max|Δlogit| {result.max_delta:.2e} above the tolerance "
                         f"{result.tolerance:.2e} (relative to the largest |logit|)")
        if result.divergence_gap is not None:
            verdict = ("a near-tie: expected" if result.explained
                       else "NOT a near-tie: tokenmill disagrees with transformers")
            lines.append(f"  diverges at token {result.agreed + 1}: transformers' gap {result.divergence_gap:.2e} "
                         f"vs 2·max|Δlogit| {2 * result.max_delta:.2e}, {verdict}")
    ours = sum(r.tokenmill_seconds for r in results)
    theirs = sum(r.transformers_seconds for r in results)
    agreed, compared = sum(r.agreed for r in results), sum(r.compared for r in results)
    lines += ["", f"max |Δlogit| {max(r.max_delta for r in results):.2e}; greedy {agreed}/{compared} tokens agree; "
                  f"speed: tokenmill {theirs / ours:.2f}x transformers (greedy generation, same process, "
                  f"{torch.get_num_threads()} threads)"]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    from ..assembly.pretrained import parse_dtype
    from ..auto import AutoModelForCausalLM, AutoTokenizer

    if args.new_tokens < 1:
        raise ValueError(f"--new-tokens must be at least 1, got {args.new_tokens}")
    try:
        transformers = importlib.import_module("transformers")
    except ImportError:
        print("tokenmill verify compares against transformers, which is not installed here: "
              "pip install transformers (and gguf for GGUF files), then run it again", file=sys.stderr)
        return 1
    source, dtype = model_source(args), parse_dtype(args.dtype, "float32")
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=args.gguf_file)
    ours = AutoModelForCausalLM.from_pretrained(source, gguf_file=args.gguf_file, dtype=dtype, progress=False)
    with tempfile.TemporaryDirectory(prefix="tokenmill-verify-") as scratch:
        theirs, how = load_transformers_model(transformers, source, args.gguf_file, dtype, Path(scratch))
        prompts = args.prompt or PROMPTS
        encoded = [list(tokenizer.encode(prompt)) for prompt in prompts]
        for model in (ours, theirs):  # warm-up: first-call costs out of the timings
            _greedy(model, encoded[0], 2)
        tolerance = RELATIVE_TOLERANCE.get(dtype, RELATIVE_TOLERANCE[torch.float32])
        results = [compare_prompt(prompt, ids, ours, theirs, args.new_tokens, tolerance)
                   for prompt, ids in zip(prompts, encoded)]
    print(format_report(results, how))
    return 0 if all(result.agrees for result in results) else 1
