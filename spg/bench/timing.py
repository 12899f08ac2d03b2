"""Timing helpers of the benchmark: interleaved repeats, medians, the machine, power-law fits.

Every comparison in the benchmark (end to end vs forward only, fast vs naive SAE step, SAE step vs
a plain matmul, SPG head vs backbone forward) is measured *interleaved*: repeat ``r`` runs every
contender once, in turn, so that a change in the machine's load hits all of them alike. Speeds are
medians over the repeats; ratios are medians of the per-repeat ratios (:func:`paired_ratio`), and
scaling exponents medians of per-repeat fits (:func:`paired_exponent`). On a shared machine that is
what keeps ratios meaningful when absolute numbers drift.
"""

from __future__ import annotations

import math
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class Timing:
    """Wall-clock seconds of every repeat of one contender, plus the CPU time it used."""

    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds) if self.seconds else math.nan

    @property
    def cpu_share(self) -> float:
        """Process CPU seconds per wall second (how many cores it actually got, median)."""
        shares = [c / w for c, w in zip(self.cpu_seconds, self.seconds) if w > 0]
        return statistics.median(shares) if shares else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {"median_s": self.median, "seconds": self.seconds, "cpu_share": self.cpu_share}


def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """Run ``fn`` once; ``(wall seconds, process CPU seconds, result)``."""
    c0, t0 = time.process_time(), time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, time.process_time() - c0, result


def interleaved(
    contenders: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1
) -> dict[str, Timing]:
    """Time each contender ``repeats`` times, round-robin, after ``warmup`` untimed rounds."""
    for _ in range(warmup):
        for fn in contenders.values():
            fn()
    timings = {name: Timing() for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            wall, cpu, _ = timed(fn)
            timings[name].seconds.append(wall)
            timings[name].cpu_seconds.append(cpu)
    return timings


def paired_ratio(num: Timing, den: Timing) -> float:
    """Median over repeats of ``num_i / den_i``: each ratio is taken within one repeat, where both
    contenders ran back to back under the same load (robust to load that changes between repeats)."""
    ratios = [a / b for a, b in zip(num.seconds, den.seconds) if b > 0]
    return statistics.median(ratios) if ratios else math.nan


def paired_exponent(sizes: list[float], timings: list[Timing]) -> float:
    """Median over repeats of the fitted exponent of one repeat's times against ``sizes``."""
    per_repeat = [fit_exponent(sizes, list(secs)) for secs in zip(*(t.seconds for t in timings))]
    return statistics.median(per_repeat) if per_repeat else math.nan


def fit_exponent(sizes: list[float], seconds: list[float]) -> float:
    """Least-squares slope of ``log(seconds)`` against ``log(size)`` (1.0: linear scaling)."""
    x, y = np.log(np.asarray(sizes, float)), np.log(np.asarray(seconds, float))
    if len(x) < 2 or not np.all(np.isfinite(y)):
        return math.nan
    return float(np.polyfit(x, y, 1)[0])


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB.

    ``VmHWM`` from ``/proc/self/status`` where there is one: it belongs to this process image
    only. (``ru_maxrss`` survives ``fork`` + ``exec`` on Linux, so a child started from a large
    parent would report the parent's peak.) Elsewhere ``ru_maxrss``.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / (1024 if sys.platform == "darwin" else 1)


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float] | None:
    """1/5/15-minute load averages (``None`` where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def machine_description(device: str = "cpu") -> dict[str, Any]:
    """What the numbers were measured on: CPU, cores, torch build and thread settings, load."""
    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "mkl": torch.backends.mkl.is_available(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "load_average_start": load_average(),
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.device(device))
        info.update(gpu_name=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    cuda=torch.version.cuda)
    return info
