"""The CUDA device check (issue 16): run on a lent GPU by scripts/device_check.sh, results into OUT_DIR.

Stages, each timed and guarded (a failing stage is reported and the next runs), the later ones skipped once the
time budget is spent:
  models   random-weight Llama-3-8B- and Qwen2-1.5B-shaped models (transformers' own classes, bf16,
           save_pretrained to a temporary folder): nothing is downloaded;
  parity   tokenmill against transformers on each: max |logit difference| over a 64-token prompt, and greedy
           tokens (first 32) on 5 prompts;
  decode   generate() tok/s, tokenmill and transformers, batch 1, 8, 64, 512-token prompts, 128 new tokens;
  engine   LLM.generate over 256 concurrent sequences (128 new tokens), against transformers' batched generate.

    python scripts/device_check.py OUT_DIR [--budget-seconds 420] [--skip-8b]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

SHAPES = {
    "llama-8b": ("LlamaForCausalLM", "LlamaConfig", dict(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, max_position_embeddings=8192, rope_theta=500000.0, tie_word_embeddings=False)),
    "qwen2-1.5b": ("Qwen2ForCausalLM", "Qwen2Config", dict(
        vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
        num_key_value_heads=2, max_position_embeddings=32768, tie_word_embeddings=True)),
}


DEVICE = "cuda"  # --device cpu with --tiny: a smoke test of this script on a machine without a GPU


def synchronize() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def synchronized_seconds(function) -> float:
    synchronize()
    started = time.perf_counter()
    function()
    synchronize()
    return time.perf_counter() - started


def build(name: str, folder: Path):
    import transformers

    class_name, config_name, fields = SHAPES[name]
    config = getattr(transformers, config_name)(**fields, torch_dtype="bfloat16", bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    with torch.device(DEVICE):  # built in bf16 on the GPU (an 8B model in float32 would be 32 GB)
        oracle = getattr(transformers, class_name)._from_config(config, torch_dtype=torch.bfloat16).eval()
    oracle.save_pretrained(folder)
    return oracle


def parity(oracle, model, vocab: int) -> dict:
    generator = torch.Generator().manual_seed(1)
    prompt = torch.randint(3, vocab, (1, 64), generator=generator).to(DEVICE)
    with torch.no_grad():
        theirs = oracle(prompt).logits.float()
        mine = model(prompt).logits.float()
    prompts = [torch.randint(3, vocab, (1, 16), generator=generator).to(DEVICE) for _ in range(5)]
    same = []
    for ids in prompts:
        greedy = dict(max_new_tokens=32, min_new_tokens=32, do_sample=False)
        a = oracle.generate(ids, **greedy, pad_token_id=0)[0, 16:].tolist()
        b = model.generate(ids, **greedy)[0, 16:].tolist()
        same.append(next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a)))
    return {"max_abs_logit_diff": (mine - theirs).abs().max().item(), "logit_abs_max": theirs.abs().max().item(),
            "top1_agreement_64": (mine.argmax(-1) == theirs.argmax(-1)).float().mean().item(),
            "greedy_tokens_identical_before_first_difference": same}


def decode_rates(oracle, model, vocab: int, batches=(1, 8, 64)) -> dict:
    rates = {}
    for batch in batches:
        ids = torch.randint(3, vocab, (batch, 512)).to(DEVICE)
        greedy = dict(max_new_tokens=128, min_new_tokens=128, do_sample=False)
        runs = (("tokenmill", model, {}), ("tokenmill static+graph", model, {"cache_implementation": "static"}),
                ("transformers", oracle, {"pad_token_id": 0}))
        for label, engine, extra in runs:
            engine.generate(ids[:, :32], max_new_tokens=4, do_sample=False, **extra)  # warm-up
            seconds = synchronized_seconds(lambda: engine.generate(ids, **greedy, **extra))
            rates.setdefault(f"batch {batch}", {})[label] = batch * 128 / seconds
        row = rates[f"batch {batch}"]
        row["ratio"] = row["tokenmill"] / row["transformers"]
        print(f"  decode batch {batch}: {row}", flush=True)
    return rates


def engine_throughput(folder: Path, oracle, vocab: int, sequences: int = 256) -> dict:
    from tokenmill import LLM, SamplingParams

    prompts = [torch.randint(3, vocab, (128,)).tolist() for _ in range(sequences)]
    llm = LLM(str(folder), dtype=torch.bfloat16, device=DEVICE, skip_tokenizer_init=True, max_num_seqs=sequences,
              max_num_batched_tokens=8192,
              kv_cache_memory=(24 if DEVICE == "cuda" else 1) << 30)
    params = SamplingParams(max_tokens=128, temperature=0, ignore_eos=True)
    llm.generate([{"prompt_token_ids": p} for p in prompts[:4]], SamplingParams(max_tokens=4, temperature=0))
    seconds = synchronized_seconds(lambda: llm.generate([{"prompt_token_ids": p} for p in prompts], params))
    result = {"tokenmill_engine_tok_s": sequences * 128 / seconds}
    llm.shutdown()
    del llm
    ids = torch.tensor(prompts[:64]).to(DEVICE)  # transformers' batched generate, 64 rows at a time (its memory)
    seconds = synchronized_seconds(lambda: oracle.generate(ids, max_new_tokens=128, min_new_tokens=128,
                                                           do_sample=False, pad_token_id=0))
    result["transformers_batched_64_tok_s"] = 64 * 128 / seconds
    result["ratio"] = result["tokenmill_engine_tok_s"] / result["transformers_batched_64_tok_s"]
    return result


def engine_graphs(folder: Path, vocab: int, new_tokens: int = 64) -> dict:
    """The engine's decode steps replayed from CUDA graphs against the same engine eager (enforce_eager), at 1 and
    8 concurrent sequences: greedy tokens identical, decode tok/s of each."""
    from tokenmill import LLM, SamplingParams

    prompts = [torch.randint(3, vocab, (64,)).tolist() for _ in range(8)]
    params = SamplingParams(max_tokens=new_tokens, temperature=0, ignore_eos=True)
    result = {}
    for eager in (True, False):
        llm = LLM(str(folder), dtype=torch.bfloat16, device=DEVICE, skip_tokenizer_init=True, max_num_seqs=8,
                  kv_cache_memory=4 << 30, enforce_eager=eager)
        name = "eager" if eager else "graphs"
        result[f"{name}_captures"] = llm.engine.runner.graphs is not None
        for count in (1, 8):
            batch = [{"prompt_token_ids": p} for p in prompts[:count]]
            llm.generate(batch, SamplingParams(max_tokens=4, temperature=0))  # warm-up (and captures)
            outputs = []
            seconds = synchronized_seconds(lambda: outputs.extend(llm.generate(batch, params)))
            result[f"{name}_{count}_tok_s"] = count * new_tokens / seconds
            result[f"{name}_{count}_tokens"] = [o.outputs[0].token_ids for o in outputs]
        del llm
    for count in (1, 8):
        result[f"identical_{count}"] = result.pop(f"eager_{count}_tokens") == result.pop(f"graphs_{count}_tokens")
        result[f"speedup_{count}"] = result[f"graphs_{count}_tok_s"] / result[f"eager_{count}_tok_s"]
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--budget-seconds", type=float, default=420)
    parser.add_argument("--skip-8b", action="store_true")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="2-layer models of the same families (smoke test)")
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    if args.tiny:
        for _, _, fields in SHAPES.values():
            fields.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, vocab_size=512,
                          num_attention_heads=4, num_key_value_heads=2)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    report = {"device": torch.cuda.get_device_name(0) if DEVICE == "cuda" else DEVICE, "torch": torch.__version__, "stages": {}}

    def stage(name: str, function):
        if time.perf_counter() - started > args.budget_seconds:
            report["stages"][name] = {"skipped": "time budget spent"}
            return None
        print(f"== {name} ({time.perf_counter() - started:.0f} s)", flush=True)
        began = time.perf_counter()
        try:
            value = function()
            kept = value if isinstance(value, (dict, list, float, int, str)) else None  # not a model
            report["stages"][name] = {"seconds": round(time.perf_counter() - began, 1), "result": kept}
        except Exception as error:  # noqa: BLE001 - every stage reports, the next one runs
            traceback.print_exc()
            report["stages"][name] = {"error": f"{type(error).__name__}: {error}"}
            value = None
        (args.out / "device_check.json").write_text(json.dumps(report, indent=1, default=str))
        return value

    from tokenmill import AutoModelForCausalLM

    for name in (["qwen2-1.5b"] if args.skip_8b else ["qwen2-1.5b", "llama-8b"]):
        folder = Path(tempfile.mkdtemp(prefix=name))
        oracle = stage(f"{name}: build", lambda: build(name, folder))
        if oracle is None:
            continue
        vocab = oracle.config.vocab_size
        model = stage(f"{name}: load", lambda: AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch.bfloat16, device=DEVICE, progress=False))
        if model is not None:
            report[f"{name} policy"] = model.execution_policy.describe()
            stage(f"{name}: parity", lambda: parity(oracle, model, vocab))
            stage(f"{name}: decode", lambda: decode_rates(oracle, model, vocab))
            del model
            if DEVICE == "cuda":
                torch.cuda.empty_cache()
        stage(f"{name}: engine graphs", lambda: engine_graphs(folder, vocab))
        stage(f"{name}: engine", lambda: engine_throughput(folder, oracle, vocab))
        del oracle
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
    print(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
