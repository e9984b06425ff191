"""Cache locations in object storage: store and hit throughput against a local S3 server.

    python -m benchmarks.remote_bench [--size 64M] [--repeats 3] [--json out.json]
    python -m benchmarks --only '^s3-' --libs arraycache --size 64M   # the S3 rows only

Workloads (arraycache only: joblib has no S3 store, so the numbers are absolute; the
script prints the same operations on a local folder, for arraycache and joblib, beside
them for scale):

- ``s3-store``: a miss returning an uncompressed float64 array of ``--size`` bytes:
  written into a local temporary folder, uploaded, the group ``zarr.json`` last;
- ``s3-hit``: a hit without a local cache: one metadata GET, one listing, the chunk
  downloaded to a temporary folder and read back with its digests checked; first hit
  timed, and the best of the 5 next in the notes;
- ``s3-hit-local-cache``: the first hit of another "machine" with an empty
  ``local_cache`` (download and check) timed; the best of the 5 next hits (one metadata
  GET, then a memory map of the copy) in the notes.

The server is ``python -m moto.server`` on localhost in its own process (started for
each sample; or set ``ARRAYCACHE_BENCH_S3_ENDPOINT`` to use one that runs).  moto is
Python: its throughput bounds what is measured here, which shows arraycache's cost
around the transfers, not S3's speed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .common import BIG, Workload, format_size, parse_size, random_array, timed, warm_memory
from .storage import _DATA, produce

ENDPOINT_VARIABLE = "ARRAYCACHE_BENCH_S3_ENDPOINT"
CREDENTIALS = {"key": "bench", "secret": "bench"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def s3_server() -> Iterator[str]:
    """The endpoint of a running moto S3 server (started here, and stopped, if needed)."""
    given = os.environ.get(ENDPOINT_VARIABLE)
    if given:
        yield given
        return
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto's server did not start on port {port}")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def s3_location(tmp: Path) -> Iterator[tuple[str, dict]]:
    """A fresh bucket (removed after) and the storage options to reach it; this
    process's bookkeeping of remote locations goes under ``tmp``."""
    import s3fs

    os.environ["XDG_CACHE_HOME"] = str(tmp / "xdg")
    with s3_server() as endpoint:
        opts = {**CREDENTIALS, "endpoint_url": endpoint}
        fs = s3fs.S3FileSystem(**opts, skip_instance_cache=True)
        bucket = f"bench-{uuid.uuid4().hex[:12]}"
        fs.mkdir(bucket)
        try:
            yield f"s3://{bucket}/cache", opts
        finally:
            fs.invalidate_cache()
            with contextlib.suppress(FileNotFoundError):
                fs.rm(bucket, recursive=True)


def _arraycache_only(lib) -> None:
    if lib is None or lib.__name__ != "arraycache":
        raise NotImplementedError("joblib has no S3 store: run these with --libs arraycache")


def _memory(lib, url: str, opts: dict, **kwargs):
    memory = lib.Memory(url, storage_options=opts, verbose=0, **kwargs)
    func = memory.cache(produce)
    _DATA["tiny"] = np.arange(10.0)
    func("tiny")  # connections, imports and the function's code.json are not timed
    return func


def s3_store(lib, size: int, tmp: Path) -> dict:
    _arraycache_only(lib)
    with s3_location(tmp) as (url, opts):
        _DATA[BIG] = random_array(size)
        func = _memory(lib, url, opts)
        warm_memory(size)
        seconds, _ = timed(lambda: func(BIG))
    return {"time": seconds, "mb_per_s": size / seconds / 1e6}


def s3_hit(lib, size: int, tmp: Path) -> dict:
    _arraycache_only(lib)
    with s3_location(tmp) as (url, opts):
        _DATA[BIG] = random_array(size)
        func = _memory(lib, url, opts)
        func(BIG)
        del _DATA[BIG]
        warm_memory(size)
        seconds, result = timed(lambda: func(BIG))
        again = min(timed(lambda: func(BIG))[0] for _ in range(5))
    return {"time": seconds, "best_of_5_s": again, "mb_per_s": size / seconds / 1e6,
            "is_memmap": float(isinstance(result, np.memmap))}


def s3_hit_local_cache(lib, size: int, tmp: Path) -> dict:
    _arraycache_only(lib)
    with s3_location(tmp) as (url, opts):
        _DATA[BIG] = random_array(size)
        _memory(lib, url, opts)(BIG)
        del _DATA[BIG]
        # Another machine: its own local copies, empty.
        func = _memory(lib, url, opts, mmap_mode="r", local_cache=str(tmp / "copies"))
        warm_memory(size)
        seconds, result = timed(lambda: func(BIG))
        again = min(timed(lambda: func(BIG))[0] for _ in range(5))
    return {"time": seconds, "best_of_5_s": again, "mb_per_s": size / seconds / 1e6,
            "is_memmap": float(isinstance(result, np.memmap))}


def _raw_key(url: str) -> str:
    return f"{url.removeprefix('s3://')}/raw"


def s3_raw_put(lib, size: int, tmp: Path) -> dict:
    """The physical reference of a store: s3fs ``put_file`` of the same bytes."""
    import s3fs

    path = tmp / "raw.bin"
    random_array(size).tofile(path)
    with s3_location(tmp) as (url, opts):
        fs = s3fs.S3FileSystem(**opts, skip_instance_cache=True)
        fs.pipe(_raw_key(url) + "-warm", b"0")
        seconds, _ = timed(lambda: fs.put_file(str(path), _raw_key(url)))
    return {"time": seconds, "mb_per_s": size / seconds / 1e6}


def s3_raw_get(lib, size: int, tmp: Path) -> dict:
    """The physical reference of a hit: s3fs ``get_file`` of the same bytes to disk."""
    import s3fs

    path = tmp / "raw.bin"
    random_array(size).tofile(path)
    with s3_location(tmp) as (url, opts):
        fs = s3fs.S3FileSystem(**opts, skip_instance_cache=True)
        fs.put_file(str(path), _raw_key(url))
        path.unlink()
        warm_memory(size)
        seconds, _ = timed(lambda: fs.get_file(_raw_key(url), str(path)))
    return {"time": seconds, "mb_per_s": size / seconds / 1e6}


WORKLOADS = [
    Workload("s3-raw-put", s3_raw_put, "reference", notes="s3fs put_file to moto, localhost"),
    Workload("s3-raw-get", s3_raw_get, "reference", notes="s3fs get_file from moto, localhost"),
    Workload("s3-store", s3_store, "storage", notes="miss: dump, upload, zarr.json last"),
    Workload("s3-hit", s3_hit, "storage", notes="hit: download, read with digests checked"),
    Workload("s3-hit-local-cache", s3_hit_local_cache, "storage",
             notes="first hit with an empty local_cache; next: metadata GET + memmap"),
]

#: (workload, library, where): the S3 rows, then the local ones for scale.
ROWS = [
    ("s3-raw-put", "-", "S3: s3fs put_file alone"),
    ("s3-store", "arraycache", "S3 (moto, localhost)"),
    ("store-1G", "arraycache", "local folder"),
    ("store-1G", "joblib", "local folder"),
    ("s3-raw-get", "-", "S3: s3fs get_file alone"),
    ("s3-hit", "arraycache", "S3 (moto, localhost)"),
    ("s3-hit-local-cache", "arraycache", "S3 + local_cache, mmap_mode='r'"),
    ("hit-nommap", "arraycache", "local folder"),
    ("hit-nommap", "joblib", "local folder"),
    ("hit-mmap", "arraycache", "local folder, mmap_mode='r'"),
    ("hit-mmap", "joblib", "local folder, mmap_mode='r'"),
]


def _fmt(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1e3:.3g} ms" if seconds < 1 else f"{seconds:.3g} s"


def main(argv: list[str] | None = None) -> int:
    from .__main__ import run_sample  # the harness's fresh-process sample

    parser = argparse.ArgumentParser(prog="python -m benchmarks.remote_bench",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="64M", help="array size (default 64M)")
    parser.add_argument("--repeats", type=int, default=3, help="samples per row (3)")
    parser.add_argument("--json", default=None, help="write the samples and medians here")
    parser.add_argument("--tmp", default=None, help="where cache folders go")
    args = parser.parse_args(argv)
    size = parse_size(args.size)
    samples: dict[tuple[str, str], list[dict]] = {(w, lib): [] for w, lib, _ in ROWS}
    with tempfile.TemporaryDirectory(prefix="remote-bench-", dir=args.tmp) as run_dir:
        for repeat in range(args.repeats):
            for workload, lib, _ in ROWS:
                result = run_sample(workload, lib, size, Path(run_dir), timeout=900)
                samples[workload, lib].append(result)
                state = result.get("error") or _fmt(result.get("time"))
                print(f"[{repeat + 1}/{args.repeats}] {workload} {lib}: {state}", flush=True)
    command = f"python -m benchmarks.remote_bench --size {args.size} --repeats {args.repeats}"
    print(f"\n{command}\n\nMedians, {format_size(size)} float64 array, uncompressed\n")
    print("| operation | location | library | time | MB/s | best of next 5 |")
    print("|---|---|---|---|---|---|")
    medians = {}
    for workload, lib, where in ROWS:
        ok = [s for s in samples[workload, lib] if "error" not in s]
        if not ok:
            error = samples[workload, lib][0].get("error", "?")
            print(f"| {workload} | {where} | {lib} | error: {error} | | |")
            continue
        time_s = statistics.median(s["time"] for s in ok)
        best = [s["best_of_5_s"] for s in ok if "best_of_5_s" in s]
        medians[f"{workload} {lib}"] = {"time": time_s, "best_of_5_s": (
            statistics.median(best) if best else None)}
        operation = ("store (miss)" if "store" in workload or "put" in workload
                     else "hit")
        name = "reference" if lib == "-" else lib
        print(f"| {operation} | {where} | {name} | {_fmt(time_s)} | {size / time_s / 1e6:.0f} "
              f"| {_fmt(statistics.median(best)) if best else '-'} |")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"command": command, "size": size, "medians": medians,
             "samples": {f"{w} {lib}": s for (w, lib), s in samples.items()}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
