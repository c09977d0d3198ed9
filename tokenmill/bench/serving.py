"""`tokenmill bench serve`: Poisson arrivals of streaming requests against a running server (OpenAI API);
reports throughput, time to first token and inter-token latency percentiles."""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from dataclasses import dataclass, field

TOPICS = ["the ocean", "a city at night", "an old library", "mountains", "a robot", "the history of bread",
          "a train journey", "winter", "a garden", "the stars", "a market", "rain"]


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="base URL of a running `tokenmill serve`")
    parser.add_argument("--served-model", default=None, help="model name to send (default: the server's first)")
    parser.add_argument("--num-requests", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8, help="most requests in flight at once")
    parser.add_argument("--request-rate", type=float, default=float("inf"),
                        help="mean arrivals per second (Poisson); inf sends as fast as concurrency allows")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens generated per request (eos ignored)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


@dataclass
class RequestResult:
    ok: bool
    ttft: float = 0.0
    latency: float = 0.0
    itls: list[float] = field(default_factory=list)
    output_tokens: int = 0
    error: str = ""


async def _one(client, url: str, model: str, prompt: str, max_tokens: int) -> RequestResult:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    result = RequestResult(ok=False)
    last = None
    try:
        async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
            if response.status_code != 200:
                result.error = f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"
                return result
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                payload = json.loads(line[6:])
                if payload.get("usage"):
                    result.output_tokens = payload["usage"]["completion_tokens"]
                if not payload.get("choices"):
                    continue
                now = time.perf_counter()
                if last is None:
                    result.ttft = now - started
                else:
                    result.itls.append(now - last)
                last = now
    except Exception as error:  # noqa: BLE001 - a failed request is a result, not a crash
        result.error = f"{type(error).__name__}: {error}"
        return result
    result.latency = time.perf_counter() - started
    result.ok = True
    return result


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"mean": 0.0, "p50": 0.0, "p90": 0.0, "p99": 0.0}
    ordered = sorted(values)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"mean": statistics.fmean(ordered), "p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99)}


async def run_benchmark(url: str, model: str | None, num_requests: int, concurrency: int, request_rate: float,
                        max_tokens: int, seed: int) -> dict:
    import httpx2

    rng = random.Random(seed)
    limits = httpx2.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx2.AsyncClient(timeout=600, limits=limits) as client:
        if model is None:
            model = (await client.get(f"{url}/v1/models")).json()["data"][0]["id"]
        gate = asyncio.Semaphore(concurrency)

        async def gated(prompt: str) -> RequestResult:
            async with gate:
                return await _one(client, url, model, prompt, max_tokens)

        tasks = []
        started = time.perf_counter()
        for i in range(num_requests):
            prompt = f"Request {i}: write a short paragraph about {rng.choice(TOPICS)}."
            tasks.append(asyncio.create_task(gated(prompt)))
            if request_rate != float("inf"):
                await asyncio.sleep(rng.expovariate(request_rate))
        results = await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
    good = [r for r in results if r.ok]
    tokens = sum(r.output_tokens for r in good)
    return {
        "requests": num_requests, "completed": len(good), "failed": num_requests - len(good),
        "concurrency": concurrency, "request_rate": request_rate, "duration_s": elapsed,
        "output_tokens": tokens, "throughput_tok_s": tokens / elapsed, "requests_per_s": len(good) / elapsed,
        "ttft_s": _percentiles([r.ttft for r in good]), "itl_s": _percentiles([x for r in good for x in r.itls]),
        "latency_s": _percentiles([r.latency for r in good]),
        "errors": sorted({r.error for r in results if not r.ok})[:5],
    }


def _report(result: dict) -> str:
    lines = [f"requests {result['completed']}/{result['requests']} completed, concurrency {result['concurrency']}, "
             f"rate {result['request_rate']}/s, {result['duration_s']:.1f} s",
             f"throughput {result['throughput_tok_s']:.1f} output tok/s, {result['requests_per_s']:.2f} req/s"]
    for name in ("ttft_s", "itl_s", "latency_s"):
        p = result[name]
        lines.append(f"{name[:-2]:>8} ms  mean {p['mean'] * 1e3:8.1f}  p50 {p['p50'] * 1e3:8.1f}  "
                     f"p90 {p['p90'] * 1e3:8.1f}  p99 {p['p99'] * 1e3:8.1f}")
    for error in result["errors"]:
        lines.append(f"error: {error}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    if args.num_requests < 1 or args.concurrency < 1 or args.max_tokens < 1:
        print("tokenmill bench serve: --num-requests, --concurrency and --max-tokens must be >= 1", file=sys.stderr)
        return 2
    result = asyncio.run(run_benchmark(args.url, args.served_model, args.num_requests, args.concurrency,
                                       args.request_rate, args.max_tokens, args.seed))
    print(json.dumps(result, indent=2) if args.json else _report(result))
    return 0 if result["failed"] == 0 else 1
