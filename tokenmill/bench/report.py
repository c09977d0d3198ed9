"""Bench output: a readable table, the JSON file, and PNG plots (tokens/s and memory against sequence length)."""

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


def _row_cells(point: dict, name: str, result: dict) -> list[str]:
    workload = (f"{point['prompt_length']}+{point['new_tokens']} x{point['batch_size']} {point['dtype']} "
                f"{point['attn_implementation']} {point['cache_implementation']} t{point['threads']}")
    if point.get("weights", "auto") != "auto":
        workload += f" {point['weights']}"
    blank = [""] * (len(HEADERS) - 3)
    if "unsupported" in result:
        return [workload, name, "unsupported"] + blank
    if result.get("out_of_memory"):
        return [workload, name, "out of memory"] + blank
    decode = result.get("decode_tokens_per_s") or {}
    spread = decode.get("spread_pct")
    ttft = _median(result, "ttft_s")
    ratio = (point.get("ratios", {}).get(f"vs_{name}") or {}) if name != "tokenmill" else {}
    ratio_text = " ".join(f"{RATIO_LABELS[key]} {value:.2f}x" for key, value in ratio.items() if value)
    return [workload, name, _fmt(ttft and ttft * 1000, 0), _fmt(_median(result, "prefill_tokens_per_s")),
            _fmt(decode.get("median")), _fmt(spread, 0) + "%" if spread is not None else "-",
            _fmt(_median(result, "decode_tokens_per_cpu_s")), _fmt(result.get("peak_rss_bytes"), 0, MB),
            _fmt(result.get("kv_cache_bytes_per_token"), 1, 1024), ratio_text]


HEADERS = ["workload", "engine", "TTFT ms", "prefill tok/s", "decode tok/s", "spread", "decode tok/CPU-s",
           "peak RSS MB", "KV KiB/token", "tokenmill vs this (medians)"]


def format_table(report: dict) -> str:
    rows = [HEADERS]
    for point in report["points"]:
        for name, result in point["results"].items():
            rows.append(_row_cells(point, name, result))
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADERS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    for name, info in report.get("models", {}).items():
        lines.append(f"{name}: load {info['load_seconds']:.2f} s, weights {info['weight_bytes'] / MB:.1f} MB")
    for name, limit in report.get("limits", {}).items():
        lines.append(f"{name}: longest sequence that fits {limit['longest_fit']} "
                     f"(first failure {limit['first_failure']}: {limit['stopped_because']}; "
                     f"offloaded fallback at {limit['fallback_to_offloaded_at']})")
    return "\n".join(lines)


def write_json(report: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")


def _series(report: dict, field: str):
    """{(engine, weights, batch, cache): [(sequence length, value)]} from the sweep points."""
    series: dict[tuple, list] = {}
    for point in report["points"]:
        for name, result in point["results"].items():
            value = _median(result, field)
            if value is None:
                continue
            key = (name, point.get("weights", "auto"), point["batch_size"], point["cache_implementation"])
            series.setdefault(key, []).append((point["prompt_length"] + point["new_tokens"], value))
    return series


def write_plots(report: dict, folder: Path) -> list[Path]:
    """tokens/s and peak memory against sequence length; needs matplotlib (pip install matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot
    except ImportError:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    figures = [("tokens_per_s.png", "tokens/s", [("decode_tokens_per_s", "decode"),
                                                 ("prefill_tokens_per_s", "prefill")], 1.0),
               ("memory.png", "peak RSS (MB)", [("peak_rss_bytes", "peak RSS")], MB)]
    written = []
    for file_name, ylabel, fields, scale in figures:
        figure, axes = pyplot.subplots(figsize=(7, 4.5))
        several_weights = len({point.get("weights") for point in report["points"]}) > 1
        colors: dict[tuple, str] = {}  # one colour per engine (and weight mode), a line style per measure
        batch_markers: dict[int, str] = {}
        for style, (field, label) in zip(("-", "--", ":"), fields):
            for (engine, weights, batch, cache), points in sorted(_series(report, field).items()):
                points.sort()
                # with several weight modes each is its own line (the other engines' runs paired with it)
                mode = f" [{weights}]" if several_weights else ""
                color = colors.setdefault((engine, mode), f"C{len(colors) % 10}")
                marker = batch_markers.setdefault(batch, "osD^v<>"[len(batch_markers) % 7])
                axes.plot([p[0] for p in points], [p[1] / scale for p in points], marker=marker, color=color,
                          linestyle=style, label=f"{engine}{mode} {label} b{batch} {cache}")
        if file_name == "memory.png":
            for engine, limit in report.get("limits", {}).items():
                tried = [t for t in limit["tried"] if t["peak_rss_bytes"]]
                axes.plot([t["sequence_length"] for t in tried], [t["peak_rss_bytes"] / MB for t in tried],
                          linestyle="--", marker="x", label=f"{engine} limit search")
        axes.set_xlabel("sequence length (prompt + generated)")
        axes.set_ylabel(ylabel)
        axes.set_xscale("log", base=2)
        if file_name == "tokens_per_s.png":
            axes.set_yscale("log")  # prefill and decode rates differ by orders of magnitude
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=7)
        figure.tight_layout()
        path = folder / file_name
        figure.savefig(path, dpi=110)
        pyplot.close(figure)
        written.append(path)
    return written
