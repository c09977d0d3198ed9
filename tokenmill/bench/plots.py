"""Bench PNGs: tokens/s and peak memory against sequence length. Each figure is titled with the model, dtypes,
threads and machine; prefill and decode differ in colour and in marker; the memory axis starts at 0."""

from __future__ import annotations

from pathlib import Path

MB = 1024 * 1024
# one marker per measure, so prefill and decode stay apart in print and for colour-blind readers
MEASURES = {"decode_tokens_per_s": ("decode", "o"), "prefill_tokens_per_s": ("prefill", "^"),
            "peak_rss_bytes": ("peak RSS", "s")}
ENGINE_STYLES = ("-", "--", ":", "-.")  # one line style per engine


def _median(result: dict, name: str):
    value = result.get(name)
    return value.get("median") if isinstance(value, dict) else value


def _mode(point: dict) -> str:
    """tokenmill's weights kind, with the precision when it is not the default: one line per mode."""
    precision = point.get("precision", "exact")
    return point.get("weights", "auto") + ("" if precision == "exact" else f" {precision}")


def _series(report: dict, field: str):
    """{(engine, weights mode, batch, cache): [(sequence length, value)]} from the sweep points."""
    series: dict[tuple, list] = {}
    for point in report["points"]:
        for name, result in point["results"].items():
            value = _median(result, field)
            if value is None:
                continue
            key = (name, _mode(point), point["batch_size"], point["cache_implementation"])
            series.setdefault(key, []).append((point["prompt_length"] + point["new_tokens"], value))
    return series


def plot_title(report: dict) -> str:
    environment = report.get("environment", {})
    sweep = environment.get("sweep", {})
    machine = (environment.get("system") or {}).get("cpu_model") or environment.get("machine") or "unknown machine"
    model = Path(str(environment.get("model", "model"))).name
    dtypes = ", ".join(sweep.get("dtypes", [])) or "?"
    threads = ", ".join(map(str, sweep.get("threads", []))) or "?"
    return f"{model} · {dtypes} · {threads} thread(s)\n{machine}"


def _plot_measures(axes, report: dict, fields: list[str], scale: float) -> None:
    several_weights = len({_mode(point) for point in report["points"]}) > 1
    engine_styles: dict[str, str] = {}
    colour_count = 0
    for field in fields:
        label, marker = MEASURES[field]
        for (engine, weights, batch, cache), points in sorted(_series(report, field).items()):
            points.sort()
            mode = f" [{weights}]" if several_weights else ""
            style = engine_styles.setdefault(engine, ENGINE_STYLES[len(engine_styles) % len(ENGINE_STYLES)])
            colour = f"C{colour_count % 10}"  # every line its own colour: prefill never shares decode's
            colour_count += 1
            axes.plot([p[0] for p in points], [p[1] / scale for p in points], marker=marker, color=colour,
                      linestyle=style, label=f"{engine}{mode} {label} b{batch} {cache}")


def build_figures(report: dict) -> dict:
    """{file name: matplotlib figure}; needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    title = plot_title(report)
    figures = {}
    for file_name, ylabel, fields, scale in (
            ("tokens_per_s.png", "tokens/s", ["decode_tokens_per_s", "prefill_tokens_per_s"], 1.0),
            ("memory.png", "peak RSS (MB)", ["peak_rss_bytes"], MB)):
        figure, axes = pyplot.subplots(figsize=(7, 4.8))
        _plot_measures(axes, report, fields, scale)
        if file_name == "memory.png":
            for engine, limit in report.get("limits", {}).items():
                tried = [t for t in limit["tried"] if t["peak_rss_bytes"]]
                axes.plot([t["sequence_length"] for t in tried], [t["peak_rss_bytes"] / MB for t in tried],
                          linestyle="--", marker="x", label=f"{engine} limit search")
            axes.set_ylim(bottom=0)  # memory from zero: the engines' sizes compare by eye
        else:
            axes.set_yscale("log")  # prefill and decode rates differ by orders of magnitude
        axes.set_title(title, fontsize=9)
        axes.set_xlabel("sequence length (prompt + generated)")
        axes.set_ylabel(ylabel)
        axes.set_xscale("log", base=2)
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=7)
        figure.tight_layout()
        figures[file_name] = figure
    return figures


def write_plots(report: dict, folder: Path) -> list[Path]:
    """The PNG files written; none without matplotlib (pip install matplotlib)."""
    try:
        figures = build_figures(report)
    except ImportError:
        return []
    from matplotlib import pyplot

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for file_name, figure in figures.items():
        path = folder / file_name
        figure.savefig(path, dpi=110)
        pyplot.close(figure)
        written.append(path)
    return written
