"""The policy as the model holds it: chosen at load (kernels built then), handed to every forward as an object,
kept true by `to()`, and the same oracle logits under every kernel set."""

from __future__ import annotations

import dataclasses
import re
import threading
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import tokenmill
from tokenmill import AutoModelForCausalLM, kernels
from tokenmill.execution.ops import TorchOps
from tokenmill.execution.policy import ExecutionPolicyError
from tokenmill.layers.norm import RMSNorm
from tokenmill.assembly import weights as weights_module

needs_kernels = pytest.mark.skipif(not kernels.available(), reason="the C kernels cannot be built here")
IDS = torch.tensor([[3, 17, 40, 8, 61, 22, 5, 30, 12, 49], [9, 1, 33, 27, 50, 6, 44, 15, 2, 38]])
# float32 sums reordered by the C kernels: each reduction (length <= 64 here) may differ by up to ~64 * 2^-24
# of its terms' magnitude, through ~10 reordered reductions on the way to a logit: ~4e-5 of the largest logit
REORDERED_SUMS_RELATIVE = 4e-5


@pytest.fixture(scope="module")
def oracle_folder(tmp_path_factory):
    """(transformers model, saved folder): head_dim 16, so the attention kernel serves (multiples of 16)."""
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    oracle = transformers.LlamaForCausalLM(config).eval()
    folder = tmp_path_factory.mktemp("tiny-llama-16")
    oracle.save_pretrained(folder)
    return oracle, folder


def load(folder, **kwargs):
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, progress=False, **kwargs)


@needs_kernels
@pytest.mark.parametrize("kernel_set", ["torch", "exact", "native"])
def test_every_kernel_set_matches_the_oracle(oracle_folder, kernel_set):
    oracle, folder = oracle_folder
    model = load(folder, kernels=kernel_set)
    assert model.execution_policy.kernels == kernel_set
    with torch.no_grad():
        expected = oracle(IDS).logits
        actual = model(IDS).logits
        if kernel_set == "native":
            bound = REORDERED_SUMS_RELATIVE * float(expected.abs().max())
            torch.testing.assert_close(actual, expected, atol=bound, rtol=0)
        else:  # ATen's arithmetic, and kernels that reproduce it bit for bit
            torch.testing.assert_close(actual, expected, atol=0, rtol=0)
        tokens = model.generate(IDS, max_new_tokens=6, do_sample=False)
        assert torch.equal(tokens, oracle.generate(IDS, max_new_tokens=6, do_sample=False))


@pytest.fixture
def kernel_builds(monkeypatch):
    """A list that grows by one each time the kernels library is built or loaded (its cache emptied first)."""
    builds, real = [], kernels.build.load
    monkeypatch.setattr(kernels.build, "load", lambda: builds.append(1) or real())
    kernels.library.cache_clear()
    yield builds
    kernels.library.cache_clear()


@needs_kernels
def test_kernels_are_built_at_load_not_in_the_first_forward(oracle_folder, kernel_builds):
    model = load(oracle_folder[1])
    assert model.execution_policy.kernels == "exact" and kernel_builds == [1]
    with torch.no_grad():
        model(IDS)
    assert kernel_builds == [1]


def test_a_policy_without_kernels_never_builds_them(oracle_folder, kernel_builds):
    model = AutoModelForCausalLM.from_pretrained(oracle_folder[1], dtype=torch.bfloat16, progress=False)
    assert model.execution_policy.kernels == "torch"
    with torch.no_grad():
        model(IDS)
    assert kernel_builds == []


class RecordingOps(TorchOps):
    """ATen, counting what the forward asked of its kernel set."""

    def __init__(self):
        self.calls: dict[str, int] = {}

    def _count(self, name):
        self.calls[name] = self.calls.get(name, 0) + 1

    def rms_norm(self, *args):
        self._count("rms_norm")
        return super().rms_norm(*args)

    def rotary(self, *args):
        self._count("rotary")
        return super().rotary(*args)

    def silu_mul(self, *args):
        self._count("silu_mul")
        return super().silu_mul(*args)

    def attends(self, *args):
        self._count("attends")
        return False


def test_the_kernel_set_is_an_argument_of_forward(oracle_folder):
    model = load(oracle_folder[1], kernels="torch")
    recording = RecordingOps()
    hidden = model.model.embed(IDS[:1, :1])  # one row: the fused gate/up path, where silu_mul serves
    with torch.no_grad():
        out, _ = model.model(hidden, None, None, None, ops=recording)
        default, _ = model.model(hidden, None, None, None)
    layers = len(model.model.layers)
    # two norms per layer and the final one; q and k rotated together (fused q/k/v) in each layer
    assert recording.calls == {"rms_norm": 2 * layers + 1, "rotary": layers, "silu_mul": layers, "attends": layers}
    assert torch.equal(out, default)


def test_model_and_layer_files_never_choose_kernels_or_devices():
    root = Path(tokenmill.__file__).parent
    files = sorted((root / "models").glob("*.py")) + [root / "layers" / f"{name}.py" for name in
                                                      ("norm", "attention", "mlp", "rope", "decoder", "moe")]
    for path in files:
        source = path.read_text()
        assert not re.search(r"from \.\. import kernels|from \.\.kernels|import kernels", source), path
        # (a meta-device test remains: it asks whether weights exist yet, not where to run)
        assert not re.search(r"device\.type\s*[!=]=\s*\"(cpu|cuda)|is_cpu|is_cuda|cuda\.is_available|native_kernel",
                             source), path


def test_loading_rebinds_no_initializer_and_leaves_other_threads_alone(oracle_folder, monkeypatch):
    originals = {name: getattr(nn.init, name) for name in dir(nn.init) if name.endswith("_")}
    seen = []
    real_init = RMSNorm.__init__

    def observing_init(self, *args, **kwargs):  # runs while build_model constructs the model
        real_init(self, *args, **kwargs)
        if seen:
            return
        here = nn.init.normal_(torch.zeros(256, device="cpu"))  # the meta device is the default here
        elsewhere = []
        thread = threading.Thread(target=lambda: elsewhere.append(nn.init.normal_(torch.zeros(256))))
        thread.start()
        thread.join()
        bound = {name: getattr(nn.init, name) for name in originals}
        seen.append((here, elsewhere[0], bound))

    monkeypatch.setattr(RMSNorm, "__init__", observing_init)
    load(oracle_folder[1])
    here, elsewhere, bound_during = seen[0]
    assert bound_during == originals  # nothing in torch.nn.init was replaced, even during the load
    assert not here.any()  # on the loading thread, initialisation is skipped ...
    assert elsewhere.std() > 0.5  # ... while another thread initialises as usual
    assert {name: getattr(nn.init, name) for name in originals} == originals
    assert nn.init.normal_(torch.zeros(256)).std() > 0.5


def test_skip_initialization_is_scoped_to_its_with_block():
    tensor = torch.zeros(64)
    with weights_module.SkipInitialization():
        assert nn.init.kaiming_uniform_(tensor) is tensor and not tensor.any()
        assert torch.ones(2).sum() == 2  # everything else runs as usual
    assert nn.init.uniform_(tensor).any()


def test_keep_quantized_on_a_dense_checkpoint_is_refused(oracle_folder):
    with pytest.raises(ExecutionPolicyError, match="GGUF checkpoints only"):
        load(oracle_folder[1], keep_quantized=True)


@needs_kernels
def test_to_rebuilds_the_policy_and_says_what_changed(oracle_folder):
    model = load(oracle_folder[1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert model.to("cpu").execution_policy.kernels == "exact"  # nothing changes: no warning
    with pytest.warns(RuntimeWarning, match="kernels: exact → torch"):
        model.to(torch.bfloat16)
    policy = model.execution_policy
    assert (policy.dtype, policy.kernels, model.dtype) == (torch.bfloat16, "torch", torch.bfloat16)
    assert model.float().execution_policy.dtype == torch.float32  # the shorthands move the policy too
    assert model.half().execution_policy.dtype == model.dtype == torch.float16


@needs_kernels
def test_set_execution_policy_refuses_another_weight_format(oracle_folder):
    model = load(oracle_folder[1], kernels="native")
    sdpa = dataclasses.replace(model.execution_policy, attention="sdpa")
    model.set_execution_policy(sdpa)
    assert model.execution_policy is sdpa and not model.execution_policy.ops.native_attention
    with pytest.raises(ExecutionPolicyError, match="holds dense weights"):
        model.set_execution_policy(dataclasses.replace(sdpa, weight_format="gguf-blocks"))


@needs_kernels
@pytest.mark.parametrize("kernel_set", ["torch", "exact"])
def test_greedy_decoding_takes_its_argmax_from_the_models_kernel_set(oracle_folder, monkeypatch, kernel_set):
    """kernels="torch" never reaches the C argmax (so never builds the kernels at the first greedy step); the
    kernel sets with C kernels take it; the tokens are the same either way."""
    _, folder = oracle_folder
    model = load(folder, kernels=kernel_set)
    calls = []
    exact_argmax = kernels.argmax
    monkeypatch.setattr(kernels, "argmax", lambda scores: calls.append(scores.shape) or exact_argmax(scores))
    reference = load(folder, kernels="torch")
    with torch.no_grad():
        tokens = model.generate(IDS, max_new_tokens=3, do_sample=False)
    assert (len(calls) > 0) == (kernel_set != "torch")
    monkeypatch.setattr(kernels, "argmax", exact_argmax)
    with torch.no_grad():
        assert torch.equal(tokens, reference.generate(IDS, max_new_tokens=3, do_sample=False))
