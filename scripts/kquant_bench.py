"""Quantize-at-load methods on one float folder (e.g. SmolLM2 made by `tokenmill convert`): weight bytes,
teacher-forced top-1 agreement with float32 over tests/data's text, quantizing time and batch-1 greedy decode
tok/s (one thread, decodes interleaved across methods, median of `--repeats`).

    python scripts/kquant_bench.py FOLDER q4_0 q4_k q5_k q6_k
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from tokenmill import AutoModelForCausalLM, AutoTokenizer
from tokenmill.layers.quantized_linear import BlockStorage

TEXT = Path(__file__).resolve().parent.parent / "tests" / "data" / "pride_and_prejudice_ch1-2.txt"


def weight_bytes(model) -> int:
    """Bytes of every parameter (a tied one once), block-stored weights at their block size."""
    blocks = sum(module.quantized_weight.blocks.numel() for module in model.modules()
                 if isinstance(module, BlockStorage))
    return blocks + sum(p.numel() * p.element_size() for p in model.parameters() if p.device.type != "meta")


def decode_rate(model, prompt: torch.Tensor, tokens: int) -> float:
    started = time.perf_counter()
    model.generate(prompt, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
    return tokens / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder", type=Path)
    parser.add_argument("methods", nargs="+")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)
    ids = AutoTokenizer.from_pretrained(args.folder)(TEXT.read_text(), return_tensors="pt").input_ids
    models = {"float32": AutoModelForCausalLM.from_pretrained(args.folder, progress=False)}
    seconds = {"float32": 0.0}
    for method in args.methods:
        started = time.perf_counter()
        models[method] = AutoModelForCausalLM.from_pretrained(args.folder, progress=False,
                                                              quantization_config={"method": method})
        seconds[method] = time.perf_counter() - started
    with torch.no_grad():
        reference = models["float32"](ids).logits[0].argmax(-1)
        agreement = {name: (model(ids).logits[0].argmax(-1) == reference).float().mean().item()
                     for name, model in models.items()}
    rates = {name: [] for name in models}
    for _ in range(args.repeats):
        for name, model in models.items():
            rates[name].append(decode_rate(model, ids[:, :16], args.tokens))
    print(f"{ids.shape[1]} teacher-forced positions; decode: batch 1, {args.tokens} tokens, 1 thread")
    print("method   weight MiB  top-1    load s  tok/s")
    for name, model in models.items():
        print(f"{name:8} {weight_bytes(model) / 2**20:10.1f}  {agreement[name]:.4f}  {seconds[name]:6.1f}  "
              f"{statistics.median(rates[name]):5.1f}")


if __name__ == "__main__":
    main()
