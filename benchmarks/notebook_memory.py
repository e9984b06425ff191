"""Peak memory of a notebook-like session: three large arrays, eleven Parallel calls.

    python -m benchmarks.notebook_memory [--size 256M] [--repeats 3] [--json out.json]
    python -m benchmarks --only notebook-memory --size 256M     # the same samples, time only

A session as a notebook runs it: ``X1``, ``X2``, ``X3`` (``--size`` bytes each, float64,
64 columns, other contents) live in the namespace; each gets 2-3 cross-validation-like
calls (``Parallel(n_jobs=2)``, 4 tasks, task ``k`` reduces fold ``k``: a slab of rows);
``X1`` is updated in place between its calls (``X1 *= 0.5``); ``X2`` is deleted midway
(``del X2``: the namespace held its only reference); the last call gets ``X1`` and ``X3``
together.  See ``SEQUENCE``.  The workers are started before (a tiny call, not measured).

- ``notebook-memory``: the libraries as they come (arraycache's ``max_shared_bytes='auto'``);
- ``notebook-memory-bound``: arraycache under ``parallel_config(max_shared_bytes=1.5 x one
  array)``, so least recently used copies must go; joblib has no such setting and runs
  the same session as in ``notebook-memory``.

Sampled every ~10 ms by a thread, over the process and its children (the loky workers and
resource tracker), from ``/proc/<pid>/status`` and the sharing folders of this process
(joblib's ``joblib_memmapping_folder_<pid>_*``, arraycache's ``arraycache-<pid>-*``, in
/dev/shm and the temp dir):

- ``footprint``: anonymous memory of all the processes (``RssAnon``: the arrays, heap
  copies) + bytes allocated by the sharing files.  No page is counted twice: a mapped
  sharing file is file-backed, not anonymous;
- ``rss_total``: the caller's RSS + the children's RSS + the sharing files: an upper bound
  (a sharing page a worker has touched is counted in its RSS and in the file);
- ``children_pss``: the children's summed PSS (``/proc/<pid>/smaps_rollup``, every ~50 ms);
- ``shm_files``: the sharing files in /dev/shm alone (``shm_extra``: growth of
  /dev/shm as ``statvfs`` sees it, other processes on the machine included);
- ``files_written``: the sum of the sizes of all sharing files that existed (each file
  once, at its largest); ``write_chars``: bytes passed to write(2) by the caller and its
  children (``/proc/<pid>/io``: files and pipes);
- ``left_seq`` / ``left_final``: sharing files still there 1 s after the last call, and
  1 s after ``del`` of every array and ``gc.collect()``.

``time`` is the wall time of the steps (calls, the update, the del); checking the results
is not timed.  Every sample is a fresh subprocess (``benchmarks._worker``).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from .common import MIB, Workload, format_size, parse_size, warm_memory

N_JOBS = 2
N_FOLDS = 4
COLUMNS = 64
#: ``notebook-memory-bound``: the pool may keep 1.5 arrays.
BOUND_FACTOR = 1.5
SHM = "/dev/shm"

#: (label, action, arrays, alpha): the session, in order.
SEQUENCE: tuple[tuple[str, str, tuple[str, ...], float], ...] = (
    ("cv X1 a", "call", ("X1",), 1.0),
    ("cv X1 b", "call", ("X1",), 2.0),
    ("cv X2 a", "call", ("X2",), 1.0),
    ("cv X2 b", "call", ("X2",), 2.0),
    ("X1 *= 0.5", "update", ("X1",), 0.5),
    ("cv X1 c", "call", ("X1",), 3.0),
    ("cv X3 a", "call", ("X3",), 1.0),
    ("cv X3 b", "call", ("X3",), 2.0),
    ("del X2", "del", ("X2",), 0.0),
    ("cv X1 d", "call", ("X1",), 4.0),
    ("cv X3 c", "call", ("X3",), 3.0),
    ("X1 vs X3", "call", ("X1", "X3"), 1.0),
)


# --- the tasks ---------------------------------------------------------------------------------


def fold_sum(x: np.ndarray, k: int, n_folds: int, alpha: float) -> float:
    """``alpha`` times the sum of fold ``k`` of ``n_folds`` (a contiguous slab of rows)."""
    start, stop = k * len(x) // n_folds, (k + 1) * len(x) // n_folds
    return alpha * float(x[start:stop].sum())


def fold_diff(a: np.ndarray, b: np.ndarray, k: int, n_folds: int, alpha: float) -> float:
    """Fold ``k`` of ``a`` against the same fold of ``b``."""
    return fold_sum(a, k, n_folds, alpha) - fold_sum(b, k, n_folds, alpha)


def _tasks(lib, arrays: list[np.ndarray], alpha: float):
    if len(arrays) == 1:
        return (lib.delayed(fold_sum)(arrays[0], k, N_FOLDS, alpha) for k in range(N_FOLDS))
    a, b = arrays
    return (lib.delayed(fold_diff)(a, b, k, N_FOLDS, alpha) for k in range(N_FOLDS))


def _expected(arrays: list[np.ndarray], alpha: float) -> list[float]:
    if len(arrays) == 1:
        return [fold_sum(arrays[0], k, N_FOLDS, alpha) for k in range(N_FOLDS)]
    return [fold_diff(*arrays, k, N_FOLDS, alpha) for k in range(N_FOLDS)]


# --- what the processes hold -------------------------------------------------------------------


def _status(pid: int) -> tuple[int, int]:
    """(RSS, anonymous RSS) of ``pid`` in bytes, from /proc/<pid>/status (cheap: counters)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            text = f.read()
    except OSError:
        return 0, 0
    rss = anon = 0
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
        elif line.startswith("RssAnon:"):
            anon = int(line.split()[1]) * 1024
    return rss, anon


def _pss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _roots() -> dict[str, str]:
    return {"shm": SHM, "tmp": tempfile.gettempdir()}


def sharing_folders(pid: int, kinds: tuple[str, ...] = ("shm", "tmp")) -> list[tuple[str, str]]:
    """(root kind 'shm'/'tmp', path) of the sharing folders of process ``pid`` (joblib's and
    arraycache's folder names carry the pid)."""
    prefixes = (f"joblib_memmapping_folder_{pid}_", f"arraycache-{pid}-")
    found = []
    for kind in kinds:
        root = _roots()[kind]
        try:
            names = os.listdir(root)
        except OSError:
            continue
        found += [
            (kind, os.path.join(root, name))
            for name in names
            if name.startswith(prefixes) and not name.endswith(".lock")
        ]
    return found


def sharing_files(
    pid: int, folders: list[tuple[str, str]] | None = None
) -> dict[tuple[int, int], tuple[str, int, int]]:
    """(st_dev, st_ino) -> (root kind 'shm'/'tmp', size, bytes allocated) of every file in the
    sharing folders of process ``pid`` (or in ``folders``, from :func:`sharing_folders`)."""
    found = {}
    for kind, folder in sharing_folders(pid) if folders is None else folders:
        for dirpath, _dirs, files in os.walk(folder):
            for file in files:
                with contextlib.suppress(OSError):
                    st = os.lstat(os.path.join(dirpath, file))
                    found[(st.st_dev, st.st_ino)] = (
                        kind, st.st_size, min(st.st_size, st.st_blocks * 512)
                    )
    return found


def _shm_used() -> int:
    try:
        st = os.statvfs(SHM)
    except OSError:
        return 0
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def _write_chars(pids: list[int]) -> dict[int, int]:
    out = {}
    for pid in pids:
        with contextlib.suppress(psutil.Error, AttributeError):
            out[pid] = psutil.Process(pid).io_counters().write_chars
    return out


class FootprintSampler:
    """Peaks of the session's memory (see the module docstring), sampled in a thread.

    ``step`` (set by the caller) labels the samples: each step gets its own peak.
    """

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.pid = os.getpid()
        self.me = psutil.Process()
        self.children: list[int] = []
        self.tmp_folders: list[tuple[str, str]] = []
        self.step = "start"
        self.start: dict[str, int] = {}
        self.peaks: dict[str, int] = {}
        self.step_peaks: dict[str, int] = {}
        self.step_shm_peaks: dict[str, int] = {}
        self.files_seen: dict[tuple[int, int], int] = {}
        self.shm_start = _shm_used()
        self.ticks = 0
        self.writes_start: dict[int, int] = {}
        self._lock = threading.Lock()  # the thread's samples and the caller's, one at a time
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _refresh_children(self) -> None:
        with contextlib.suppress(psutil.Error):
            self.children = [c.pid for c in self.me.children(recursive=True)]

    def sample(self) -> dict[str, int]:
        """Take one sample now (the caller takes one at each step's start and end, so a
        step shorter than the interval has its samples too)."""
        with self._lock:
            return self._sample()

    def _sample(self) -> dict[str, int]:
        if self.ticks % 20 == 0:  # listing children scans /proc, the temp dir is big
            self._refresh_children()
            self.tmp_folders = sharing_folders(self.pid, ("tmp",))
        rss, anon = _status(self.pid)
        children_rss = children_anon = 0
        for pid in self.children:
            r, a = _status(pid)
            children_rss += r
            children_anon += a
        shm_files = tmp_files = 0
        folders = sharing_folders(self.pid, ("shm",)) + self.tmp_folders
        for key, (kind, size, allocated) in sharing_files(self.pid, folders).items():
            self.files_seen[key] = max(size, self.files_seen.get(key, 0))
            if kind == "shm":
                shm_files += allocated
            else:
                tmp_files += allocated
        now = {
            "footprint": anon + children_anon + shm_files + tmp_files,
            "rss_total": rss + children_rss + shm_files + tmp_files,
            "anon": anon + children_anon,
            "children_rss": children_rss,
            "shm_files": shm_files,
            "tmp_files": tmp_files,
            "shm_machine_extra": _shm_used() - self.shm_start,
        }
        if self.ticks % 5 == 0:
            now["children_pss"] = sum(_pss(pid) for pid in self.children)
        self.ticks += 1
        if not self.start:
            self.start = dict(now)
        for key, value in now.items():
            self.peaks[key] = max(self.peaks.get(key, value), value)
        step = self.step
        self.step_peaks[step] = max(self.step_peaks.get(step, 0), now["footprint"])
        self.step_shm_peaks[step] = max(self.step_shm_peaks.get(step, 0), now["shm_files"])
        return now

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> FootprintSampler:
        self._refresh_children()
        self.writes_start = _write_chars([self.pid, *self.children])
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def written(self) -> int:
        """write(2) bytes of this process and its children since ``__enter__``."""
        self._refresh_children()
        now = _write_chars([self.pid, *self.children])
        return sum(now[p] - self.writes_start.get(p, 0) for p in now)


def _left(pid: int) -> tuple[int, int]:
    """(bytes allocated, number) of the sharing files of ``pid`` still there."""
    files = sharing_files(pid).values()
    return sum(allocated for _kind, _size, allocated in files), len(files)


# --- the session -------------------------------------------------------------------------------


def make_array(nbytes: int, seed: int) -> np.ndarray:
    """``nbytes`` of float64 in 64 columns, uniform in [0, 1): a feature matrix."""
    rows = max(nbytes // (8 * COLUMNS), 4 * N_FOLDS)
    return np.random.default_rng(seed).random((rows, COLUMNS))


def _step(lib, ns: dict[str, np.ndarray], action: str, names: tuple[str, ...],
          alpha: float) -> tuple[float, list[float] | None]:
    """Run one step on the namespace ``ns``; (seconds, results of a call)."""
    if action == "del":
        start = time.perf_counter()
        for name in names:
            del ns[name]
        return time.perf_counter() - start, None
    arrays = [ns[name] for name in names]
    start = time.perf_counter()
    if action == "update":
        for x in arrays:
            x *= alpha  # a power of two: the sums scale exactly
        return time.perf_counter() - start, None
    result = lib.Parallel(n_jobs=N_JOBS)(_tasks(lib, arrays, alpha))
    return time.perf_counter() - start, result


def _check(ns: dict[str, np.ndarray], names: tuple[str, ...], alpha: float,
           result: list[float]) -> None:
    expected = _expected([ns[name] for name in names], alpha)
    if not np.allclose(result, expected, rtol=1e-9, atol=0):
        raise AssertionError(f"wrong results: {result} instead of {expected}")


def _pool_state(lib) -> tuple[int, int] | None:
    """(bytes, copies) in arraycache's sharing pool; None for joblib."""
    if lib.__name__ != "arraycache":
        return None
    from arraycache.parallel._pool import POOL

    return POOL.nbytes(), len(POOL.paths())


def _auto_bound(lib, limit: Any) -> int | None:
    if lib.__name__ != "arraycache":
        return None
    from arraycache.parallel._pool import POOL

    return POOL._bound(limit)


def session(lib, size: int, tmp: Path, bound: int | None = None) -> dict:
    """Run ``SEQUENCE`` with ``lib``; ``bound`` sets arraycache's ``max_shared_bytes``."""
    mb = 1 / MIB
    ns = {name: make_array(size, seed) for seed, name in enumerate(("X1", "X2", "X3"), 1)}
    small = make_array(COLUMNS * 8 * 64, 0)
    config = (
        lib.parallel_config(max_shared_bytes=bound)
        if bound is not None and lib.__name__ == "arraycache"
        else contextlib.nullcontext()
    )
    trace = []
    with config:
        lib.Parallel(n_jobs=N_JOBS)(_tasks(lib, [small], 1.0))  # start the workers
        limit = bound if bound is not None else "auto"
        bound_bytes = _auto_bound(lib, limit)
        # The pool may hold up to ~2 arrays beside the 3 in memory; touch and free that much.
        warm_memory(size, times=4)
        gc.collect()
        pid = os.getpid()
        wall = 0.0
        needed_gc = 0.0
        with FootprintSampler() as sampler:
            base = sampler.start["footprint"]
            for label, action, names, alpha in SEQUENCE:
                sampler.step = label
                sampler.sample()
                dead = weakref.ref(ns[names[0]]) if action == "del" else None
                seconds, result = _step(lib, ns, action, names, alpha)
                wall += seconds
                sampler.sample()
                if dead is not None and dead() is not None:
                    # Held by a reference cycle (a finished call's objects): the collector
                    # frees it at its next run; run it now, so the del frees what it should.
                    needed_gc = 1.0
                    start = time.perf_counter()
                    gc.collect()
                    wall += time.perf_counter() - start
                    if dead() is not None:
                        raise AssertionError(f"{label}: the array is still referenced")
                if result is not None:
                    _check(ns, names, alpha, result)
                shm_now = sum(a for k, _s, a in sharing_files(pid).values() if k == "shm")
                pool = _pool_state(lib)
                trace.append({
                    "step": label,
                    "s": round(seconds, 4),
                    "step_peak_extra_mb": round((sampler.step_peaks[label] - base) * mb),
                    "shm_peak_mb": round(sampler.step_shm_peaks[label] * mb),
                    "shm_after_mb": round(shm_now * mb),
                    **({"pool_mb": round(pool[0] * mb), "pool_copies": pool[1]} if pool else {}),
                })
            sampler.step = "end"
        written = sampler.written()
        time.sleep(1.0)  # joblib's resource tracker unlinks files after the workers let go
        left_seq = _left(pid)
        pool_seq = _pool_state(lib)
        ns.clear()
        gc.collect()
        time.sleep(1.0)
        left_final = _left(pid)
        pool_final = _pool_state(lib)
    peaks, start = sampler.peaks, sampler.start
    out = {
        "time": wall,
        "start_mb": start["footprint"] * mb,
        "peak_mb": peaks["footprint"] * mb,
        "peak_extra_mb": (peaks["footprint"] - start["footprint"]) * mb,
        "rss_total_peak_mb": peaks["rss_total"] * mb,
        "children_pss_peak_mb": peaks.get("children_pss", 0) * mb,
        "anon_peak_mb": peaks["anon"] * mb,
        "shm_files_peak_mb": peaks["shm_files"] * mb,
        "tmp_files_peak_mb": peaks["tmp_files"] * mb,
        "shm_extra_mb": peaks["shm_machine_extra"] * mb,
        "files_written_mb": sum(sampler.files_seen.values()) * mb,
        "files_seen": float(len(sampler.files_seen)),
        "write_chars_mb": written * mb,
        "left_seq_mb": left_seq[0] * mb,
        "left_seq_files": float(left_seq[1]),
        "left_final_mb": left_final[0] * mb,
        "left_final_files": float(left_final[1]),
        "array_mb": size * mb,
        "samples": float(sampler.ticks),
        "del_needed_gc": needed_gc,
        "trace": trace,
    }
    if bound_bytes is not None:
        out["bound_mb"] = bound_bytes * mb
    if pool_seq is not None and pool_final is not None:
        out["pool_seq_mb"] = pool_seq[0] * mb
        out["pool_final_mb"] = pool_final[0] * mb
    return out


def default_bound(lib, size: int, tmp: Path) -> dict:
    return session(lib, size, tmp)


def small_bound(lib, size: int, tmp: Path) -> dict:
    return session(lib, size, tmp, bound=int(BOUND_FACTOR * size))


WORKLOADS = [
    Workload("notebook-memory", default_bound, "parallel",
             notes="3 arrays, 11 calls, an in-place update, a del; peak memory"),
    Workload("notebook-memory-bound", small_bound, "parallel",
             notes="the same, arraycache's max_shared_bytes = 1.5 arrays"),
]


# --- standalone: the memory table -----------------------------------------------------------------

#: (variant label, workload, library)
VARIANTS = (
    ("joblib (loky)", "notebook-memory", "joblib"),
    ("arraycache, max_shared_bytes='auto'", "notebook-memory", "arraycache"),
    (f"arraycache, max_shared_bytes={BOUND_FACTOR:g} arrays", "notebook-memory-bound",
     "arraycache"),
)

COLUMNS_SHOWN = (
    ("time", "wall"),
    ("peak_mb", "peak footprint"),
    ("peak_extra_mb", "peak - start"),
    ("rss_total_peak_mb", "peak RSS+files"),
    ("shm_files_peak_mb", "peak /dev/shm files"),
    ("files_written_mb", "sharing files written"),
    ("write_chars_mb", "write(2) bytes"),
    ("left_seq_mb", "left after session"),
    ("left_final_mb", "left after del all"),
)


def _fmt(key: str, value: float) -> str:
    if key == "time":
        return f"{value:.2f} s"
    return f"{value:,.0f} MiB"


def render(medians: dict[str, dict], samples: dict[str, list[dict]], size: int,
           repeats: int) -> str:
    lines = [
        f"notebook-memory: 3 arrays of {format_size(size)}, {len(SEQUENCE)} steps "
        f"({sum(a == 'call' for _l, a, _n, _x in SEQUENCE)} Parallel calls x {N_FOLDS} tasks, "
        f"n_jobs={N_JOBS}), medians of {repeats}",
        "",
        "| variant | " + " | ".join(title for _k, title in COLUMNS_SHOWN) + " |",
        "|---|" + "---|" * len(COLUMNS_SHOWN),
    ]
    for label, m in medians.items():
        cells = [_fmt(k, m[k]) if k in m else "-" for k, _t in COLUMNS_SHOWN]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    jl = medians[VARIANTS[0][0]]
    lines.append("")
    for label, m in list(medians.items())[1:]:
        ratios = [
            f"{title} {jl[k] / m[k]:.2f}"
            for k, title in COLUMNS_SHOWN[:7]
            if m.get(k) and k in jl
        ]
        lines.append(f"joblib / {label}: " + ", ".join(ratios))
    for label, m in medians.items():
        if "bound_mb" in m:
            lines.append(f"{label}: bound {m['bound_mb']:,.0f} MiB; pool after the session "
                         f"{m.get('pool_seq_mb', 0):,.0f} MiB, after del all "
                         f"{m.get('pool_final_mb', 0):,.0f} MiB")
    lines += ["", "Steps of the first sample: seconds; peak footprint - start, and peak of the "
              "sharing files in /dev/shm, within the step (MiB); those files after it (and the "
              "copies in arraycache's pool):", ""]
    header = ["step"]
    for label in samples:
        header += [f"{label}: s", "peak", "shm peak", "shm after"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|---" * len(header) + "|")
    for i, (step, *_rest) in enumerate(SEQUENCE):
        row = [step]
        for runs in samples.values():
            t = runs[0]["trace"][i]
            shm = f"{t['shm_after_mb']}"
            if "pool_copies" in t:
                shm += f" ({t['pool_copies']} copies)"
            row += [f"{t['s']:.2f}", f"{t['step_peak_extra_mb']}", f"{t['shm_peak_mb']}", shm]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from .__main__ import run_sample

    parser = argparse.ArgumentParser(prog="python -m benchmarks.notebook_memory")
    parser.add_argument("--size", default="256M", help="bytes of each array (default 256M)")
    parser.add_argument("--repeats", type=int, default=3, help="samples per variant")
    parser.add_argument("--json", default=None, help="write the samples and medians here")
    parser.add_argument("--tmp", default="/work/bench-tmp", help="where samples run")
    parser.add_argument("--render", default=None, help="print the tables of a saved --json")
    args = parser.parse_args(argv)
    if args.render:
        saved = json.loads(Path(args.render).read_text())
        print(render(saved["medians"], saved["samples"], saved["size"], saved["repeats"]))
        return 0
    size = parse_size(args.size)
    Path(args.tmp).mkdir(parents=True, exist_ok=True)
    samples: dict[str, list[dict]] = {label: [] for label, _w, _l in VARIANTS}
    with tempfile.TemporaryDirectory(dir=args.tmp) as run_dir:
        for rep in range(args.repeats):
            for label, workload, lib in VARIANTS:
                result = run_sample(workload, lib, size, Path(run_dir), 1800)
                if "error" in result:
                    print(f"{label}: {result['error']}\n" + "\n".join(result["stderr_tail"]))
                    return 1
                if result.get("shm_leftovers"):
                    print(f"{label}: left in /dev/shm at exit: {result['shm_leftovers']}")
                samples[label].append(result)
                print(f"[{rep + 1}/{args.repeats}] {label}: {result['time']:.2f} s, peak "
                      f"{result['peak_mb']:,.0f} MiB", flush=True)
    medians = {
        label: {
            k: statistics.median(s[k] for s in runs)
            for k in runs[0]
            if isinstance(runs[0][k], int | float)
        }
        for label, runs in samples.items()
    }
    print()
    print(render(medians, samples, size, args.repeats))
    if args.json:
        payload = {"size": size, "repeats": args.repeats, "medians": medians,
                   "samples": samples}
        Path(args.json).write_text(json.dumps(payload, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
