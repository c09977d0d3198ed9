"""precision exact vs fast, per kernel: kernels.matmul against kernels.matmul_int8 over the packed layout (two digits)
on random blocks of SmolLM2-135M's and a 1B Llama's shapes, alternating call by call in one process, one thread;
the fastest of N calls each, as a markdown table (docs/performance.md, Precision).

    python scripts/precision_kernel_ab.py
"""
import os, sys, time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests" / "kernels"), str(ROOT / "tests")]
from tokenmill import kernels
from test_gguf_kernels import TYPE_IDS, random_blocks
torch.set_num_threads(1)
shapes = [(3072, 576, "Q4_1"), (576, 1536, "Q4_1"), (3072, 576, "Q4_0"), (3072, 576, "Q8_0"), (49152, 576, "Q8_0"),
          (2048, 2048, "Q4_K"), (16384, 2048, "Q4_K"), (2048, 8192, "Q6_K"), (2048, 2048, "Q6_K")]
for rows, k, name in shapes:
    b = random_blocks(name, rows, k, 1); tid = TYPE_IDS[name]
    p = kernels.pack_int8(b, tid, k)
    for m in (1, 8, 32):
        x = torch.randn(m, k)
        n = 40 if rows * k * m < 20_000_000 else 8
        te, tf = [], []
        for _ in range(n):
            s = time.perf_counter(); kernels.matmul(x, b, tid, k); te.append(time.perf_counter() - s)
            s = time.perf_counter(); kernels.matmul_int8(x, b, tid, k, 2, packed=p); tf.append(time.perf_counter() - s)
        e, f = min(te) * 1e6, min(tf) * 1e6
        print(f"| {rows} x {k}, {name} | {m} | {e:.0f} | {f:.0f} | {e / f:.2f}x | {os.getloadavg()[0]:.1f} |", flush=True)
