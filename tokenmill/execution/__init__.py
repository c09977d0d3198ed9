"""How a loaded model runs: the execution policy (device, dtype, weight format, kernel set, attention backend,
threads) chosen once at load, and the kernel sets it hands to the forward pass."""
