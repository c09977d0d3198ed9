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
    # every tensor of a disk layer views a file, its fused projections' stacked blocks too (nothing left in RAM)
    ranges = file_backed_ranges()
    disk_layers = [layer for index, layer in enumerate(placed.model.layers)
                   if placed.hf_device_map[f"model.layers.{index}"] == "disk"]
    disk_tensors = [tensor for layer in disk_layers for tensor in
                    (*held_tensors(layer), layer.self_attn._qkv.weight.blocks, layer.mlp._gate_up.weight.blocks)]
    assert all(any(low <= t.data_ptr() < high for low, high in ranges) for t in disk_tensors)
    # after generating, the disk layers' bytes are out of this process: a fault may map one whole page-cache folio
    # (at most one PMD, 2 MiB) around the page touched, so only disk pages within that of an in-memory tensor may
    # still be mapped, and the mapping holds at most the budget plus one such folio each side of each in-memory span
    in_memory = [tensor for name, module in placed.named_modules()
                 if placed.hf_device_map.get(name) not in (None, "disk") for tensor in held_tensors(module)]
    memory_spans = _merged_spans(in_memory)
    far_from_memory = _subtract(_merged_spans(disk_tensors),
                                [(low - _FOLIO_BOUND, high + _FOLIO_BOUND) for low, high in memory_spans])
    assert _resident_bytes(far_from_memory) == 0
    spill = 2 * _FOLIO_BOUND * len(memory_spans)
    assert _mapping_rss(placed.model.embed_tokens.blocks.data_ptr()) <= 40 * 2**20 + spill
    assert _mapping_rss(reference.model.embed_tokens.blocks.data_ptr()) > 0.9 * smollm2_gguf.stat().st_size


_FOLIO_BOUND = 2 * 2**20  # the largest folio a page fault maps on x86-64 (one PMD)


def _merged_spans(tensors: list[torch.Tensor]) -> list[tuple[int, int]]:
    spans = sorted((t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()) for t in tensors)
    merged = [list(spans[0])]
    for low, high in spans[1:]:
        if low <= merged[-1][1] + 4096:
            merged[-1][1] = max(merged[-1][1], high)
        else:
            merged.append([low, high])
    return [tuple(span) for span in merged]


def _subtract(spans: list[tuple[int, int]], holes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    for hole_low, hole_high in holes:
        spans = [piece for low, high in spans for piece in ((low, min(high, hole_low)), (max(low, hole_high), high))
                 if piece[0] < piece[1]]
    return spans


def _resident_bytes(spans: list[tuple[int, int]]) -> int:
    """Bytes of these address spans whose pages are mapped in this process (bit 63 of /proc/self/pagemap)."""
    page = 4096
    present = 0
    with open("/proc/self/pagemap", "rb") as pagemap:
        for low, high in spans:
            first, last = low // page, -(-high // page)
            pagemap.seek(first * 8)
            entries = pagemap.read((last - first) * 8)
            present += sum(entries[index + 7] >> 7 for index in range(0, len(entries), 8))
    return present * page


def _mapping_rss(address: int) -> int:
    """Resident bytes of the mapping that holds `address` (its Rss in /proc/self/smaps)."""
    lines = open("/proc/self/smaps").read().splitlines()
    for index, line in enumerate(lines):
        span = line.split()[0]
        if "-" in span and not span.endswith(":"):
            low, high = (int(part, 16) for part in span.split("-"))
            if low <= address < high:
                return int(next(entry for entry in lines[index + 1:] if entry.startswith("Rss:")).split()[1]) * 1024
    raise AssertionError("no mapping holds the address")


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
