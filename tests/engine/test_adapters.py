"""LoRA adapters in the engine: requests for different adapters (and the base model) share batches, and each
request's greedy tokens equal peft's model generating it alone; the prefix cache never mixes adapters; adapters
load and unload between steps; unknown or busy adapters are clear errors."""

import pytest
import torch

from tokenmill.auto import AutoModelForCausalLM
from tokenmill.engine import LLM, EngineConfig, LLMEngine, LoRARequest, SamplingParams
from tokenmill.engine.adapters import AdapterInUseError, UnknownAdapterError

from lora_oracle import make_adapter
from engine_steps import run_to_completion

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def adapters(hf_tiny, tmp_path_factory):
    """{name: (folder, peft model)} for two adapters on the engine's tiny Llama."""
    made = {}
    for name, seed in (("alpha", 5), ("beta", 6)):
        folder = tmp_path_factory.mktemp(f"engine-lora-{name}")
        made[name] = (folder, make_adapter(hf_tiny, folder, TARGETS, seed=seed, rank=4, alpha=16))
    return made


@pytest.fixture
def model(tiny_llama_dir, adapters):
    """The tiny Llama with both adapters, none active (a fresh model: tests load and unload)."""
    loaded = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32, progress=False)
    engine_config = EngineConfig(num_blocks=64, block_size=4, max_num_batched_tokens=24)
    engine = LLMEngine(loaded, config=engine_config)
    for name, (folder, _) in adapters.items():
        engine.load_adapter(name, folder)
    assert loaded.active_adapters() == []  # the engine's loads leave the model's default (base) as it was
    return loaded, engine


def _greedy(max_tokens, adapter=None):
    return SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True, adapter=adapter)


def _prompts(count, seed, vocab=96):
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 20, (count,), generator=generator).tolist()
    return [torch.randint(0, vocab, (n,), generator=generator).tolist() for n in lengths]



def _peft_greedy(wrapped, prompt, new_tokens):
    with torch.no_grad():
        out = wrapped.generate(input_ids=torch.tensor([prompt]), max_new_tokens=new_tokens, do_sample=False)
    return out[0, len(prompt):].tolist()


def test_mixed_adapter_batches_equal_each_request_alone(model, adapters, hf_tiny, hf_greedy):
    _, engine = model
    prompts = _prompts(6, seed=7)
    choice = ["alpha", None, "beta", "alpha", "beta", None]
    for i, (prompt, name) in enumerate(zip(prompts, choice)):
        engine.add_request(str(i), prompt, _greedy(8, name))
    finished = run_to_completion(engine)
    for i, (prompt, name) in enumerate(zip(prompts, choice)):
        expected = hf_greedy(prompt, 8) if name is None else _peft_greedy(adapters[name][1], prompt, 8)
        assert finished[str(i)].outputs[0].token_ids == expected, f"request {i} ({name})"
    # the adapters change the continuation (else the test could not fail)
    assert _peft_greedy(adapters["alpha"][1], prompts[0], 8) != hf_greedy(prompts[0], 8)
    assert engine.blocks.num_used_blocks == 0


def test_prefix_cache_is_never_shared_across_adapters(model, adapters, hf_greedy):
    _, engine = model
    prompt = _prompts(1, seed=8)[0] + list(range(10, 22))
    runs = [("a", "alpha"), ("b", "beta"), ("c", "alpha"), ("d", None)]
    cached = {}
    for request_id, name in runs:
        engine.add_request(request_id, prompt, _greedy(4, name))
        output = run_to_completion(engine)[request_id]
        cached[request_id] = output.num_cached_tokens
        expected = hf_greedy(prompt, 4) if name is None else _peft_greedy(adapters[name][1], prompt, 4)
        assert output.outputs[0].token_ids == expected, request_id
    reusable = (len(prompt) - 1) // 4 * 4  # full blocks, the last token always recomputed
    assert cached == {"a": 0, "b": 0, "c": reusable, "d": 0}


def test_unknown_and_busy_adapters_are_clear_errors(model, adapters):
    loaded, engine = model
    with pytest.raises(UnknownAdapterError) as unknown:
        engine.add_request("x", [1, 2, 3], _greedy(2, "gamma"))
    assert str(unknown.value) == "no LoRA adapter named 'gamma' is loaded (loaded: 'alpha', 'beta')"
    with pytest.raises(UnknownAdapterError, match="'gamma'"):
        engine.unload_adapter("gamma")
    engine.add_request("busy", [1, 2, 3], _greedy(3, "alpha"))
    with pytest.raises(AdapterInUseError, match="used by 1 unfinished request"):
        engine.unload_adapter("alpha")
    run_to_completion(engine)
    engine.unload_adapter("alpha")
    assert loaded.lora_adapters.names() == ["beta"]
    with pytest.raises(UnknownAdapterError):
        engine.add_request("late", [1, 2, 3], _greedy(2, "alpha"))
    engine.unload_adapter("beta")
    with pytest.raises(UnknownAdapterError) as none_left:
        engine.add_request("later", [1, 2, 3], _greedy(2, "beta"))
    assert str(none_left.value).endswith("(loaded: none)")
    with pytest.raises(ValueError, match="adapter must be an adapter's name"):
        SamplingParams(adapter="")


def test_llm_generate_with_an_adapter(model, adapters):
    loaded, _ = model
    llm = LLM(loaded, num_blocks=32, block_size=4)
    prompt = _prompts(1, seed=9)[0]
    output = llm.generate([prompt], _greedy(5, "beta"))[0]
    assert output.outputs[0].token_ids == _peft_greedy(adapters["beta"][1], prompt, 5)


def test_llm_generate_with_a_vllm_lora_request(tiny_llama_dir, adapters):
    llm = LLM(AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32, progress=False),
              num_blocks=32, block_size=4)
    prompt = _prompts(1, seed=10)[0]
    request = LoRARequest("alpha-adapter", 1, str(adapters["alpha"][0]))
    output = llm.generate([prompt], _greedy(5), lora_request=request)[0]  # loaded on first use
    assert output.outputs[0].token_ids == _peft_greedy(adapters["alpha"][1], prompt, 5)
    assert llm.model.lora_adapters.names() == ["alpha-adapter"] and llm.model.active_adapters() == []
