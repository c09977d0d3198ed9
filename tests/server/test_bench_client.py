"""`tokenmill bench serve` against the test server: every request completes and the figures are consistent."""

import argparse

from tokenmill.bench import serving


def test_bench_serve_reports_throughput_and_latencies(served, capsys):
    parser = argparse.ArgumentParser()
    serving.add_args(parser)
    args = parser.parse_args(["--url", served.url, "--num-requests", "6", "--concurrency", "3",
                              "--max-tokens", "4", "--request-rate", "50", "--json"])
    assert serving.main(args) == 0
    import json

    result = json.loads(capsys.readouterr().out)
    assert result["completed"] == 6 and result["failed"] == 0 and result["output_tokens"] == 24
    assert result["throughput_tok_s"] > 0
    assert 0 < result["ttft_s"]["p50"] <= result["ttft_s"]["p99"] <= result["latency_s"]["p99"]
    assert result["itl_s"]["p50"] > 0


def test_serve_command_parses_its_flags():
    from tokenmill.cli import build_parser

    args = build_parser().parse_args(["serve", "model.gguf", "--port", "0", "--max-concurrent-requests", "4",
                                      "--api-key", "k", "--cors-allow-origin", "*", "--threads", "1"])
    assert (args.model, args.port, args.max_concurrent_requests, args.api_key) == ("model.gguf", 0, 4, "k")
    assert args.cors_allow_origin == ["*"] and args.run.__module__ == "tokenmill.commands.serve"
