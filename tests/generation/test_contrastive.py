"""Contrastive search and DoLa. transformers 5.23 no longer ships either in its core (both moved to Hub
`custom_generate` repos, unreachable here), so the oracle is a direct, cache-free implementation of each paper's
formula on transformers' own model, recomputing everything from scratch at every step."""

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
    the paper's reference code computes: 0.5 * (KL(M || final) + KL(M || layer)), mean over the vocabulary."""
    sequence = prompt.clone()
    for _ in range(NEW_TOKENS):
        out = oracle(sequence, output_hidden_states=True)
        final = torch.log_softmax(out.logits[0, -1], -1)
        best_layer, best_jsd = None, -math.inf
        for layer in layers:
            early = torch.log_softmax(oracle.lm_head(oracle.model.norm(out.hidden_states[layer][0, -1])), -1)
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
    ours = model.generate(ids, dola_layers=dola_layers, max_new_tokens=NEW_TOKENS, eos_token_id=None,
                          do_sample=False)
    for row in range(ids.shape[0]):
        assert torch.equal(ours[row:row + 1], reference_dola(oracle, ids[row:row + 1], layers))


def test_dola_layer_presets():
    assert dola_candidate_layers("low", 30, False) == list(range(0, 15, 2))
    assert dola_candidate_layers("high", 30, True) == list(range(15, 30, 2))
    assert dola_candidate_layers("low", 48, True) == list(range(2, 20, 2))
    assert dola_candidate_layers("high", 48, False) == list(range(28, 48, 2))
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
