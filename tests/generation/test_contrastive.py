"""Contrastive search and DoLa against a direct, cache-free implementation of each paper's formula on
transformers' own model (recomputing everything at every step), and each formula on small hand-made tensors.
transformers 5.x no longer ships either in its core; test_legacy_oracle.py checks both against transformers 4.55,
the last release that did."""

from __future__ import annotations

import math

import pytest
import torch

from tokenmill import AutoModelForCausalLM
from tokenmill.generation.contrastive import dola_candidate_layers

# single_thread is an autouse fixture (one intra-op thread for tiny models)
try:  # tests/generation is a plain folder on sys.path, or a package
    from decoding_fixtures import left_padded_prompts, save_tiny_llama, single_thread  # noqa: F401
except ImportError:
    from .decoding_fixtures import left_padded_prompts, save_tiny_llama, single_thread  # noqa: F401

NEW_TOKENS = 10


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("contrastive-llama")
    oracle = save_tiny_llama(folder, layers=4, logit_scale=4.0)
    return oracle, AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)


@torch.no_grad()
def reference_contrastive(oracle, prompt: torch.Tensor, alpha: float, k: int) -> torch.Tensor:
    """Su et al. 2022, eq. 5, one unpadded prompt, no cache: argmax_v (1-a) p(v|x) - a max_j cos(h_v, h_j)."""
    sequence = prompt.clone()
    for _ in range(NEW_TOKENS):
        out = oracle(sequence, output_hidden_states=True)
        context = out.hidden_states[-1][0]  # [t, h]
        probs = torch.softmax(out.logits[0, -1], -1)
        top_probs, top_ids = probs.topk(k)
        best, best_score = None, -math.inf
        for prob, token in zip(top_probs.tolist(), top_ids.tolist()):
            extended = torch.cat([sequence, torch.tensor([[token]])], dim=1)
            hidden = oracle(extended, output_hidden_states=True).hidden_states[-1][0, -1]
            penalty = torch.nn.functional.cosine_similarity(context, hidden[None], dim=-1).max().item()
            score = (1 - alpha) * prob - alpha * penalty
            if score > best_score:
                best, best_score = token, score
        sequence = torch.cat([sequence, torch.tensor([[best]])], dim=1)
    return sequence


@torch.no_grad()
def reference_dola(oracle, prompt: torch.Tensor, layers: list[int]) -> torch.Tensor:
    """Chuang et al. 2023: premature layer = the candidate most divergent from the final layer; score =
    log p_final - log p_layer on the tokens with p_final >= 0.1 max p_final; greedy. The divergence is the one
    the paper's reference code computes: 0.5 * (KL(M || final) + KL(M || layer)), mean over the vocabulary; an
    early layer is read through lm_head alone, as that code (and transformers) does."""
    sequence = prompt.clone()
    for _ in range(NEW_TOKENS):
        out = oracle(sequence, output_hidden_states=True)
        final = torch.log_softmax(out.logits[0, -1], -1)
        best_layer, best_jsd = None, -math.inf
        for layer in layers:
            early = torch.log_softmax(oracle.lm_head(out.hidden_states[layer][0, -1]), -1)
            mixture = 0.5 * (final.exp() + early.exp())
            jsd = 0.5 * (torch.mean(mixture * (mixture.log() - final)) + torch.mean(mixture * (mixture.log() - early)))
            if jsd > best_jsd:
                best_layer, best_jsd = early, jsd
        plausible = final >= final.max() + math.log(0.1)
        contrast = torch.where(plausible, final - best_layer, torch.tensor(-math.inf))
        sequence = torch.cat([sequence, contrast.argmax().view(1, 1)], dim=1)
    return sequence


@pytest.mark.parametrize("alpha, k", [(0.6, 4), (0.3, 6)])
def test_contrastive_search_matches_paper_formula(pair, alpha, k):
    oracle, model = pair
    ids, _ = left_padded_prompts(batch=2, pads=(0, 0), length=8)
    ours = model.generate(ids, penalty_alpha=alpha, top_k=k, max_new_tokens=NEW_TOKENS, eos_token_id=None)
    for row in range(ids.shape[0]):
        assert torch.equal(ours[row:row + 1], reference_contrastive(oracle, ids[row:row + 1], alpha, k))


def test_contrastive_search_left_padding_matches_unpadded(pair):
    _, model = pair
    ids, mask = left_padded_prompts(batch=3, pads=(3, 0, 1), length=8)
    batched = model.generate(ids, attention_mask=mask, penalty_alpha=0.6, top_k=4, max_new_tokens=NEW_TOKENS,
                             eos_token_id=None)
    for row in range(3):
        alone = ids[row:row + 1, int((mask[row] == 0).sum()):]
        single = model.generate(alone, penalty_alpha=0.6, top_k=4, max_new_tokens=NEW_TOKENS, eos_token_id=None)
        assert torch.equal(batched[row, -NEW_TOKENS:], single[0, -NEW_TOKENS:])


@pytest.mark.parametrize("dola_layers", ["low", "high", [1, 3]])
def test_dola_matches_paper_formula(pair, dola_layers):
    oracle, model = pair
    ids, _ = left_padded_prompts(batch=2, pads=(0, 0), length=8)
    layers = dola_candidate_layers(dola_layers, 4, tied_embeddings=False)
    for row in range(ids.shape[0]):  # one prompt per call: transformers picks one premature layer per batch
        ours = model.generate(ids[row:row + 1], dola_layers=dola_layers, max_new_tokens=NEW_TOKENS,
                              eos_token_id=None, do_sample=False)
        assert torch.equal(ours, reference_dola(oracle, ids[row:row + 1], layers))


def test_dola_layer_presets():
    assert dola_candidate_layers("low", 30, False) == list(range(0, 15, 2))
    assert dola_candidate_layers("high", 30, True) == list(range(15, 30, 2))
    assert dola_candidate_layers("low", 48, True) == list(range(2, 20, 2))
    assert dola_candidate_layers("high", 48, False) == list(range(28, 48, 2))
    assert dola_candidate_layers("low", 2, True) == [1]  # transformers starts at 1 for a tied 2-layer model
    assert dola_candidate_layers([0, 5, 40], 30, False) == [0, 5]
    with pytest.raises(ValueError, match="dola_layers"):
        dola_candidate_layers("middle", 30, False)


def test_stop_on_eos_and_streamer(pair):
    _, model = pair
    ids, _ = left_padded_prompts(batch=1, pads=(0,), length=8)
    for settings in (dict(penalty_alpha=0.6, top_k=4), dict(dola_layers="high")):
        free = model.generate(ids, max_new_tokens=NEW_TOKENS, eos_token_id=None, **settings)
        eos = int(free[0, ids.shape[1] + 4])  # a token this strategy emits mid-way
        chunks = []

        class Recorder:
            def put(self, value):
                chunks.append(value.reshape(-1).tolist())

            def end(self):
                chunks.append("end")

        out = model.generate(ids, max_new_tokens=NEW_TOKENS, eos_token_id=eos, streamer=Recorder(), **settings)
        generated = out[0, ids.shape[1]:].tolist()
        assert generated[-1] == eos and eos not in generated[:-1]
        assert sum(chunks[1:-1], []) == generated and chunks[-1] == "end"


# ---- the formulas on small tensors ----

def test_degeneration_penalty_and_choice_on_small_tensors():
    """Su et al. eq. 5 by hand: context vectors e1, e2 (and a padded slot), candidates along e1 and e3."""
    from tokenmill.generation.contrastive import contrastive_choice, degeneration_penalty

    context = torch.tensor([[[1.0, 0, 0], [0, 2.0, 0], [0, 0, 5.0]]])
    mask = torch.tensor([[1, 1, 0]])  # the third context slot is padding: never a repeat
    candidates = torch.tensor([[[3.0, 0, 0], [0, 0, 1.0]]])
    penalty = degeneration_penalty(context, mask, candidates)
    # cosine similarities of exact small vectors: a few float32 roundings, within torch's float32 defaults (rtol ~22u)
    torch.testing.assert_close(penalty, torch.tensor([[1.0, 0.0]]))
    probs = torch.tensor([[0.7, 0.3]])
    # alpha 0.2: 0.8*0.7-0.2*1 = 0.36 > 0.24 → the likelier candidate; alpha 0.6: 0.28-0.6 < 0.12 → the novel one
    assert contrastive_choice(probs, penalty, 0.2).tolist() == [0]
    assert contrastive_choice(probs, penalty, 0.6).tolist() == [1]


def test_dola_formulas_on_small_tensors():
    """Jensen-Shannon divergence, the 0.1 x max plausibility filter and the layer contrast, computed by hand."""
    from tokenmill.generation.contrastive import dola_contrast, jensen_shannon, relative_top_filter

    final = torch.log(torch.tensor([[0.6, 0.3, 0.05, 0.05]]))
    layers = torch.log(torch.tensor([[[0.25, 0.25, 0.25, 0.25]], [[0.6, 0.3, 0.05, 0.05]]]))
    p, q = final.exp()[0], layers.exp()[0, 0]
    m = (p + q) / 2
    by_hand = 0.5 * ((m * (m / p).log()).mean() + (m * (m / q).log()).mean())
    divergence = jensen_shannon(final, layers)
    # a handful of float32 operations on a few values, each rounding by at most u = 2**-24: torch's float32
    # defaults (rtol 1.3e-6 ~ 22u, atol 1e-5) hold them with room
    torch.testing.assert_close(divergence[0, 0], by_hand)
    assert float(divergence[1, 0]) == 0.0  # identical distributions
    kept, base = relative_top_filter(final, layers[0])
    assert torch.isinf(kept[0, 2:]).all() and torch.isfinite(kept[0, :2]).all()  # 0.05 < 0.1 * 0.6
    assert (base[0, 2:] == -1e-3).all()
    # the contrast picks the most divergent (uniform) layer: log p_final - log(1/4) on the plausible tokens
    contrast = dola_contrast(final, layers)
    # one float32 log-softmax of 4 values and a subtraction: torch's float32 defaults (rtol ~22u) hold it
    torch.testing.assert_close(contrast[0, :2], final[0, :2] - math.log(0.25))
    assert torch.isinf(contrast[0, 2:]).all()
