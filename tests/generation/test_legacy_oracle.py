"""Contrastive search, DoLa and diverse beam search against transformers 4.55.4, the last release that ran them in
its core: its sequences, scores, sequence scores and beam indices were recorded by scripts/legacy_oracle.py
(legacy_oracle.json) on the same seeded weights, and tokenmill must reproduce them (beam_indices excepted, see
assert_beam_indices_trace_scores)."""

from __future__ import annotations

import json

import pytest
import torch

from tokenmill import AutoModelForCausalLM
from tokenmill.generation.transition_scores import compute_transition_scores

try:  # tests/generation is a plain folder on sys.path, or a package
    import legacy_cases as cases
    from numerics import score_tolerance
    from decoding_fixtures import single_thread  # noqa: F401
except ImportError:
    from . import legacy_cases as cases
    from .decoding_fixtures import single_thread  # noqa: F401

RECORDING = json.loads(cases.RECORDING.read_text())
RECORDED = {entry["name"]: entry for entry in RECORDING["cases"]}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("legacy-models")
    loaded = {}
    for name in cases.MODELS:
        digest = cases.write_model(folder / name, name)
        assert digest == RECORDING["weights"][name], (
            f"the seeded weights of {name} changed (torch RNG?): re-record with scripts/legacy_oracle.py")
        loaded[name] = AutoModelForCausalLM.from_pretrained(folder / name, dtype=torch.float32)
    return loaded


def test_recording_covers_every_case():
    assert RECORDING["transformers"] == cases.ORACLE_VERSION
    assert [case["name"] for case in cases.CASES] == list(RECORDED)


def assert_same_top_scores(model, ours: tuple, recorded: list, what: str, length: int, logits: tuple,
                           log_softmaxes: int) -> None:
    assert len(ours) == len(recorded), f"{what}: {len(ours)} steps, the oracle has {len(recorded)}"
    for step, (got, want) in enumerate(zip(ours, recorded)):
        want_ids = torch.tensor(want["ids"])
        want_values = torch.tensor([[float("-inf") if v is None else v for v in row] for row in want["values"]])
        got_values = got.float().gather(-1, want_ids)
        finite = torch.isfinite(want_values)
        assert torch.equal(torch.isfinite(got_values), finite), f"{what} step {step}: -inf pattern differs"
        # transformers 4.55 recorded float32 values and no float64: tests/numerics.py's bound for two float32 runs
        atol = score_tolerance(model.config, length + step, logits[step], log_softmaxes=log_softmaxes)
        torch.testing.assert_close(got_values[finite], want_values[finite], atol=atol, rtol=0,
                                   msg=lambda m: f"{what} step {step}: {m}")
        # and nothing outside the oracle's top list scores above its last entry
        assert bool((got.float().topk(1, dim=-1).values <= want_values[:, :1] + atol).all()), f"{what} step {step}"


@pytest.mark.parametrize("name", list(RECORDED))
def test_matches_transformers_4_55(models, name):
    case = next(case for case in cases.CASES if case["name"] == name)
    recorded = RECORDED[name]
    ids, mask = cases.prompts(case["prompts"])
    torch.manual_seed(case.get("seed", 0))
    model = models[case["model"]]
    out = model.generate(ids, attention_mask=mask, **recorded["kwargs"])
    assert out.sequences.tolist() == recorded["sequences"]
    contrasts = 2 if "dola_layers" in recorded["kwargs"] else 1  # DoLa's score: one log-softmax minus another
    assert_same_top_scores(model, out.scores, recorded["scores"], "scores", ids.shape[1], out.logits, contrasts)
    assert_same_top_scores(model, out.logits, recorded["logits"], "logits", ids.shape[1], out.logits, 1)
    if "sequences_scores" in recorded:
        expected = torch.tensor(recorded["sequences_scores"])
        steps = len(recorded["scores"])  # the same bound, once per step summed into the sequence score
        atol = score_tolerance(model.config, out.sequences.shape[1], torch.stack(out.logits).float(), steps)
        torch.testing.assert_close(out.sequences_scores, expected, atol=atol, rtol=0)
        assert_beam_indices_trace_scores(out, recorded["kwargs"], atol)


def assert_beam_indices_trace_scores(out, kwargs, atol: float) -> None:
    """transformers 4.55's group beam search recorded group-local row numbers looked up in a group-major tuple
    (so its compute_transition_scores did not add up); tokenmill records each step's flat beam row instead, so
    the chosen tokens' scores along beam_indices add up to the sequence score. That is checked here instead of
    equality with the oracle's beam_indices. A hypothesis that ended on eos is returned with eos_token_id[0]
    whichever eos id ended it (as transformers does), so its last step may be any of the eos ids."""
    steps = (out.beam_indices >= 0).sum(-1)
    length_penalty = kwargs.get("length_penalty", 1.0)
    eos_ids = kwargs.get("eos_token_id") or [None]
    for row in range(out.sequences.shape[0]):
        sums = []
        for eos in eos_ids:
            sequence = out.sequences[row:row + 1, :out.sequences.shape[1] - out.beam_indices.shape[1] + int(steps[row])]
            if eos is not None and int(sequence[0, -1]) in eos_ids:
                sequence = sequence.clone()
                sequence[0, -1] = eos
            indices = out.beam_indices[row:row + 1, :int(steps[row])]
            sums.append(float(compute_transition_scores(sequence, out.scores, indices).sum()))
        expected = float(out.sequences_scores[row]) * int(steps[row]) ** length_penalty
        # the same float32 scores summed in another order: within the sequence-score bound
        assert min(abs(total - expected) for total in sums) <= atol, (row, sums, expected)
