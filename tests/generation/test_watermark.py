"""Green-list watermarking against transformers' WatermarkLogitsProcessor / WatermarkDetector (same seeding, so
the two interoperate), and detection rates on watermarked vs plain generations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from transformers.generation import WatermarkDetector as OracleDetector
from transformers.generation import WatermarkLogitsProcessor as OracleProcessor

from tokenmill import AutoModelForCausalLM
from tokenmill.generation.watermark import WatermarkDetector, WatermarkingConfig, WatermarkLogitsProcessor

# single_thread is an autouse fixture (one intra-op thread for tiny models)
try:  # tests/generation is a plain folder on sys.path, or a package
    from decoding_fixtures import save_tiny_llama, single_thread  # noqa: F401
except ImportError:
    from .decoding_fixtures import save_tiny_llama, single_thread  # noqa: F401

VOCAB = 97


@pytest.mark.parametrize("scheme, width", [("lefthash", 1), ("selfhash", 1), ("selfhash", 3)])
def test_processor_equals_oracle(scheme, width):
    settings = dict(greenlist_ratio=0.3, bias=1.5, seeding_scheme=scheme, context_width=width)
    ids = torch.randint(0, VOCAB, (3, 7), generator=torch.Generator().manual_seed(0))
    scores = torch.randn(3, VOCAB, generator=torch.Generator().manual_seed(1))
    expected = OracleProcessor(vocab_size=VOCAB, device="cpu", **settings)(ids, scores)
    actual = WatermarkLogitsProcessor(VOCAB, **settings)(ids, scores)
    assert torch.equal(actual, expected)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("watermark-llama")
    oracle = save_tiny_llama(folder, logit_scale=3.0)
    return oracle, AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)


def prompts(count=12):
    return torch.randint(3, VOCAB, (count, 5), generator=torch.Generator().manual_seed(2))


def test_generate_with_watermarking_config_matches_oracle(pair):
    oracle, model = pair
    config = transformers.WatermarkingConfig(bias=2.5, seeding_scheme="lefthash")
    common = dict(max_new_tokens=15, do_sample=False, eos_token_id=None)
    expected = oracle.generate(prompts(4), watermarking_config=config, **common)
    assert torch.equal(model.generate(prompts(4), watermarking_config=config, **common), expected)
    ours = WatermarkingConfig(bias=2.5)
    assert torch.equal(model.generate(prompts(4), watermarking_config=ours, **common), expected)


def test_detection_rates_and_oracle_agreement(pair):
    oracle, model = pair
    config = WatermarkingConfig(bias=4.0, greenlist_ratio=0.25)
    common = dict(max_new_tokens=40, do_sample=True, top_k=0, eos_token_id=None)
    torch.manual_seed(0)
    marked = model.generate(prompts(), watermarking_config=config, **common)[:, 5:]
    torch.manual_seed(0)
    plain = model.generate(prompts(), **common)[:, 5:]
    detector = WatermarkDetector(VOCAB, bos_token_id=None, watermarking_config=config)
    marked_result, plain_result = detector(marked, return_dict=True), detector(plain, return_dict=True)
    assert marked_result.prediction.mean() >= 0.9  # true-positive rate at z > 3
    assert plain_result.prediction.mean() <= 0.1  # false-positive rate
    oracle_detector = OracleDetector(oracle.config, "cpu", transformers.WatermarkingConfig(bias=4.0))
    for ours, batch in ((marked_result, marked), (plain_result, plain)):
        theirs = oracle_detector(batch, return_dict=True)
        # float64 both sides, the same counts through a handful of operations: ~10 roundings of 2**-53 (1e-15);
        # 1e-12 leaves room for another operation order. p = erfc(z/sqrt 2)/2 has relative condition ~z**2 (< 1e3 for
        # these z), so the p-value inherits 1e3 x 1e-12 = 1e-9; atol 1e-15 for p-values that underflow toward 0
        np.testing.assert_allclose(ours.z_score, theirs.z_score, rtol=1e-12)
        np.testing.assert_allclose(ours.p_value, theirs.p_value, rtol=1e-9, atol=1e-15)


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="seeding_scheme"):
        WatermarkLogitsProcessor(VOCAB, seeding_scheme="midhash")
    with pytest.raises(ValueError, match="greenlist_ratio"):
        WatermarkingConfig(greenlist_ratio=1.0).validate()
    with pytest.raises(ValueError, match="at least 2 tokens"):
        WatermarkDetector(VOCAB, bos_token_id=None)(torch.tensor([[5]]))
