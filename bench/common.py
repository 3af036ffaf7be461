"""Helpers shared by the benchmarks: interleaved timing with medians, peak memory in a subprocess."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from typing import Callable


def interleaved(fns: dict[str, Callable[[], object]], repeats: int = 7, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each function, running them in turn (A B C A B C ...) so that
    machine noise hits all of them alike."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def versus(t: dict[str, float], peer: str, digits: int = 1) -> dict[str, float]:
    """Timings of `interleaved` as '<name>_ms' fields, then the speed-ups of clipguide fp32 and bf16
    over the `peer` entry."""
    out = {f"{k}_ms": round(v * 1e3, digits) for k, v in t.items()}
    out["fp32_speedup"] = round(t[peer] / t["clipguide_fp32"], 2)
    out["bf16_speedup"] = round(t[peer] / t["clipguide_bf16"], 2)
    return out


def peak_rss_of(code: str) -> dict:
    """Run `code` in a fresh interpreter; its last line of output must be one JSON object, returned
    with the process's peak resident memory added as "peak_rss_mb"."""
    wrapper = (code + "\nimport resource as _r, sys as _s\n"
               "print('{\"peak_rss_mb\": %.1f}' % (_r.getrusage(_r.RUSAGE_SELF).ru_maxrss / 1024), file=_s.stderr)\n")
    out = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row.update(json.loads(out.stderr.strip().splitlines()[-1]))
    return row


def vm_hwm_bytes() -> int:
    """Peak resident set size of this process so far (Linux /proc)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmHWM not available")


def reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so a later reading measures only what follows."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
