"""Quantization quality against float32: the teacher-forced measures equal what the logits say, the simulated
bitsandbytes formats are the formats they claim, and on SmolLM2 tokenmill's load_in_8bit / NF4 stay at least as
close to float32 as bitsandbytes' own formats would."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from tokenmill import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
from tokenmill.bench import quant_quality
from tokenmill.bench.quant_quality import (compare, double_quantized, final_hidden, four_bit_blocks, int8_activations,
                                           int8_rows, signed_dynamic_map, simulated_bitsandbytes,
                                           teacher_forced_logits)
from tokenmill.loading.dequant import FP4_VALUES, NF4_VALUES

TEXT = Path(__file__).resolve().parent.parent / "data" / "pride_and_prejudice_ch1-2.txt"
FLOAT64_SLACK = 1e-9  # float64 runs: reordered sums of < 100 terms are off by ~1e-14 relative, far below this


@pytest.fixture(scope="module")
def tiny_float64(tiny_llama):
    return AutoModelForCausalLM.from_pretrained(tiny_llama[1], progress=False, dtype=torch.float64)


def test_compare_equals_the_measures_computed_from_whole_logits(tiny_llama, tiny_float64, monkeypatch):
    """Chunked logits from captured hidden states give the perplexity, cosine and top-1 of one plain forward."""
    monkeypatch.setattr(quant_quality, "LOGIT_CHUNK", 3)  # several chunks, the last one short
    ids = torch.tensor([[1, 5, 9, 33, 2, 17, 60, 4, 4, 21, 7]])
    other = AutoModelForCausalLM.from_pretrained(tiny_llama[1], progress=False, dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        other.lm_head.weight.mul_(1 + 0.3 * torch.randn(other.lm_head.weight.shape, generator=generator,
                                                        dtype=torch.float64))
        logits, expected = other(ids).logits[0], tiny_float64(ids).logits[0]
    reference = teacher_forced_logits(tiny_float64, ids)
    assert torch.allclose(reference, expected, rtol=0, atol=FLOAT64_SLACK * expected.abs().max().item())
    quality = compare(other, ids, reference)
    log_probs = torch.log_softmax(logits[:-1], -1).gather(1, ids[0, 1:, None])
    assert math.isclose(quality.perplexity, math.exp(-log_probs.mean().item()), rel_tol=FLOAT64_SLACK)
    cosine = torch.nn.functional.cosine_similarity(logits, expected, dim=-1).mean().item()
    assert math.isclose(quality.logit_cosine, cosine, rel_tol=FLOAT64_SLACK)
    agreement = (logits.argmax(-1) == expected.argmax(-1)).double().mean().item()
    assert quality.top1_agreement == agreement and 0 < agreement < 1  # the perturbed head changes some argmaxes
    same = compare(tiny_float64, ids, reference)
    assert same.top1_agreement == 1 and math.isclose(same.logit_cosine, 1, rel_tol=FLOAT64_SLACK)
    assert final_hidden(tiny_float64, ids).shape == (ids.shape[1], tiny_float64.config.hidden_size)


def test_compare_refuses_ids_it_cannot_score(tiny_float64):
    for ids in (torch.tensor([[3]]), torch.tensor([3, 4, 5]), torch.tensor([[3, 4], [5, 6]])):
        with pytest.raises(ValueError, match="one row of at least 2 tokens"):
            compare(tiny_float64, ids, torch.zeros(2, 64))
    with pytest.raises(ValueError, match="cover 3 positions, ids 4"):
        compare(tiny_float64, torch.tensor([[3, 4, 5, 6]]), torch.zeros(3, 64))


def test_int8_rows_round_each_row_to_127_steps_of_its_absmax():
    weight = torch.randn(6, 50)
    weight[2] = 0  # an all-zero row stays zero
    dequantized = int8_rows(weight)
    step = weight.abs().amax(1, keepdim=True) / 127
    assert torch.all((dequantized - weight).abs() <= step / 2 * (1 + 1e-6))
    assert torch.equal(dequantized.abs().amax(1), weight.abs().amax(1))  # the absmax itself is code ±127
    assert torch.equal(dequantized[2], weight[2])
    codes = dequantized / torch.where(step == 0, torch.ones_like(step), step)
    # codes of magnitude <= 127 after one float32 multiply and divide: within 127 * 2 * 2^-24 (~1.5e-5) of an integer
    assert torch.allclose(codes, codes.round(), atol=1e-4)


def test_int8_activations_keep_outlier_columns_and_quantize_the_rest_per_token():
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(2))
    x[1, 3, 7] = 9.0  # one element past the 6.0 threshold makes column 7 an outlier column in every token
    simulated = int8_activations(x)
    assert torch.equal(simulated[..., 7], x[..., 7])
    rest = torch.cat((x[..., :7], x[..., 8:]), -1)
    # a token's absmax leaves out its outlier elements only (the rest of column 7 counts), as bitsandbytes does
    step = x.masked_fill(x.abs() >= 6, 0).abs().amax(-1, keepdim=True) / 127
    got = torch.cat((simulated[..., :7], simulated[..., 8:]), -1)
    assert torch.all((got - rest).abs() <= step / 2 * (1 + 1e-6)) and not torch.equal(got, rest)
    calm = torch.randn(4, 16)
    assert torch.equal(int8_activations(calm), int8_rows(calm))  # no outlier: the same per-row rounding


def test_signed_dynamic_map_is_bitsandbytes_256_value_code():
    table = signed_dynamic_map()
    assert table.shape == (256,) and torch.all(table[1:] > table[:-1])
    assert table[0] == -table[-2] and table[-1] == 1 and (table == 0).sum() == 1
    positive = table[table > 0]
    assert len(positive) == 128  # 1 + 2 + ... + 64 fractions over seven decades, and 1.0
    assert math.isclose(positive[0].item(), 0.55e-6, rel_tol=1e-6)  # (0.1 + 1) / 2 * 10^-6: the finest step
    assert math.isclose(positive[-2].item(), (1 - 0.9 / 128), rel_tol=1e-6)  # the last midpoint below 1


@pytest.mark.parametrize("quant_type, values", [("nf4", NF4_VALUES), ("fp4", FP4_VALUES)])
def test_four_bit_blocks_are_code_book_entries_times_a_block_absmax(quant_type, values):
    weight = torch.randn(3, 128, generator=torch.Generator().manual_seed(1))
    weight[0, 70] = 50.0  # in the second block of 64 only: the first block keeps its own scale
    dequantized = four_bit_blocks(weight, quant_type)
    table = torch.tensor(values)
    blocks, got = weight.reshape(-1, 64), dequantized.reshape(-1, 64)
    absmax = blocks.abs().amax(1, keepdim=True)
    scaled = got / absmax
    assert torch.all((scaled[..., None] - table).abs().amin(-1) <= 1e-6)  # every value is an entry × absmax
    nearest = table[(blocks[..., None] / absmax[..., None] - table).abs().argmin(-1)]
    # table values in [-1, 1] after one float32 multiply and divide by the absmax: within 2 * 2^-24 (~1.2e-7)
    assert torch.allclose(scaled, nearest, atol=1e-6)
    assert blocks.abs().amax(1)[0] < 50 and got[0].abs().max() == blocks[0].abs().max()


def test_double_quantized_absmax_stays_within_one_code_step():
    absmax = torch.rand(1000, 1) * 0.2 + 0.01
    restored = double_quantized(absmax)
    centered = absmax - absmax.mean()
    for start in range(0, 1000, 256):  # blocks of 256: the step near x is at most ~1/128 of the block absmax
        span = slice(start, start + 256)
        assert (restored[span] - absmax[span]).abs().max() <= centered[span].abs().max() / 100


@pytest.mark.parametrize("method", ["int8", "nf4", "nf4-double-quant", "fp4"])
def test_simulation_changes_only_linear_layers_outside_skip_and_restores_them(tiny_float64, method):
    model = tiny_float64
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    ids = torch.tensor([[1, 5, 9, 33, 2]])
    with torch.no_grad():
        plain = model(ids).logits
        with simulated_bitsandbytes(model, method) as stored:
            changed = {name for name, tensor in model.state_dict().items() if not torch.equal(tensor, before[name])}
            simulated = model(ids).logits
    linears = {f"{name}.weight" for name, module in model.named_modules()
               if type(module) is nn.Linear and name != "lm_head"}
    assert changed and changed <= linears and not torch.equal(simulated, plain)
    assert all(torch.equal(tensor, before[name]) for name, tensor in model.state_dict().items())
    with torch.no_grad():
        assert torch.equal(model(ids).logits, plain)  # weights and activation hooks gone
    matrices = sum(model.get_submodule(name.removesuffix(".weight")).weight.numel() for name in linears)
    rows = sum(model.get_submodule(name.removesuffix(".weight")).weight.shape[0] for name in linears)
    float_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    if method == "int8":
        assert stored == float_bytes - 8 * matrices + matrices + 4 * rows
    else:
        assert stored < float_bytes - 8 * matrices + matrices  # 4 bits and block scales: under a byte each


def test_unknown_bitsandbytes_method_is_refused(tiny_float64):
    with pytest.raises(ValueError, match="unknown bitsandbytes method 'int4'.*nf4"):
        with simulated_bitsandbytes(tiny_float64, "int4"):
            pass


@pytest.fixture(scope="module")
def first_400_tokens(smollm2_folder):
    ids = AutoTokenizer.from_pretrained(smollm2_folder)(TEXT.read_text(), return_tensors="pt").input_ids
    assert ids.shape[1] >= 2000  # the shipped text: tests/data/README.md
    return ids[:, :400]


@pytest.fixture(scope="module")
def smollm2_reference(smollm2_folder, first_400_tokens):
    """The float32 model and its logits over the 400 tokens (one forward for both tests)."""
    model = AutoModelForCausalLM.from_pretrained(smollm2_folder, progress=False)
    return model, teacher_forced_logits(model, first_400_tokens)


@pytest.mark.parametrize("arguments, bitsandbytes, floor", [
    ({"load_in_8bit": True}, "int8", 0.97),
    ({"quantization_config": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")}, "nf4", 0.75)])
def test_smollm2_top1_at_least_bitsandbytes_and_its_floor(smollm2_folder, first_400_tokens, smollm2_reference,
                                                          arguments, bitsandbytes, floor):
    """Teacher-forced top-1 agreement with float32 over the text's first 400 tokens.

    Ours at least bitsandbytes' (simulated on the same float weights): Q8_0's blocks of 32 adapt to the weights
    more finely than LLM.int8's one scale per row and leave the activations in float; NF4 uses the same code
    book over blocks of 32 instead of 64 (a float16 scale: the same bytes per weight), each block's scale
    searched for the least squared error rather than its absmax.
    The floors are what this text and model measure, less a margin, not the issue's targets (98% / 85%):
    SmolLM2-135M's float weights are themselves dequantized Q4_1, so a second 4-bit rounding lands on top of
    the first, and a 135M model has little redundancy. Measured: load_in_8bit 97.75% (bitsandbytes' LLM.int8
    94.5%), NF4 77.5% with the searched scales (74.5% with absmax scales; bitsandbytes' NF4 70.75%). The int8
    floor leaves 3 of the 400 positions for near-tie argmaxes that another CPU's float32 summation order may
    flip; NF4's leaves 10, and still fails the absmax scales' 74.5%. The floors
    guard the quantizers against regressions; the comparison with bitsandbytes is the claim the docs make."""
    reference, expected = smollm2_reference
    model = AutoModelForCausalLM.from_pretrained(smollm2_folder, progress=False, **arguments)
    ours = compare(model, first_400_tokens, expected)
    with simulated_bitsandbytes(reference, bitsandbytes) as stored:
        theirs = compare(reference, first_400_tokens, expected, stored)
    assert ours.top1_agreement >= theirs.top1_agreement, (ours, theirs)
    assert ours.top1_agreement >= floor, ours
