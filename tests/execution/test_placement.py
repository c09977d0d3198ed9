"""device_map / max_memory → placement: order, budgets, disk, and every refusal naming what to change."""

import pytest
import torch

from tokenmill.execution.placement import (DevicePlacement, budgeted_placement, explicit_placement,
                                           normalize_device, parse_max_memory, parse_size, plan_placement)

MiB = 2**20
LAYERS = [f"model.layers.{index}" for index in range(4)]
SIZES = {"model.embed_tokens": 4 * MiB, **{name: 10 * MiB for name in LAYERS}, "model.norm": 1024,
         "lm_head": 4 * MiB}


def test_sizes_read_like_accelerate():
    assert parse_size("300MiB", "cpu") == 300 * MiB
    assert parse_size("2GB", "cpu") == 2 * 10**9
    assert parse_size("1.5 GiB", 0) == int(1.5 * 2**30)
    assert parse_size(1234, "cpu") == 1234
    for bad in ("lots", "12 parsecs", -1, True):
        with pytest.raises(ValueError, match="max_memory"):
            parse_size(bad, "cpu")


def test_sequential_fills_devices_in_order_then_disk():
    placed = budgeted_placement(SIZES, LAYERS, "sequential", {"cuda:0": 16 * MiB, "cpu": 30 * MiB})
    assert placed["model.embed_tokens"] == "cuda:0" and placed["model.layers.0"] == "cuda:0"
    # the CPU keeps room for the largest layer (the disk layer being read) and for norm + head
    assert placed["model.layers.1"] == "cpu"
    assert [placed[name] for name in LAYERS[2:]] == ["disk", "disk"]
    assert placed["model.norm"] == placed["lm_head"] == "cpu"


def test_everything_fits_no_disk():
    placed = budgeted_placement(SIZES, LAYERS, "sequential", {"cpu": 100 * MiB})
    assert set(placed.values()) == {"cpu"}


def test_balanced_spreads_over_gpus():
    placed = budgeted_placement(SIZES, LAYERS, "balanced", {"cuda:0": 100 * MiB, "cuda:1": 100 * MiB,
                                                              "cpu": 100 * MiB})
    assert {placed[name] for name in LAYERS} == {"cuda:0", "cuda:1"}
    assert placed["model.embed_tokens"] == "cuda:0" and placed["lm_head"] == "cuda:1"


def test_budget_too_small_for_one_layer_names_the_size_to_use():
    with pytest.raises(ValueError, match=r"max_memory\['cpu'\] is too small to run even one decoder layer.*"
                                         r"at least 14\.0 MiB"):
        budgeted_placement(SIZES, LAYERS, "auto", {"cpu": 12 * MiB})


def test_explicit_map_longest_key_wins():
    placed = explicit_placement(SIZES, LAYERS, {"model": "cpu", "model.layers.2": "disk", "lm_head": "cpu"})
    assert placed["model.layers.2"] == "disk" and placed["model.layers.1"] == "cpu"
    assert explicit_placement(SIZES, LAYERS, {"": "cpu"}) == {name: "cpu" for name in SIZES}


@pytest.mark.parametrize("device_map, message", [
    ({"model.layers.9": "cpu", "": "cpu"}, "'model.layers.9' names no module"),
    ({"model.layers.0.mlp": "cpu", "": "cpu"}, "inside 'model.layers.0'.*places whole modules"),
    ({"model": "cpu"}, "no entry for 'lm_head'"),
    ({"": "tpu"}, "unknown device 'tpu'"),
    ({"": "cpu", "lm_head": "disk"}, "only decoder layers"),
    ({"": "disk"}, "only decoder layers"),
])
def test_explicit_map_refusals(device_map, message):
    with pytest.raises(ValueError, match=message):
        explicit_placement(SIZES, LAYERS, device_map)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_absent_gpu_is_refused():
    for device in (0, "cuda", "cuda:0"):
        with pytest.raises(ValueError, match="is not present.*use 'cpu' or 'disk'"):
            normalize_device(device, "device_map['']")
    with pytest.raises(ValueError, match="not present"):
        parse_max_memory({0: "1GiB", "cpu": "1GiB"})


def test_plan_refuses_what_would_be_ignored(tmp_path):
    with pytest.raises(ValueError, match="max_memory applies to device_map='auto'"):
        plan_placement(SIZES, LAYERS, {"": "cpu"}, {"cpu": "1GiB"})
    with pytest.raises(ValueError, match="offload_folder"):
        plan_placement(SIZES, LAYERS, "sequential", {"cpu": "30MiB"})
    with pytest.raises(ValueError, match="device_map must be one of"):
        plan_placement(SIZES, LAYERS, 3.5, None)
    with pytest.raises(ValueError, match="max_memory must be a dict"):
        plan_placement(SIZES, LAYERS, "auto", "30MiB")


def test_placement_reports_transformers_style(tmp_path):
    placement = plan_placement(SIZES, LAYERS, "sequential", {"cpu": "30MiB"}, tmp_path / "offload")
    assert isinstance(placement, DevicePlacement) and (tmp_path / "offload").is_dir()
    report = placement.as_dict()
    assert list(report) == list(SIZES) and report["model.layers.3"] == "disk"
    assert placement.execution_device == torch.device("cpu")
    assert DevicePlacement((("lm_head", "cuda:1"),)).as_dict() == {"lm_head": 1}
