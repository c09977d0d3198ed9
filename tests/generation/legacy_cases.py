"""Contrastive search, DoLa and diverse (group) beam search as transformers 4.55.4 ran them in its core — the
last release that did (4.56 moved them to Hub `custom_generate` repos). scripts/legacy_oracle.py records these
cases once with that release into legacy_oracle.json; test_legacy_oracle.py replays them with tokenmill.

The weights come from a seeded torch.Generator, not from any library's initialiser, so the recording and the
test build the same model; the recording stores a hash of the weights to make a changed RNG fail loudly.
Only torch, safetensors and the standard library are imported here (the recorder runs it under old transformers).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

VOCAB, HIDDEN, INTERMEDIATE, HEADS, KV_HEADS = 97, 48, 76, 6, 2
ORACLE_VERSION = "4.55.4"
RECORDING = Path(__file__).with_name("legacy_oracle.json")

# name → (layers, tied embeddings, output-logit sharpness, seed)
MODELS = {
    "untied4": (4, False, 4.0, 0),
    "tied4": (4, True, 4.0, 1),
    "tied2": (2, True, 4.0, 2),  # transformers' DoLa starts its 'low' preset at layer 1 for 2-layer tied models
}


def llama_config(model: str) -> dict:
    layers, tied, _, _ = MODELS[model]
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": VOCAB,
            "hidden_size": HIDDEN, "intermediate_size": INTERMEDIATE, "num_hidden_layers": layers,
            "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "max_position_embeddings": 128,
            "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": tied,
            "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "torch_dtype": "float32"}


def llama_weights(model: str) -> dict[str, torch.Tensor]:
    layers, tied, sharpness, seed = MODELS[model]
    generator = torch.Generator().manual_seed(seed)

    def normal(*shape, std=0.02):
        return torch.randn(*shape, generator=generator) * std

    def norm_weight():  # not all ones, so a missing or extra norm changes the result
        return 1.0 + normal(HIDDEN, std=0.2)

    head_dim = HIDDEN // HEADS
    weights = {"model.embed_tokens.weight": normal(VOCAB, HIDDEN, std=sharpness / HIDDEN ** 0.5 if tied else 1.0)}
    for i in range(layers):
        prefix = f"model.layers.{i}."
        weights.update({
            prefix + "self_attn.q_proj.weight": normal(HEADS * head_dim, HIDDEN, std=0.15),
            prefix + "self_attn.k_proj.weight": normal(KV_HEADS * head_dim, HIDDEN, std=0.15),
            prefix + "self_attn.v_proj.weight": normal(KV_HEADS * head_dim, HIDDEN, std=0.15),
            prefix + "self_attn.o_proj.weight": normal(HIDDEN, HEADS * head_dim, std=0.15),
            prefix + "mlp.gate_proj.weight": normal(INTERMEDIATE, HIDDEN, std=0.15),
            prefix + "mlp.up_proj.weight": normal(INTERMEDIATE, HIDDEN, std=0.15),
            prefix + "mlp.down_proj.weight": normal(HIDDEN, INTERMEDIATE, std=0.15),
            prefix + "input_layernorm.weight": norm_weight(),
            prefix + "post_attention_layernorm.weight": norm_weight(),
        })
    weights["model.norm.weight"] = norm_weight()
    if not tied:
        weights["lm_head.weight"] = normal(VOCAB, HIDDEN, std=sharpness / HIDDEN ** 0.5)
    return weights


def weights_digest(weights: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(weights):
        digest.update(name.encode())
        digest.update(weights[name].contiguous().numpy().tobytes())
    return digest.hexdigest()


def write_model(folder: Path, model: str) -> str:
    """Write config.json + model.safetensors for `model` into `folder`; return the weights' digest."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = llama_weights(model)
    (folder / "config.json").write_text(json.dumps(llama_config(model), indent=1))
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return weights_digest(weights)


def prompts(kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """'single': one unpadded prompt; 'batch': three prompts left-padded by 2, 0 and 3 tokens."""
    generator = torch.Generator().manual_seed(11)
    if kind == "single":
        ids = torch.randint(3, VOCAB, (1, 7), generator=generator)
        return ids, torch.ones_like(ids)
    ids = torch.randint(3, VOCAB, (3, 8), generator=generator)
    mask = torch.ones_like(ids)
    for row, pad in enumerate((2, 0, 3)):
        ids[row, :pad], mask[row, :pad] = 0, 0
    return ids, mask


# "eos_token_id": "frequent:N" means the N tokens the model emits most often under plain greedy decoding of the
# same prompts, so that hypotheses really end early; the recorder resolves it and stores the ids it used.
COMMON = dict(max_new_tokens=10, return_dict_in_generate=True, output_scores=True, output_logits=True)
CASES = [
    # contrastive search (Su et al. 2022)
    dict(name="contrastive-batch", model="untied4", prompts="batch", kwargs=dict(penalty_alpha=0.6, top_k=4)),
    dict(name="contrastive-eos", model="untied4", prompts="batch",
         kwargs=dict(penalty_alpha=0.3, top_k=6, eos_token_id="frequent:1")),
    dict(name="contrastive-tied-penalty", model="tied4", prompts="single",
         kwargs=dict(penalty_alpha=0.5, top_k=3, repetition_penalty=1.3)),
    # DoLa (Chuang et al. 2023)
    dict(name="dola-high", model="untied4", prompts="single", kwargs=dict(dola_layers="high", do_sample=False)),
    dict(name="dola-low-batch-eos", model="untied4", prompts="batch",
         kwargs=dict(dola_layers="low", do_sample=False, eos_token_id="frequent:1")),
    dict(name="dola-list-tied-penalty", model="tied4", prompts="batch",
         kwargs=dict(dola_layers=[1, 3], do_sample=False, repetition_penalty=1.2)),
    dict(name="dola-low-tied2", model="tied2", prompts="single", kwargs=dict(dola_layers="low", do_sample=False)),
    dict(name="dola-sample", model="untied4", prompts="single", seed=3,
         kwargs=dict(dola_layers="high", do_sample=True, top_k=0, temperature=0.8)),
    # diverse (group) beam search (Vijayakumar et al. 2016)
    dict(name="group-beam-eos", model="untied4", prompts="batch",
         kwargs=dict(num_beams=4, num_beam_groups=2, diversity_penalty=1.0, num_return_sequences=3,
                     eos_token_id="frequent:2", early_stopping=False)),
    dict(name="group-beam-early-true", model="untied4", prompts="batch",
         kwargs=dict(num_beams=4, num_beam_groups=2, diversity_penalty=0.5, num_return_sequences=2,
                     eos_token_id="frequent:2", early_stopping=True, length_penalty=0.5)),
    dict(name="group-beam-never", model="untied4", prompts="batch",
         kwargs=dict(num_beams=6, num_beam_groups=3, diversity_penalty=2.0, num_return_sequences=2,
                     eos_token_id="frequent:1", early_stopping="never", length_penalty=2.0)),
    dict(name="group-beam-no-eos", model="tied4", prompts="batch",
         kwargs=dict(num_beams=4, num_beam_groups=4, diversity_penalty=0.7, num_return_sequences=4,
                     eos_token_id=None)),
    dict(name="group-beam-negative-lp", model="tied4", prompts="single",
         kwargs=dict(num_beams=4, num_beam_groups=2, diversity_penalty=1.5, num_return_sequences=4,
                     eos_token_id="frequent:2", length_penalty=-1.0)),
]


def resolve_frequent(generate, ids, mask, count: int) -> list[int]:
    """The `count` tokens plain greedy decoding emits most often (ties broken by the lower id)."""
    out = generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False, eos_token_id=None)
    counts = torch.bincount(out[:, ids.shape[1]:].flatten(), minlength=VOCAB)
    order = sorted(range(VOCAB), key=lambda token: (-int(counts[token]), token))
    return order[:count]
