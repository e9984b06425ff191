"""Helpers shared by every workload: sizes, memory warm-up, timing, data, disk and memory probes.

A workload is a function ``run(lib, size, tmp) -> dict`` that builds its data, warms memory,
times one thing and returns ``{"time": seconds, ...extras}``. It runs in a fresh subprocess
(see ``benchmarks._worker``); ``lib`` is the imported module (``joblib`` or ``arraycache``),
or ``None`` for the physical references.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "GIB",
    "MIB",
    "MemorySampler",
    "Workload",
    "dir_size",
    "format_size",
    "parse_size",
    "random_array",
    "smooth_array",
    "timed",
    "warm_memory",
]

MIB = 1 << 20
GIB = 1 << 30

#: A cheap key for the cached functions that return a module-level array: hashing it
#: costs nothing, so a miss measures the store and a hit measures the load.
BIG = "big"


@dataclass(frozen=True)
class Workload:
    """One benchmarked operation, run once per sample in a fresh subprocess."""

    name: str
    """Name used in the table, the JSON and ``--only``."""
    run: Callable[[Any, int, Path], dict]
    """``run(lib, size, tmp)`` returns ``{"time": seconds, ...extras}``."""
    issue: str
    """Which part of the design it checks (storage, hashing, parallel, reference)."""
    fixed_size: int | None = None
    """Working size in bytes when it does not follow ``--size``."""
    notes: str = ""
    """One line on what is timed."""


def parse_size(text: str) -> int:
    """'1G', '256M', '1.5GiB', '4096' -> bytes (binary units)."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([kKmMgGtT]?)(i?[bB])?\s*", text)
    if not match:
        raise ValueError(f"not a size: {text!r}")
    number, unit = float(match.group(1)), match.group(2).upper()
    scale = {"": 1, "K": 1 << 10, "M": MIB, "G": GIB, "T": 1 << 40}[unit]
    return int(number * scale)


def format_size(nbytes: float) -> str:
    """Bytes -> '1 GiB', '64 MiB', '1.5 KiB'."""
    for unit, scale in (("GiB", GIB), ("MiB", MIB), ("KiB", 1 << 10)):
        if nbytes >= scale:
            value = nbytes / scale
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.3g} {unit}"
    return f"{nbytes:.0f} B"


def warm_memory(nbytes: int, times: float = 3.0) -> None:
    """Touch and free ``times * nbytes`` of memory, so the next allocations are cheap.

    The VMs these run on hand idle memory back to the host: touching fresh pages costs
    ~2 s/GiB instead of ~0.07 s/GiB. Large numpy buffers are mmap'd and unmapped on free,
    so filling and dropping them leaves that much host-backed memory free in the kernel
    for the timed code (and for worker processes started by it).
    """
    total = int(nbytes * times)
    piece = GIB
    blocks = []
    while total > 0:
        n = min(piece, total)
        blocks.append(np.ones(max(n // 8, 1)))
        total -= n
    del blocks


def timed(func: Callable[[], Any]) -> tuple[float, Any]:
    """Run ``func()`` once; return (seconds, result)."""
    start = time.perf_counter()
    result = func()
    return time.perf_counter() - start, result


def random_array(nbytes: int, seed: int = 0) -> np.ndarray:
    """Uniform float64 in [0, 1): incompressible mantissas."""
    return np.random.default_rng(seed).random(max(nbytes // 8, 1))


def smooth_array(nbytes: int, seed: int = 0) -> np.ndarray:
    """A random walk of small integer steps, as float64: smooth and compressible."""
    steps = np.random.default_rng(seed).integers(-3, 4, size=max(nbytes // 8, 1), dtype=np.int8)
    return np.cumsum(steps, dtype=np.float64)


def dir_size(path: str | os.PathLike) -> int:
    """Bytes on disk of all files under ``path`` (allocated blocks, so sparse files count less)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except FileNotFoundError:
                continue
            total += min(st.st_size, st.st_blocks * 512)
    return total


def _smaps_rollup(pid: int) -> dict[str, int] | None:
    """USS, PSS and anonymous memory of a process in bytes, from /proc/<pid>/smaps_rollup."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = {}
    for line in text.splitlines()[1:]:
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts:
            fields[key] = int(parts[0]) * 1024
    if "Pss" not in fields:
        return None
    return {
        "uss": fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0),
        "pss": fields["Pss"],
        "anon": fields.get("Anonymous", 0),
    }


def _shm_used() -> int:
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return 0
    return (st.f_blocks - st.f_bfree) * st.f_frsize


class MemorySampler:
    """Peak memory of this process and of its children, sampled in a thread every ~20 ms.

    Per process it keeps the peak USS (private pages), PSS (proportional share) and
    anonymous memory (heap copies; file-backed maps of the page cache or /dev/shm are not
    anonymous). USS counts file pages that only one process maps, so a worker mapping a
    shared file alone looks "private": anonymous memory is the honest measure of copies.
    Used as a context manager around the timed call.
    """

    def __init__(self, interval: float = 0.02) -> None:
        import psutil

        self._psutil = psutil
        self.interval = interval
        self.parent = psutil.Process()
        self.peaks: dict[int, dict[str, int]] = {}
        self.firsts: dict[int, dict[str, int]] = {}
        self.shm_start = _shm_used()
        self.shm_peak = self.shm_start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> None:
        try:
            children = self.parent.children(recursive=True)
        except self._psutil.Error:
            children = []
        for pid in [self.parent.pid, *(c.pid for c in children)]:
            mem = _smaps_rollup(pid)
            if mem is None:
                continue
            self.firsts.setdefault(pid, mem)
            peak = self.peaks.setdefault(pid, dict(mem))
            for key, value in mem.items():
                peak[key] = max(peak[key], value)
        self.shm_peak = max(self.shm_peak, _shm_used())

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> MemorySampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def summary(self) -> dict[str, float]:
        """Peaks in MB: workers (max over child processes) and the parent, plus /dev/shm growth."""
        mb = 1e-6
        me = self.parent.pid
        workers = [pid for pid in self.peaks if pid != me]
        out = {
            "parent_extra_anon_mb": (self.peaks[me]["anon"] - self.firsts[me]["anon"]) * mb,
            "parent_peak_uss_mb": self.peaks[me]["uss"] * mb,
            "parent_peak_pss_mb": self.peaks[me]["pss"] * mb,
            "shm_extra_mb": (self.shm_peak - self.shm_start) * mb,
            "child_processes": float(len(workers)),
        }
        if workers:
            out["worker_peak_anon_mb"] = max(self.peaks[p]["anon"] for p in workers) * mb
            out["worker_extra_anon_mb"] = (
                max(self.peaks[p]["anon"] - self.firsts[p]["anon"] for p in workers) * mb
            )
            out["worker_peak_uss_mb"] = max(self.peaks[p]["uss"] for p in workers) * mb
            out["worker_peak_pss_mb"] = max(self.peaks[p]["pss"] for p in workers) * mb
        return out
