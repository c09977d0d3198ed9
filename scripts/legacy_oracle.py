"""Record contrastive search, DoLa and diverse beam search with transformers 4.55.4, the last release that ran
them in its core, into tests/generation/legacy_oracle.json (replayed by tests/generation/test_legacy_oracle.py).

The old release lives beside the project's environment, never in it:

    .venv/bin/pip install --no-deps --target /tmp/oldtf transformers==4.55.4 huggingface_hub==0.35.3 tokenizers==0.21.4
    .venv/bin/python scripts/legacy_oracle.py /tmp/oldtf

The parent process (the project's environment) writes the tiny models; a child process with the old release first
on sys.path loads them with transformers and records each case of tests/generation/legacy_cases.py.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "generation"))


TOP = 8  # scores kept per row and step: the best TOP (index, value) pairs keep the file small


def rounded(values: list) -> list:
    """Floats as JSON: 7 significant digits, -inf as None."""
    return [None if math.isinf(value) else float(f"{value:.7g}") for value in values]


def top_scores(step) -> dict:
    """One step's [rows, vocab] scores → the best TOP token ids and their scores per row."""
    values, indices = step.float().topk(TOP, dim=-1)
    return {"ids": indices.tolist(), "values": [rounded(row) for row in values.tolist()]}


def record(models_folder: Path) -> dict:
    """Runs under the old transformers: every case → sequences, scores, beam data."""
    import torch
    import transformers

    import legacy_cases as cases

    assert transformers.__version__ == cases.ORACLE_VERSION, transformers.__version__
    torch.set_num_threads(1)
    digests = json.loads((models_folder / "digests.json").read_text())
    loaded = {name: transformers.AutoModelForCausalLM.from_pretrained(models_folder / name, torch_dtype=torch.float32).eval()
              for name in cases.MODELS}
    results = []
    for case in cases.CASES:
        model = loaded[case["model"]]
        ids, mask = cases.prompts(case["prompts"])
        kwargs = dict(cases.COMMON, **case["kwargs"])
        if isinstance(kwargs.get("eos_token_id"), str):
            kwargs["eos_token_id"] = cases.resolve_frequent(model.generate, ids, mask,
                                                            int(kwargs["eos_token_id"].split(":")[1]))
        torch.manual_seed(case.get("seed", 0))
        # the old release still runs these strategies in core (with a deprecation warning for some)
        out = model.generate(ids, attention_mask=mask, **kwargs)
        entry = {"name": case["name"], "kwargs": kwargs, "sequences": out.sequences.tolist(),
                 "scores": [top_scores(step) for step in out.scores],
                 "logits": [top_scores(step) for step in out.logits]}
        if getattr(out, "sequences_scores", None) is not None:
            entry["sequences_scores"] = rounded(out.sequences_scores.tolist())
            entry["beam_indices"] = out.beam_indices.tolist()
        results.append(entry)
        print(f"{case['name']}: {out.sequences.shape[1] - ids.shape[1]} new tokens", flush=True)
    return {"transformers": transformers.__version__, "torch": torch.__version__, "weights": digests,
            "cases": results}


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--record":
        folder = Path(sys.argv[2])
        (folder / "recording.json").write_text(json.dumps(record(folder)))
        return
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    import legacy_cases as cases

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        digests = {name: cases.write_model(folder / name, name) for name in cases.MODELS}
        (folder / "digests.json").write_text(json.dumps(digests))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([sys.argv[1], os.environ.get("PYTHONPATH", "")]))
        subprocess.run([sys.executable, __file__, "--record", str(folder)], env=env, check=True)
        recording = json.loads((folder / "recording.json").read_text())
    cases.RECORDING.write_text(json.dumps(recording, separators=(",", ":")) + "\n")
    print(f"wrote {cases.RECORDING.relative_to(ROOT)} ({cases.RECORDING.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
