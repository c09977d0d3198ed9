"""The bench PNGs: a title naming model, dtype, threads and machine; prefill and decode apart in colour and marker;
memory from 0."""

from __future__ import annotations

from matplotlib import pyplot
from matplotlib.colors import to_hex

from tokenmill.bench.plots import build_figures, write_plots

from .synthetic import synthetic_report


def _lines(figure) -> dict[str, object]:
    return {line.get_label(): line for line in figure.axes[0].get_lines()}


def test_titles_name_model_dtype_threads_and_machine():
    figures = build_figures(synthetic_report())
    for figure in figures.values():
        title = figure.axes[0].get_title()
        for part in ("SmolLM2-135M-Instruct-Q4_1.gguf", "bfloat16", "16 thread", "AMD EPYC 9B14"):
            assert part in title
        pyplot.close(figure)


def test_prefill_and_decode_differ_in_colour_and_marker():
    figure = build_figures(synthetic_report())["tokens_per_s.png"]
    lines = _lines(figure)
    for engine in ("tokenmill", "transformers"):
        decode, prefill = lines[f"{engine} decode b1 offloaded"], lines[f"{engine} prefill b1 offloaded"]
        assert decode.get_marker() != prefill.get_marker()
        assert to_hex(decode.get_color()) != to_hex(prefill.get_color())
    colours = {to_hex(line.get_color()) for line in lines.values()}
    assert len(colours) == len(lines)  # no two lines share a colour
    pyplot.close(figure)


def test_memory_axis_starts_at_zero(tmp_path):
    figure = build_figures(synthetic_report())["memory.png"]
    bottom, top = figure.axes[0].get_ylim()
    assert bottom == 0 and top > 651
    pyplot.close(figure)
    written = write_plots(synthetic_report(), tmp_path)
    assert sorted(path.name for path in written) == ["memory.png", "tokens_per_s.png"]
    assert all(path.read_bytes()[:4] == b"\x89PNG" for path in written)
