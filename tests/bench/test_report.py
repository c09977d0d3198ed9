"""The bench table: within about 120 columns by default, every column with wide=True."""

from __future__ import annotations

from tokenmill.bench.report import format_table

from .synthetic import synthetic_report


def test_the_default_table_fits_120_columns():
    table = format_table(synthetic_report())
    assert max(len(line) for line in table.splitlines()) <= 120, table
    assert "decode 2.55x prefill 1.54x" in table and "peak RSS MB" in table
    assert "455" in table and "651" in table  # each engine's own memory
    assert "a process of its own" in table


def test_wide_shows_every_column():
    wide = format_table(synthetic_report(), wide=True)
    narrow = format_table(synthetic_report())
    for header in ("spread", "decode tok/CPU-s", "KV KiB/tok"):
        assert header in wide and header not in narrow
    assert "decode/cpu 2.40x" in wide and "decode/cpu" not in narrow
