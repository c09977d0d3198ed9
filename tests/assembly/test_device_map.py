"""from_pretrained(device_map=..., max_memory=..., offload_folder=...): layers offloaded to disk give the same
logits (same arithmetic, bit for bit) and greedy tokens as the unconstrained model; hf_device_map in
transformers' key style (and, for 'sequential', accelerate's own answer); every bad argument refused by name."""

import pytest
import torch

from tokenmill import AutoModelForCausalLM
from tokenmill.execution.offload import file_backed_ranges, held_tensors
from tokenmill.execution.policy import ExecutionPolicyError

PROMPT = torch.tensor([[1, 504, 3458, 282, 4649, 314, 3458, 30]])


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                      tie_word_embeddings=False)
    folder = tmp_path_factory.mktemp("tiny-llama-offload")
    transformers.LlamaForCausalLM(config).eval().save_pretrained(folder)
    return folder


def _same_outputs(placed, reference, ids):
    assert torch.equal(placed(ids).logits, reference(ids).logits)  # same kernels on the same values
    greedy = dict(max_new_tokens=4, do_sample=False)
    assert torch.equal(placed.generate(ids, **greedy), reference.generate(ids, **greedy))


def test_tiny_llama_under_a_cpu_budget_runs_layers_from_disk(tiny_llama, tmp_path):
    reference = AutoModelForCausalLM.from_pretrained(tiny_llama, progress=False)
    placed = AutoModelForCausalLM.from_pretrained(tiny_llama, progress=False, device_map="sequential",
                                                  max_memory={"cpu": "400KiB"}, offload_folder=tmp_path)
    names = ["model.embed_tokens", *(f"model.layers.{i}" for i in range(4)), "model.norm", "lm_head"]
    assert list(placed.hf_device_map) == names
    assert placed.hf_device_map["model.layers.3"] == "disk" and placed.hf_device_map["model.layers.0"] == "cpu"
    assert placed.execution_policy.placement is not None
    assert list(tmp_path.iterdir()) == []  # the offload file is unlinked while in use
    _same_outputs(placed, reference, PROMPT % 96)


def test_sequential_matches_accelerate(tiny_llama, tmp_path):
    accelerate = pytest.importorskip("accelerate")
    import transformers

    budget = {"cpu": 400 * 1024}
    with torch.device("meta"):
        oracle = transformers.LlamaForCausalLM(transformers.AutoConfig.from_pretrained(tiny_llama))
    expected = accelerate.infer_auto_device_map(oracle, max_memory=dict(budget),
                                                no_split_module_classes=["LlamaDecoderLayer"])
    placed = AutoModelForCausalLM.from_pretrained(tiny_llama, progress=False, device_map="sequential",
                                                  max_memory=dict(budget), offload_folder=tmp_path)
    # the embedding and decoder layers as accelerate places them; the final norm and head stay in memory here
    # (accelerate may offload them too; tokenmill runs only decoder layers from disk)
    compared = ["model.embed_tokens", *(f"model.layers.{i}" for i in range(4))]
    assert {name: placed.hf_device_map[name] for name in compared} == {name: expected[name] for name in compared}
    assert "disk" in expected.values()


def test_smollm2_gguf_blocks_from_disk(smollm2_gguf, tmp_path):
    reference = AutoModelForCausalLM.from_pretrained(smollm2_gguf, progress=False)
    placed = AutoModelForCausalLM.from_pretrained(smollm2_gguf, progress=False, device_map="auto",
                                                  max_memory={"cpu": "40MiB"}, offload_folder=tmp_path)
    assert placed.is_quantized() and placed.hf_device_map["model.layers.29"] == "disk"
    _same_outputs(placed, reference, PROMPT)
    # every tensor of a disk layer views a file, its fused projections' stacked blocks too (nothing left in RAM),
    # and no tensor of an in-memory module does: they hold copies of their own (the budget's bytes, once), so
    # nothing maps file pages for them (tests/assembly/test_device_map_memory.py measures the peak RSS)
    ranges = file_backed_ranges()
    disk_layers = [layer for index, layer in enumerate(placed.model.layers)
                   if placed.hf_device_map[f"model.layers.{index}"] == "disk"]
    disk_tensors = [tensor for layer in disk_layers for tensor in
                    (*held_tensors(layer), layer.self_attn._qkv.weight.blocks, layer.mlp._gate_up.weight.blocks)]
    in_memory = [tensor for name, module in placed.named_modules()
                 if placed.hf_device_map.get(name) not in (None, "disk") for tensor in held_tensors(module)]
    assert len(disk_layers) == 26 and in_memory
    assert all(any(low <= t.data_ptr() < high for low, high in ranges) for t in disk_tensors)
    assert not any(any(low <= t.data_ptr() < high for low, high in ranges) for t in in_memory)


def test_explicit_map_and_moves(tiny_llama, tmp_path):
    placed = AutoModelForCausalLM.from_pretrained(tiny_llama, progress=False, offload_folder=tmp_path,
                                                  device_map={"model": "cpu", "model.layers.1": "disk",
                                                              "lm_head": "cpu"})
    assert placed.hf_device_map["model.layers.1"] == "disk" and placed.hf_device_map["model.layers.2"] == "cpu"
    with pytest.raises(ExecutionPolicyError, match="placed by device_map.*load it again"):
        placed.to("cpu")


def test_offloaded_model_saves_every_weight(tiny_llama, tmp_path):
    reference = AutoModelForCausalLM.from_pretrained(tiny_llama, progress=False)
    placed = AutoModelForCausalLM.from_pretrained(tiny_llama, progress=False, device_map="sequential",
                                                  max_memory={"cpu": "400KiB"}, offload_folder=tmp_path / "off")
    placed.save_pretrained(tmp_path / "saved")
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "saved", progress=False)
    assert all(torch.equal(saved.state_dict()[name], tensor) for name, tensor in reference.state_dict().items())


@pytest.mark.parametrize("arguments, message", [
    (dict(device_map="auto", max_memory={"cpu": "50KiB"}, offload_folder="."), "too small to run even one"),
    (dict(device_map={"": "tpu"}), "unknown device 'tpu'"),
    (dict(device_map={"": "cpu", "model.layers.7": "cpu"}), "'model.layers.7' names no module"),
    (dict(device_map="auto", max_memory={"cpu": "400KiB"}), "offload_folder"),
    (dict(max_memory={"cpu": "1GiB"}), "max_memory takes effect with device_map"),
    (dict(offload_folder="."), "offload_folder takes effect with a device_map"),
    (dict(device_map="cpu", device="cpu"), "not both"),
])
def test_bad_placement_arguments_are_refused(tiny_llama, arguments, message):
    with pytest.raises(ValueError, match=message):
        AutoModelForCausalLM.from_pretrained(tiny_llama, progress=False, **arguments)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
@pytest.mark.parametrize("device_map", [{"": "cuda:0"}, {"": 0}, "cuda"])
def test_absent_gpu_refused_before_loading(tiny_llama, device_map):
    with pytest.raises(ValueError, match="not present"):
        AutoModelForCausalLM.from_pretrained(tiny_llama, progress=False, device_map=device_map)
