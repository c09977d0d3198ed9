"""A tiny GGUF for every family llama.cpp writes (Mistral and Mixtral as "llama"), made from a transformers model
with llama.cpp's own conversion transforms: the model tokenmill loads from the file gives that model's logits, and
`convert_gguf` turns the file into a folder transformers loads with those logits too.

Tolerance: the weights are exact, what is left is summation order: logits within tests/numerics.py's bound of a
float64 twin of the original model.
"""

from __future__ import annotations

import pytest
import torch
import transformers

from test_gguf import TINY, write_tiny_gguf
from tokenmill import AutoModelForCausalLM
from tokenmill.assembly.convert import convert_gguf
from tokenmill.loading.gguf import GGUFCheckpoint
from tokenmill.models.registry import gguf_architectures

from numerics import assert_matches_oracle
WINDOW = 8  # shorter than the 30-token prompt, so windowed layers really drop keys
GEMMA3_ROPE = {"full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e6},
               "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}

# name: (transformers config, GGUF architecture, extra metadata, model_type tokenmill should read)
CASES = {
    "llama": (lambda: transformers.LlamaConfig(**TINY, tie_word_embeddings=False, rope_theta=5e5), "llama", {},
              "llama"),
    # llama.cpp writes (and runs) Mistral as llama, without a sliding window
    "mistral": (lambda: transformers.MistralConfig(**TINY, head_dim=8, sliding_window=None), "llama",
                {"general.name": "Mistral 7B Instruct v0.3"}, "llama"),
    "mixtral": (lambda: transformers.MixtralConfig(**TINY, num_local_experts=4, num_experts_per_tok=2,
                                                   sliding_window=None, tie_word_embeddings=False),
                "llama", {"expert_count": 4, "expert_used_count": 2}, "mixtral"),
    "qwen2": (lambda: transformers.Qwen2Config(**TINY, tie_word_embeddings=False), "qwen2", {}, "qwen2"),
    "qwen3": (lambda: transformers.Qwen3Config(**TINY, head_dim=12), "qwen3", {}, "qwen3"),
    "qwen2moe": (lambda: transformers.Qwen2MoeConfig(**TINY, moe_intermediate_size=16,
                                                     shared_expert_intermediate_size=24, num_experts=4,
                                                     num_experts_per_tok=2, tie_word_embeddings=False),
                 "qwen2moe", {}, "qwen2_moe"),
    "gemma": (lambda: transformers.GemmaConfig(**TINY, head_dim=16), "gemma", {}, "gemma"),
    "gemma2": (lambda: transformers.Gemma2Config(**TINY | {"num_hidden_layers": 3}, head_dim=16,
                                                 sliding_window=WINDOW, query_pre_attn_scalar=16,
                                                 attn_logit_softcapping=5.0, final_logit_softcapping=8.0),
               "gemma2", {"attn_logit_softcapping": 5.0, "final_logit_softcapping": 8.0}, "gemma2"),
    # seven layers: five local, one global (linear rope scaling on global layers only, as Gemma 3 4B), one local
    "gemma3": (lambda: transformers.Gemma3TextConfig(**TINY | {"num_hidden_layers": 7}, head_dim=16,
                                                     sliding_window=WINDOW, query_pre_attn_scalar=16,
                                                     rope_parameters=GEMMA3_ROPE),
               "gemma3", {"rope.scaling.type": "linear", "rope.scaling.factor": 4.0}, "gemma3_text"),
    "phi3": (lambda: transformers.Phi3Config(**TINY, tie_word_embeddings=False, sliding_window=WINDOW), "phi3",
             {"attention.sliding_window": WINDOW}, "phi3"),
    "gpt2": (lambda: transformers.GPT2Config(vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                             bos_token_id=1, eos_token_id=2), "gpt2", {}, "gpt2"),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def tiny_file(request, tmp_path_factory):
    """(name, the transformers model, the GGUF written from it)."""
    make_config, arch, metadata, _ = CASES[request.param]
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(make_config()).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_()
    path = tmp_path_factory.mktemp(f"gguf-{request.param}") / "tiny.gguf"
    write_tiny_gguf(path, arch, model, metadata=metadata)
    return request.param, model, path


def prompt() -> torch.Tensor:
    return torch.randint(3, TINY["vocab_size"], (2, 30), generator=torch.Generator().manual_seed(0))


def test_config_names_the_family(tiny_file):
    name, model, path = tiny_file
    config = GGUFCheckpoint(path, gguf_architectures()).config_dict()
    assert config["model_type"] == CASES[name][3]
    if name == "mixtral":
        assert (config["num_local_experts"], config["num_experts_per_tok"]) == (4, 2)
        assert config["intermediate_size"] == model.config.intermediate_size


def test_model_from_gguf_gives_the_original_logits(tiny_file):
    name, model, path = tiny_file
    ours = AutoModelForCausalLM.from_pretrained(path, progress=False)
    ids = prompt()
    with torch.no_grad():
        assert_matches_oracle(ours(ids).logits, model, ids, label=f"{name} from GGUF")


def test_greedy_from_gguf_matches_the_original(tiny_file):
    name, model, path = tiny_file
    ours = AutoModelForCausalLM.from_pretrained(path, progress=False)
    ids = prompt()[:1, :12]
    settings = dict(do_sample=False, max_new_tokens=10, min_new_tokens=10, pad_token_id=0)
    with torch.no_grad():
        assert ours.generate(ids, **settings).tolist() == model.generate(ids, **settings).tolist()


def test_converted_folder_loads_in_transformers_with_the_original_logits(tiny_file, tmp_path):
    name, model, path = tiny_file
    convert_gguf(path, tmp_path / "hf", progress=False)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    ids = prompt()
    with torch.no_grad():
        assert_matches_oracle(reloaded(ids).logits, model, ids, label=f"{name} converted")
