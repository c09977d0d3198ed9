"""Disk offload keeps the process within its CPU budget while it loads and while it generates: each run in a
fresh process, its peak RSS (VmHWM, read after loading, then reset and read after generating) against what its
in-memory modules hold. The process's memory beside the weights (tokenizer and metadata, the reader's
unpermuted Q/K copies, compiled kernels and library code, activations, KV cache) does not grow with the budget:
measured at the smaller budget, it is the stated margin of the larger one."""

import json
import subprocess
import sys

CHILD = """
import json, sys, tempfile, torch
from tokenmill import AutoModelForCausalLM
from tokenmill.assembly.device_map import module_bytes, placeable_modules

def status(key):
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(key + ":"))

base = status("VmRSS")
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], progress=False, device_map="auto",
                                             max_memory={"cpu": sys.argv[2]}, offload_folder=tempfile.mkdtemp())
load_peak = status("VmHWM") - base
open("/proc/self/clear_refs", "w").write("5")  # VmHWM from here: the generation's peak, not the load's
model.generate(torch.tensor([[1, 504, 3458, 282, 4649, 314]]), max_new_tokens=16, do_sample=False)
modules, layers = placeable_modules(model)
counted = set()
sizes = {name: module_bytes(module, counted) for name, module in modules.items()}
print(json.dumps({"peak": status("VmHWM") - base, "load_peak": load_peak,
                  "in_memory": sum(size for name, size in sizes.items() if model.hf_device_map[name] != "disk"),
                  "layer": max(sizes[name] for name in layers),
                  "disk_layers": sum(model.hf_device_map[name] == "disk" for name in layers)}))
"""


def _run(gguf, budget: str) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, str(gguf), budget], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_peak_rss_follows_the_budget(smollm2_gguf):
    small, large = _run(smollm2_gguf, "40MiB"), _run(smollm2_gguf, "80MiB")
    assert small["in_memory"] <= 40 * 2**20 and large["in_memory"] <= 80 * 2**20
    assert small["disk_layers"] > large["disk_layers"] > 0
    beside_weights = small["peak"] - small["in_memory"]  # the process's own memory, at the smaller budget
    # the larger budget's peak: its in-memory weights, the same memory beside them, and at most the disk layer
    # that runs and the one prefetched
    assert large["peak"] <= large["in_memory"] + beside_weights + 2 * large["layer"], (small, large)
    # loading reads each weight once and keeps only the in-memory modules; the file pages it reads are dropped as
    # it goes, but a host whose page cache holds large folios maps a whole folio per fault (seen: a CI host 70 MB
    # above this machine), so the load's bound allows one more file on top of the same margin
    beside_at_load = small["load_peak"] - small["in_memory"]
    file_bytes = smollm2_gguf.stat().st_size
    assert large["load_peak"] <= large["in_memory"] + beside_at_load + 2 * large["layer"] + file_bytes, (small, large)
