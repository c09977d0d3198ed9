"""Bench output: a readable table (about 120 columns; every column with `wide`) and the JSON file."""

from __future__ import annotations

import json
from pathlib import Path

MB = 1024 * 1024


def _median(result: dict, name: str):
    value = result.get(name)
    return value.get("median") if isinstance(value, dict) else value


def _fmt(value, digits: int = 1, scale: float = 1.0) -> str:
    return "-" if value is None else f"{value / scale:.{digits}f}"


RATIO_LABELS = {"decode_tokens_per_s": "decode", "prefill_tokens_per_s": "prefill", "ttft_s": "ttft",
                "decode_tokens_per_cpu_s": "decode/cpu", "prefill_tokens_per_cpu_s": "prefill/cpu"}
NARROW_RATIOS = ("decode_tokens_per_s", "prefill_tokens_per_s")  # the default table's ratios: the headline two

# (header, wide only): the narrow table (the default) fits in about 120 columns; --wide shows every column
COLUMNS = [("workload", False), ("engine", False), ("TTFT ms", False), ("prefill tok/s", False),
           ("decode tok/s", False), ("spread", True), ("decode tok/CPU-s", True), ("peak RSS MB", False),
           ("KV KiB/tok", True), ("tokenmill vs this", False)]
HEADERS = [header for header, _ in COLUMNS]


SETTING_FIELDS = ("dtype", "attn_implementation", "cache_implementation", "threads", "weights", "precision")
_UNSAID = {"weights": "auto", "precision": "exact"}  # a default setting left out of the workload's text


def _setting_text(point: dict, name: str) -> str:
    value = point.get(name, _UNSAID.get(name, "auto"))
    return f"t{value}" if name == "threads" else ("" if _UNSAID.get(name) == value else str(value))


def _varying_settings(points: list[dict]) -> tuple[str, ...]:
    """The settings that differ between points (the others are said once, above the table)."""
    return tuple(name for name in SETTING_FIELDS if len({_setting_text(p, name) for p in points}) > 1)


def _workload_text(point: dict, settings: tuple[str, ...] = SETTING_FIELDS) -> str:
    parts = [f"{point['prompt_length']}+{point['new_tokens']} x{point['batch_size']}"]
    parts += [_setting_text(point, name) for name in settings]
    return " ".join(part for part in parts if part)


def _row_cells(point: dict, name: str, result: dict, wide: bool = True,
               settings: tuple[str, ...] = SETTING_FIELDS) -> list[str]:
    workload = _workload_text(point, settings)
    blank = [""] * (len(HEADERS) - 3)
    if "unsupported" in result:
        return [workload, name, "unsupported"] + blank
    if result.get("out_of_memory"):
        return [workload, name, "out of memory"] + blank
    decode = result.get("decode_tokens_per_s") or {}
    spread = decode.get("spread_pct")
    ttft = _median(result, "ttft_s")
    ratio = (point.get("ratios", {}).get(f"vs_{name}") or {}) if name != "tokenmill" else {}
    shown = ratio if wide else {key: ratio.get(key) for key in NARROW_RATIOS}
    ratio_text = " ".join(f"{RATIO_LABELS[key]} {value:.2f}x" for key, value in shown.items() if value)
    return [workload, name, _fmt(ttft and ttft * 1000, 0), _fmt(_median(result, "prefill_tokens_per_s")),
            _fmt(decode.get("median")), _fmt(spread, 0) + "%" if spread is not None else "-",
            _fmt(_median(result, "decode_tokens_per_cpu_s")), _fmt(result.get("peak_rss_bytes"), 0, MB),
            _fmt(result.get("kv_cache_bytes_per_token"), 1, 1024), ratio_text]


def format_table(report: dict, wide: bool = False) -> str:
    keep = [index for index, (_, wide_only) in enumerate(COLUMNS) if wide or not wide_only]
    points = report["points"]
    settings = SETTING_FIELDS if wide or not points else _varying_settings(points)
    rows = [HEADERS]
    for point in points:
        for name, result in point["results"].items():
            rows.append(_row_cells(point, name, result, wide, settings))
    rows = [[row[index] for index in keep] for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(keep))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    common = [name for name in SETTING_FIELDS if name not in settings and _setting_text(points[0], name)]
    if common:
        lines.insert(0, "every row: " + " ".join(_setting_text(points[0], name) for name in common))
    for name, info in report.get("models", {}).items():
        lines.append(f"{name}: load {info['load_seconds']:.2f} s, weights {info['weight_bytes'] / MB:.1f} MB")
        if "placement" in info:
            lines.append(placement_line(name, info, report["points"]))
    if any("peak_rss_shared_process_bytes" in result for point in report["points"]
           for result in point["results"].values()):
        lines.append("peak RSS: each engine measured in a process of its own (the models it alone holds)")
    for name, limit in report.get("limits", {}).items():
        lines.append(f"{name}: longest sequence that fits {limit['longest_fit']} "
                     f"(first failure {limit['first_failure']}: {limit['stopped_because']}; "
                     f"offloaded fallback at {limit['fallback_to_offloaded_at']})")
    return "\n".join(lines)


def placement_line(name: str, info: dict, points: list[dict]) -> str:
    """Where the layers went, and the highest peak RSS of the runs against the CPU budget asked for."""
    placement = info["placement"]
    counts: dict[str, int] = {}
    for device in placement["hf_device_map"].values():
        counts[str(device)] = counts.get(str(device), 0) + 1
    engine = name.split()[0]
    peaks = [point["results"][engine]["peak_rss_bytes"] for point in points
             if (point["results"].get(engine) or {}).get("peak_rss_bytes")]
    budget = (placement.get("max_memory") or {}).get("cpu")
    text = f"{name}: device_map={placement.get('device_map')!r}: " + ", ".join(
        f"{count} modules on {device}" for device, count in counts.items())
    if peaks:
        before = info.get("rss_before_load_bytes") or 0
        text += (f"; peak RSS {max(peaks) / MB:.1f} MB = {before / MB:.1f} MB before loading + "
                 f"{(max(peaks) - before) / MB:.1f} MB")
    if budget is not None:
        text += f", against max_memory cpu={budget}"
    return text


def write_json(report: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
