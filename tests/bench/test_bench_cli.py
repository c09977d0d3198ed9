"""`tokenmill bench` end to end on a tiny model, against transformers: every JSON field, the table, the plots,
and the memory-limit search stopping cleanly."""

from __future__ import annotations

import json
import os
import statistics

import pytest
import torch
import transformers

from tokenmill import cli, kernels
from tokenmill.bench.backends import TokenmillBackend
from tokenmill.bench.limits import search_limit
from tokenmill.bench.measure import Workload
from tokenmill.bench import plots as plots_module

TIMED_FIELDS = ("ttft_s", "prefill_tokens_per_s", "decode_tokens_per_s", "prefill_tokens_per_cpu_s",
                "decode_tokens_per_cpu_s")
RUN_FIELDS = {"out_of_memory", "repeats", "fell_back_to_offloaded", *TIMED_FIELDS, "peak_rss_bytes",
              "peak_rss_delta_bytes", "memory_growth_per_token_bytes", "kv_cache_bytes", "kv_cache_bytes_per_token",
              "gpu_peak_allocated_bytes", "gpu_peak_reserved_bytes", "peak_rss_shared_process_bytes",
              "memory_process_pid"}
# tiny model: 2 layers x (keys + values) x 2 kv heads x head_dim 8 x 4 bytes
KV_BYTES_PER_TOKEN = 2 * 2 * 2 * 8 * 4
STAT_FIELDS = {"median", "min", "max", "spread_pct", "runs"}
POINT_FIELDS = {"prompt_length", "new_tokens", "batch_size", "dtype", "attn_implementation",
                "cache_implementation", "threads", "weights", "precision", "results", "ratios"}
LIMIT_FIELDS = {"longest_fit", "first_failure", "stopped_because", "budget_bytes", "fallback_to_offloaded_at",
                "tried"}


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    folder = tmp_path_factory.mktemp("tiny-llama-bench")
    transformers.LlamaForCausalLM(config).eval().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def bench_run(tiny_folder, tmp_path_factory):
    output = tmp_path_factory.mktemp("bench-out")
    argv = ["bench", "-m", str(tiny_folder), "--prompt-lengths", "4,8", "--new-tokens", "4", "--batch-sizes", "2",
            "--caches", "dynamic,quantized", "--repeats", "2", "--warmup", "1", "--vs", "transformers",
            "--limit-search", "--limit-start", "16", "--limit-max", "40", "--memory-budget", "64GiB",
            "--no-progress", "-o", str(output)]
    assert cli.main(argv) == 0
    return json.loads((output / "bench.json").read_text()), output


def test_every_point_has_every_field_for_both_engines(bench_run):
    report, _ = bench_run
    assert len(report["points"]) == 2 * 2  # prompts x caches
    for point in report["points"]:
        assert set(point) == POINT_FIELDS
        mine = point["results"]["tokenmill"]
        assert set(mine) == RUN_FIELDS and mine["repeats"] == 2 and not mine["out_of_memory"]
        for field in TIMED_FIELDS:
            stats = mine[field]
            assert set(stats) == STAT_FIELDS and len(stats["runs"]) == 2
            assert stats["median"] == statistics.median(stats["runs"]) > 0
            assert stats["min"] <= stats["median"] <= stats["max"]
        # prefill rate is the prompt tokens over the time to first token; the ratios below are float64 divisions of
        # the same medians, a few roundings of 2**-53 apart: pytest.approx's default rel 1e-6 holds them
        assert mine["prefill_tokens_per_s"]["median"] == pytest.approx(
            statistics.median(point["batch_size"] * point["prompt_length"] / t for t in mine["ttft_s"]["runs"]))
        assert mine["peak_rss_bytes"] > 0
        # measured in a process holding only tokenmill's model: below this process's reading, which also counts
        # transformers' model and modules (the two engines once reported the same figure)
        assert mine["peak_rss_bytes"] < mine["peak_rss_shared_process_bytes"]
        # exact bytes; the quantized cache's 32-token full-precision residual still holds all 11 positions
        assert mine["kv_cache_bytes_per_token"] == KV_BYTES_PER_TOKEN
        other = point["results"]["transformers"]
        if point["cache_implementation"] == "quantized":  # transformers needs optimum-quanto for it
            assert "unsupported" in other and point["ratios"] == {}
            continue
        assert set(other) == RUN_FIELDS
        assert other["peak_rss_bytes"] != mine["peak_rss_bytes"]  # each engine's own process, its own figure
        assert len({other["memory_process_pid"], mine["memory_process_pid"], os.getpid()}) == 3
        ratio = point["ratios"]["vs_transformers"]
        assert ratio["decode_tokens_per_s"] == pytest.approx(
            mine["decode_tokens_per_s"]["median"] / other["decode_tokens_per_s"]["median"])
        assert ratio["ttft_s"] == pytest.approx(other["ttft_s"]["median"] / mine["ttft_s"]["median"])
        assert set(ratio) == set(TIMED_FIELDS)
        assert other["kv_cache_bytes_per_token"] == KV_BYTES_PER_TOKEN  # transformers' cache, same layout


def test_environment_models_limits_and_outputs(bench_run):
    report, output = bench_run
    environment = report["environment"]
    assert {"date_utc", "model", "versions", "note", "sweep", "load_average_at_start"} <= set(environment)
    assert environment["system"]["block_kernels"]["built_isa"] == kernels.build_isa()
    assert {"cpu_model", "isa", "gemm", "torch"} <= set(environment["system"])
    assert environment["versions"]["transformers"] == transformers.__version__
    assert set(report["models"]) == {"tokenmill float32 sdpa", "transformers float32 sdpa"}
    for info in report["models"].values():
        assert info["load_seconds"] > 0 and info["weight_bytes"] > 0
    assert report["models"]["transformers float32 sdpa"]["execution_policy"] is None
    policy = report["models"]["tokenmill float32 sdpa"]["execution_policy"]
    assert (policy["device"], policy["dtype"], policy["weight_format"]) == ("cpu", "float32", "dense")
    assert policy["kernels"] in ("exact", "torch") and policy["attention"] == "sdpa"
    tokenmill_weights = report["models"]["tokenmill float32 sdpa"]["weight_bytes"]
    assert tokenmill_weights == sum(p.numel() * 4 for p in transformers.LlamaForCausalLM.from_pretrained(
        environment["model"]).parameters())
    for limit in report["limits"].values():
        assert set(limit) == LIMIT_FIELDS
        assert [t["sequence_length"] for t in limit["tried"]] == [20, 36, 40]  # 16, 32, then the 36-token cap
        assert limit["longest_fit"] == 40 and limit["first_failure"] is None
        assert "context" not in limit["stopped_because"]
    for name in ("tokens_per_s.png", "memory.png"):
        assert (output / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_table_is_printed(bench_run, capsys, tiny_folder, tmp_path):
    argv = ["bench", "-m", str(tiny_folder), "--prompt-lengths", "4", "--new-tokens", "3", "--repeats", "1",
            "--warmup", "0", "--no-progress", "--no-plots", "-o", str(tmp_path)]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "decode tok/s" in out and "bench.json" in out
    assert "every row: float32 sdpa dynamic t2" in out and "\n4+3 x1 " in out  # settings shared by all rows said once


def test_limit_search_stops_cleanly_at_out_of_memory(tiny_folder, monkeypatch):
    backend = TokenmillBackend(tiny_folder)
    model = backend.model("float32", "sdpa")
    real_generate = TokenmillBackend.generate

    def generate(self, model, input_ids, *args, **kwargs):
        if input_ids.shape[1] >= 20:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")
        return real_generate(self, model, input_ids, *args, **kwargs)

    monkeypatch.setattr(TokenmillBackend, "generate", generate)
    workload = Workload(5, 2, 1)
    result = search_limit(backend, model, workload, start=5, maximum=None, budget=None)
    assert [t["sequence_length"] for t in result["tried"]] == [7, 12, 22]
    assert result["longest_fit"] == 12 and result["first_failure"] == 22
    assert result["stopped_because"] == "out of memory"


def test_limit_search_budget_and_context(tiny_folder):
    backend = TokenmillBackend(tiny_folder)
    model = backend.model("float32", "sdpa")
    over = search_limit(backend, model, Workload(8, 2, 1), start=8, maximum=None, budget=1)
    assert over["longest_fit"] is None and over["first_failure"] == 10 and "budget" in over["stopped_because"]
    full = search_limit(backend, model, Workload(8, 2, 1), start=8, maximum=None, budget=None)
    assert [t["sequence_length"] for t in full["tried"]] == [10, 18, 34, 64]
    assert full["stopped_because"] == "reached the model's context length (64)"


def test_bench_serve_dispatches_to_the_serving_bench(monkeypatch):
    from tokenmill.bench import serving

    seen = {}
    monkeypatch.setattr(serving, "main", lambda args: seen.setdefault("url", args.url) and 0)
    assert cli.main(["bench", "serve", "--url", "http://127.0.0.1:9"]) == 0
    assert seen["url"] == "http://127.0.0.1:9"


def test_bad_arguments_are_refused(tiny_folder):
    with pytest.raises(SystemExit):
        cli.main(["bench", "-m", str(tiny_folder), "--prompt-lengths", "0"])
    with pytest.raises(SystemExit, match="--vs supports transformers"):
        cli.main(["bench", "-m", str(tiny_folder), "--vs", "vllm", "--no-progress"])
    with pytest.raises(SystemExit, match="--weights takes gguf, dense, auto or a quantization method"):
        cli.main(["bench", "-m", str(tiny_folder), "--weights", "int4", "--no-progress"])
    with pytest.raises(SystemExit, match=r"q8_0, q4_0, q4_1, q5_0, q5_1, nf4, fp4, q2_k, q3_k, q4_k, q5_k, q6_k, q4_k_m\), "
                                         r"not \['iq4_xs'\]"):
        cli.main(["bench", "-m", str(tiny_folder), "--quantize", "iq4_xs", "--no-progress"])


def test_quantize_at_load_joins_the_weights_sweep(tiny_folder, tmp_path):
    argv = ["bench", "-m", str(tiny_folder), "--prompt-lengths", "4", "--new-tokens", "3", "--repeats", "1",
            "--warmup", "0", "--quantize", "nf4", "--quantize", "q4_k_m", "--no-progress", "--no-plots",
            "-o", str(tmp_path)]
    assert cli.main(argv) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    assert [point["weights"] for point in report["points"]] == ["auto", "nf4", "q4_k_m"]
    weights = {name: info["weight_bytes"] for name, info in report["models"].items()}
    assert weights["tokenmill float32 sdpa nf4"] < weights["tokenmill float32 sdpa"]
    assert weights["tokenmill float32 sdpa q4_k_m"] < weights["tokenmill float32 sdpa"]


def _sweep_report(model, tmp_path, *flags) -> dict:
    """bench.json of a one-repeat 4+3-token run of `model` with `flags` (memory measured in-process)."""
    argv = ["bench", "-m", str(model), "--prompt-lengths", "4", "--new-tokens", "3", "--repeats", "1",
            "--warmup", "0", *flags, "--no-progress", "--no-plots", "--memory-in-process", "-o", str(tmp_path)]
    assert cli.main(argv) == 0
    return json.loads((tmp_path / "bench.json").read_text())


def test_gguf_weight_kinds_are_a_sweep_dimension(smollm2_gguf, tmp_path):
    report = _sweep_report(smollm2_gguf, tmp_path, "--weights", "gguf,dense")
    assert [point["weights"] for point in report["points"]] == ["gguf", "dense"]
    weights = {name: info["weight_bytes"] for name, info in report["models"].items()}
    # Q4_1/Q8_0 blocks against float32: about 4.5-8.5 bits per weight instead of 32
    assert weights["tokenmill float32 sdpa gguf"] < weights["tokenmill float32 sdpa dense"] / 4
    # each weight mode is its own plotted line, not one line zig-zagging between the two
    series = plots_module._series(report, "decode_tokens_per_s")
    assert {key[:2] for key in series} == {("tokenmill", "gguf"), ("tokenmill", "dense")}
    assert all(len(points) == 1 for points in series.values())


class FakeLlama:
    """Stands in for llama_cpp.Llama: greedy 'generation' that counts up from the last prompt token."""

    def __init__(self, model_path, n_threads, **kwargs):
        self.model_path, self.n_threads = model_path, n_threads
        self.cached = 0  # prompt tokens kept from the previous call, as llama-cpp-python reuses a prefix

    def n_vocab(self):
        return 97

    def reset(self):
        self.cached = 0

    def generate(self, tokens, **sampling):
        assert sampling["temp"] == 0.0 and sampling["top_k"] == 1
        assert self.cached == 0, "the bench must reset the context: a reused prefix skips the prefill it times"
        self.cached = len(tokens)
        token = tokens[-1]
        while True:  # like llama-cpp-python: endless until the caller stops
            token = (token + 1) % 97
            yield token


def test_versus_llama_cpp_runs_batch_one_and_marks_the_rest(smollm2_gguf, tmp_path, monkeypatch):
    import sys
    import types

    monkeypatch.setitem(sys.modules, "llama_cpp", types.SimpleNamespace(Llama=FakeLlama))
    argv = ["bench", "-m", str(smollm2_gguf), "--prompt-lengths", "4", "--new-tokens", "3", "--batch-sizes", "1,2",
            "--repeats", "1", "--warmup", "0", "--vs", "llama.cpp", "--no-progress", "--no-plots",
            "--memory-in-process", "-o", str(tmp_path)]  # the fake Llama lives in this process only
    assert cli.main(argv) == 0
    one, two = json.loads((tmp_path / "bench.json").read_text())["points"]
    assert one["results"]["llama.cpp"]["decode_tokens_per_s"]["median"] > 0
    assert "vs_llama.cpp" in one["ratios"]
    assert "one sequence at a time" in two["results"]["llama.cpp"]["unsupported"]


def test_versus_llama_cpp_without_the_package_is_a_clear_error(smollm2_gguf, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import fails as if not installed
    assert cli.main(["bench", "-m", str(smollm2_gguf), "--vs", "llama.cpp", "--no-progress"]) == 1
    assert "pip install llama-cpp-python" in capsys.readouterr().err


def test_device_map_offloads_and_reports_peak_rss_against_the_budget(tiny_folder, tmp_path, capsys):
    argv = ["bench", "-m", str(tiny_folder), "--prompt-lengths", "4", "--new-tokens", "3", "--repeats", "1",
            "--warmup", "0", "--device-map", "sequential", "--max-memory", "cpu=60KiB", "--no-progress",
            "--no-plots", "-o", str(tmp_path)]
    assert cli.main(argv) == 0
    info = json.loads((tmp_path / "bench.json").read_text())["models"]["tokenmill float32 sdpa"]
    assert info["placement"]["max_memory"] == {"cpu": "60KiB"}
    assert info["placement"]["offload_folder"] == str(tmp_path / "offload")
    assert info["placement"]["hf_device_map"]["model.layers.1"] == "disk"
    assert info["rss_before_load_bytes"] > 0
    out = capsys.readouterr().out
    assert "2 modules on disk; peak RSS" in out and "against max_memory cpu=60KiB" in out


def test_placement_options_are_refused_where_they_would_do_nothing(tiny_folder):
    with pytest.raises(SystemExit, match="need --device-map"):
        cli.main(["bench", "-m", str(tiny_folder), "--max-memory", "cpu=1GiB", "--no-progress"])
    with pytest.raises(SystemExit, match="tokenmill only; drop --vs"):
        cli.main(["bench", "-m", str(tiny_folder), "--device-map", "auto", "--vs", "transformers", "--no-progress"])
    with pytest.raises(SystemExit):
        cli.main(["bench", "-m", str(tiny_folder), "--device-map", "auto", "--max-memory", "300MiB"])


def test_precisions_are_a_sweep_dimension(smollm2_gguf, tmp_path):
    report = _sweep_report(smollm2_gguf, tmp_path, "--precision", "exact,fast")
    assert [point["precision"] for point in report["points"]] == ["exact", "fast"]
    policies = {name: info["execution_policy"]["precision"] for name, info in report["models"].items()}
    assert policies == {"tokenmill float32 sdpa": "exact", "tokenmill float32 sdpa fast": "fast"}
    series = plots_module._series(report, "decode_tokens_per_s")
    assert {key[:2] for key in series} == {("tokenmill", "auto"), ("tokenmill", "auto fast")}


def test_fast_precision_on_dense_weights_is_marked_unsupported(smollm2_gguf, tmp_path):
    argv = ["bench", "-m", str(smollm2_gguf), "--prompt-lengths", "4", "--new-tokens", "2", "--repeats", "1",
            "--warmup", "0", "--weights", "dense", "--precision", "fast", "--no-progress", "--no-plots",
            "--memory-in-process", "-o", str(tmp_path)]
    assert cli.main(argv) == 0
    point, = json.loads((tmp_path / "bench.json").read_text())["points"]
    assert "dense weights have no int8 kernel" in point["results"]["tokenmill"]["unsupported"]
