"""Side-by-side benchmarks of arraycache against joblib.

    python -m benchmarks --vs joblib [--size 1G] [--repeats 3] [--only REGEX] [--json out.json]
    python -m benchmarks --quick            # everything at 64 MiB, 1 repeat (~2 minutes)
    python -m benchmarks --list

Every sample is one fresh subprocess (``python -m benchmarks._worker``) that builds its
data, touches and frees 3x the working size (these VMs give idle memory back to the
host), times one thing and prints it as JSON. For each workload the libraries alternate
(joblib, arraycache, joblib, arraycache, ...). The physical references (a memory pass,
a raw write with fsync, a raw read from the page cache) run in the same way. Cache
folders live in a temporary directory under ``--tmp`` that is removed after each sample.
The table shows medians; ratio = joblib / arraycache (> 1: arraycache is faster).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ._worker import MARKER
from .common import format_size, parse_size
from .registry import workloads

REPO = Path(__file__).resolve().parent.parent
LIBS = ("joblib", "arraycache")
SHORT = {"joblib": "jl", "arraycache": "ac"}

#: Extras shown in the notes column (key -> label); parallel memory gets its own table.
NOTE_KEYS = {
    "disk_ratio": "disk/nbytes",
    "touch_s": ".sum() after",
    "best_of_5_s": "next hits best",
    "again_s": "2nd hash",
    "per_hit_us": "per hit",
    "no_fsync_s": "without fsync",
}
MEMORY_KEYS = {
    "worker_extra_anon_mb": "worker +anon",
    "worker_peak_uss_mb": "worker USS",
    "worker_peak_pss_mb": "worker PSS",
    "parent_extra_anon_mb": "parent +anon",
    "parent_peak_uss_mb": "parent USS",
    "shm_extra_mb": "/dev/shm +",
}
#: Workload -> physical reference it is compared with in the notes.
REFERENCE_OF = {
    "hash-contiguous": "mem-pass",
    "hash-strided": "mem-pass",
    "hash-memmap": "mem-pass",
    "store-1G": "raw-write",
    "hit-nommap": "raw-read",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    summary = __doc__.split("\n")[0]
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=summary)
    parser.add_argument("--vs", default="joblib", choices=["joblib"], help="reference library")
    parser.add_argument("--size", default=None, help="working size, e.g. 1G, 256M (default 1G)")
    parser.add_argument("--repeats", type=int, default=None, help="samples per library (3)")
    parser.add_argument("--only", default=None, help="regex on workload names")
    parser.add_argument("--libs", default=None, help="comma list: joblib,arraycache (default)")
    parser.add_argument("--quick", action="store_true", help="--size 64M --repeats 1")
    parser.add_argument("--json", default=None, help="write all samples and medians here")
    parser.add_argument("--tmp", default="/work/bench-tmp", help="where cache folders go")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per sample")
    parser.add_argument("--no-references", action="store_true", help="skip the references")
    parser.add_argument("--render", default=None, help="print the tables of a saved --json")
    parser.add_argument("--list", action="store_true", help="list the workloads and exit")
    args = parser.parse_args(argv)
    args.size = parse_size(args.size or ("64M" if args.quick else "1G"))
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.libs = args.libs.split(",") if args.libs else [args.vs, "arraycache"]
    return args


# --- running samples -------------------------------------------------------------------------


def run_sample(name: str, lib: str, size: int, run_dir: Path, timeout: float) -> dict:
    """One subprocess, one sample; returns the workload's dict (maybe with "error")."""
    tmp = Path(tempfile.mkdtemp(prefix=f"{name}-{lib}-", dir=run_dir))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "benchmarks._worker", name, lib, str(size), str(tmp)]
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the worker and any pool it started
        out, err = proc.communicate()
        err += f"\ntimeout after {timeout:.0f} s"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    leftovers = shm_leftovers(proc.pid)
    lines = [line for line in out.splitlines() if line.startswith(MARKER)]
    if lines:
        result = json.loads(lines[-1][len(MARKER) :])
    else:
        tail = [line for line in err.strip().splitlines() if line.strip()]
        result = {"error": (tail[-1] if tail else f"exit status {proc.returncode}")[:200]}
    if "error" in result:
        result["stderr_tail"] = err.strip().splitlines()[-15:]
    result["sample_wall_s"] = time.perf_counter() - start
    if leftovers:
        result["shm_leftovers"] = leftovers
    return result


def shm_leftovers(pid: int) -> list[str]:
    """Names in /dev/shm that carry the pid of a finished sample (joblib, loky, arraycache)."""
    time.sleep(0.2)  # loky's resource tracker may need a moment to unlink its semaphores
    marks = (f"-{pid}-", f"_{pid}_")
    try:
        return sorted(n for n in os.listdir("/dev/shm") if any(m in n for m in marks))
    except OSError:
        return []


def summarize(samples: list[dict]) -> dict:
    """Medians of every numeric key over the successful samples; errors kept as text."""
    ok = [s for s in samples if "error" not in s]
    summary: dict = {"n_ok": len(ok), "n_error": len(samples) - len(ok)}
    leftovers = sorted({n for s in samples for n in s.get("shm_leftovers", [])})
    if leftovers:
        summary["shm_leftovers"] = leftovers
    if not ok:
        summary["error"] = samples[0]["error"] if samples else "not run"
        return summary
    for key in ok[0]:
        values = [s[key] for s in ok if isinstance(s.get(key), int | float)]
        if values:
            summary[key] = statistics.median(values)
    if summary["n_error"]:
        summary["error"] = next(s["error"] for s in samples if "error" in s)
    return summary


# --- formatting ------------------------------------------------------------------------------


def fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s"


def fmt_value(key: str, value: float) -> str:
    if key.endswith("_s"):
        return fmt_time(value)
    if key.endswith("_us"):
        return f"{value:.0f} us"
    if key.endswith("_mb"):
        return f"{value:.0f} MB"
    return f"{value:.3g}"


def cell(summary: dict | None) -> str:
    if summary is None:
        return "-"
    if "time" not in summary:
        return f"error: {summary.get('error', '?')}"
    text = fmt_time(summary["time"])
    if summary.get("n_error"):
        text += f" ({summary['n_error']} failed)"
    return text


def label(lib: str) -> str:
    """Short prefix naming a library in the notes ('' for the references)."""
    return "" if lib == "-" else SHORT.get(lib, lib) + " "


def notes_for(name: str, per_lib: dict[str, dict], refs: dict[str, dict]) -> str:
    parts = []
    for key, title in NOTE_KEYS.items():
        values = [f"{label(lib)}{fmt_value(key, s[key])}" for lib, s in per_lib.items() if key in s]
        if values:
            parts.append(f"{title}: " + " / ".join(values))
    for lib, s in per_lib.items():
        if s.get("is_memmap") == 0:
            parts.append(f"{label(lib)}result is not a memmap")
        if s.get("shm_leftovers"):
            parts.append(f"{label(lib)}left in /dev/shm: {', '.join(s['shm_leftovers'])}")
        if s.get("child_processes") == 0:
            parts.append(f"{label(lib)}ran with no child process")
    ref = REFERENCE_OF.get(name)
    if ref and "time" in refs.get(ref, {}):
        values = [
            f"{label(lib)}{s['time'] / refs[ref]['time']:.2g}x"
            for lib, s in per_lib.items()
            if "time" in s
        ]
        parts.append(f"vs {ref}: " + " / ".join(values))
    return "; ".join(parts)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def render(results: dict, args: argparse.Namespace) -> str:
    all_workloads = workloads()
    refs = {n: r["-"] for n, r in results.items() if "-" in r}
    out = []
    if refs:
        rows = []
        for name, s in refs.items():
            speed = f"{s['gb_per_s']:.2f} GB/s" if "gb_per_s" in s else ""
            rows.append([name, cell(s), speed, notes_for(name, {"-": s}, {})])
        out += [
            "Physical references",
            "",
            markdown_table(["reference", "median", "speed", "notes"], rows),
            "",
        ]
    libs = args.libs
    rows = []
    memory_rows = []
    for name, per_lib in results.items():
        if "-" in per_lib:
            continue
        w = all_workloads[name]
        size = w.fixed_size if w.fixed_size is not None else args.size
        a, b = per_lib.get(libs[0]), per_lib.get(libs[-1]) if len(libs) > 1 else None
        ratio = ""
        if a and b and "time" in a and "time" in b and b["time"] > 0:
            ratio = f"{a['time'] / b['time']:.3g}"
        rows.append(
            [
                name,
                format_size(size) if size else "-",
                cell(a),
                cell(b),
                ratio,
                notes_for(name, per_lib, refs),
            ]
        )
        for lib, s in per_lib.items():
            if any(k in s for k in MEMORY_KEYS):
                memory_rows.append(
                    [name, lib, fmt_time(s.get("time"))]
                    + [fmt_value(k, s[k]) if k in s else "-" for k in MEMORY_KEYS]
                )
    if rows:
        header = ["workload", "size", f"{libs[0]} median"]
        if len(libs) > 1:
            header += [f"{libs[-1]} median", f"ratio {libs[0]}/{libs[-1]}"]
        else:
            rows = [r[:3] + r[5:] for r in rows]
        header.append("notes")
        out += ["Comparison (medians)", "", markdown_table(header, rows), ""]
    if memory_rows:
        header = ["workload", "library", "wall", *MEMORY_KEYS.values()]
        out += [
            "Parallel memory (medians of per-sample peaks)",
            "",
            markdown_table(header, memory_rows),
            "",
        ]
    return "\n".join(out)


# --- machine ---------------------------------------------------------------------------------


def machine_info(tmp_root: Path) -> dict:
    import numpy
    import psutil

    def version_of(module: str) -> str:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        proc = subprocess.run(
            [sys.executable, "-c", f"import {module}; print({module}.__version__)"],
            capture_output=True,
            text=True,
            cwd=REPO,
            env=env,
        )
        if proc.returncode:
            tail = proc.stderr.strip().splitlines()
            return "not importable: " + (tail[-1] if tail else "?")
        return proc.stdout.strip()

    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    disk = shutil.disk_usage(tmp_root)
    fstype = "?"
    try:
        with open("/proc/mounts") as f:
            mounts = [line.split() for line in f]
        best = max((m for m in mounts if str(tmp_root).startswith(m[1])), key=lambda m: len(m[1]))
        fstype = f"{best[0]} {best[2]}"
    except (OSError, ValueError):
        pass
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / (1 << 30), 1),
        "tmp": str(tmp_root),
        "tmp_fs": fstype,
        "tmp_free_gb": round(disk.free / 1e9, 1),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "zarr": version_of("zarr"),
        "joblib": version_of("joblib"),
        "arraycache": version_of("arraycache"),
        "git_commit": commit,
        "loadavg_start": os.getloadavg(),
    }


# --- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    all_workloads = workloads()
    if args.render:
        print_report(json.loads(Path(args.render).read_text()))
        return 0
    if args.list:
        for w in all_workloads.values():
            print(f"{w.name:26} {w.issue:10} {w.notes}")
        return 0
    selected = [
        w
        for w in all_workloads.values()
        if (args.only is None or re.search(args.only, w.name))
        and not (args.no_references and w.issue == "reference")
    ]
    tmp_root = Path(args.tmp)
    created_root = not tmp_root.exists()
    tmp_root.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=tmp_root))
    info = machine_info(tmp_root)
    print(
        f"# size {format_size(args.size)}, {args.repeats} repeat(s), libs {', '.join(args.libs)}; "
        f"{info['cores']} cores, {info['ram_gib']} GiB RAM; python {info['python']}, "
        f"joblib {info['joblib']}, arraycache {info['arraycache']}",
        file=sys.stderr,
    )
    plan = []
    for w in selected:
        libs = ["-"] if w.issue == "reference" else args.libs
        for rep in range(args.repeats):
            plan += [(w.name, lib, rep) for lib in libs]
    samples: dict[str, dict[str, list[dict]]] = {}
    started = time.perf_counter()
    try:
        for k, (name, lib, _rep) in enumerate(plan, 1):
            result = run_sample(name, lib, args.size, run_dir, args.timeout)
            samples.setdefault(name, {}).setdefault(lib, []).append(result)
            shown = f"error: {result['error']}" if "error" in result else fmt_time(result["time"])
            print(f"[{k}/{len(plan)}] {name} {lib}: {shown}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
        if created_root:
            with contextlib.suppress(OSError):
                tmp_root.rmdir()
    info["loadavg_end"] = os.getloadavg()
    info["total_wall_s"] = round(time.perf_counter() - started, 1)
    payload = {
        "command": "python -m benchmarks " + " ".join(sys.argv[1:] if argv is None else argv),
        "size": args.size,
        "repeats": args.repeats,
        "libs": args.libs,
        "machine": info,
        "medians": {n: {lib: summarize(s) for lib, s in per.items()} for n, per in samples.items()},
        "samples": samples,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(payload, indent=1))
    print_report(payload)
    return 0


def print_report(payload: dict) -> None:
    """Print the tables of a run (just finished, or loaded by --render)."""
    info = payload["machine"]
    print(f"\n{payload['command']}\n")
    print(render(payload["medians"], argparse.Namespace(**payload)))
    load = f"load average {info['loadavg_start']} -> {info['loadavg_end']}"
    print(f"total {info['total_wall_s']} s; {load}")


if __name__ == "__main__":
    sys.exit(main())
