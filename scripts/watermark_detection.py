"""Watermark detection rate on SmolLM2-135M-Instruct: the same 20 prompts sampled with and without the
Kirchenbauer green-list watermark (transformers' default WatermarkingConfig: green ratio 0.25, bias 2.0,
lefthash), scored by WatermarkDetector at several text lengths.

    .venv/bin/python scripts/watermark_detection.py [new_tokens=80] [bias=2.0]
"""

from __future__ import annotations

import sys
import time

import torch

from tokenmill import AutoModelForCausalLM
from tokenmill.generation.watermark import WatermarkDetector, WatermarkingConfig
from tokenmill.loading.default_model import default_model_path
from tokenmill.tokenizer import Tokenizer

TOPICS = ["the ocean", "a city at night", "learning to cook", "mountains", "a rainy day", "old books", "trains",
          "coffee", "the moon", "gardening", "music", "winter", "a small village", "the desert", "friendship",
          "computers", "a river", "birds", "the market", "a long journey"]


def main() -> None:
    torch.set_num_threads(1)
    new_tokens = int(sys.argv[1]) if len(sys.argv) > 1 else 80
    bias = float(sys.argv[2]) if len(sys.argv) > 2 else 2.0
    path = default_model_path()
    model, tokenizer = AutoModelForCausalLM.from_pretrained(path), Tokenizer.from_gguf(path)
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": f"Write a short paragraph about {topic}."}],
                                             tokenize=False, add_generation_prompt=True) for topic in TOPICS]
    tokenizer.padding_side = "left"
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    # eos_token_id=None: every text gets the same length, so rates at each length compare like with like
    common = dict(attention_mask=batch["attention_mask"], do_sample=True, temperature=0.7, max_new_tokens=new_tokens,
                  eos_token_id=None)
    config = WatermarkingConfig(bias=bias)
    detector = WatermarkDetector(model.config.vocab_size, bos_token_id=None, watermarking_config=config)
    print(f"{len(TOPICS)} prompts, {new_tokens} sampled tokens each (temperature 0.7), green ratio "
          f"{config.greenlist_ratio}, bias {config.bias}, {config.seeding_scheme}")
    print("| text | length | detected at z>4 | detected at z>3 | mean z | min z | max z | green fraction |")
    print("|---|---|---|---|---|---|---|---|")
    for name, extra in (("watermarked", dict(watermarking_config=config)), ("plain", {})):
        torch.manual_seed(1)
        start = time.perf_counter()
        generated = model.generate(batch["input_ids"], **common, **extra)[:, batch["input_ids"].shape[1]:]
        seconds = time.perf_counter() - start
        for length in sorted({length for length in (25, 50, 100) if length < new_tokens} | {new_tokens}):
            result = detector(generated[:, :length], z_threshold=4.0, return_dict=True)
            print(f"| {name} | {length} | {int(result.prediction.sum())}/{len(TOPICS)} | "
                  f"{int((result.z_score > 3).sum())}/{len(TOPICS)} | {result.z_score.mean():.2f} | "
                  f"{result.z_score.min():.2f} | {result.z_score.max():.2f} | {result.green_fraction.mean():.3f} |",
                  flush=True)
        print(f"  ({name}: generated in {seconds:.0f} s; sample: "
              f"{tokenizer.decode(generated[0], skip_special_tokens=True)[:120]!r})")


if __name__ == "__main__":
    main()
