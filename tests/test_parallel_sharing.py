"""Parallel: arrays shared with loky workers through memory-mapped files, and cleanup."""

from __future__ import annotations

import gc
import mmap
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from arraycache.parallel import Parallel, delayed, register_mapped_file
from arraycache.parallel._folders import FOLDERS, PREFIX
from arraycache.parallel._pool import POOL

from .conftest import shared_files

BIG = 300_000  # float64 elements: 2.4 MB, above the default max_nbytes of 1 MB


pytestmark = pytest.mark.usefixtures("no_leftover_workers")


def call_folders() -> list[str]:
    return [
        os.path.join(folder, name)
        for folder in FOLDERS.existing()
        if os.path.isdir(folder)
        for name in os.listdir(folder)
        if name.startswith("call-")
    ]


@pytest.fixture(autouse=True)
def _clean_after_each_test():
    gc.collect()
    yield
    gc.collect()
    assert call_folders() == []


def describe(arr):
    return (
        type(arr).__name__,
        getattr(arr, "filename", None) and str(arr.filename),
        getattr(arr, "mode", None),
        arr.flags.writeable,
        float(np.asarray(arr, dtype=float).sum()),
    )


def identity(arr):
    return arr


def ones(n):
    return np.ones(n)


# --- file-backed arrays: passed by reference ------------------------------------------------


def test_file_backed_arrays_are_sent_by_reference(tmp_path):
    data = np.arange(BIG, dtype=np.float64)
    path = tmp_path / "data.bin"
    data.tofile(path)
    mm = np.memmap(path, dtype=np.float64, mode="r")
    before = shared_files()
    views = [mm, mm[10:], mm[::-3], mm.reshape(600, 500).T, mm[5:105]]
    out = Parallel(n_jobs=2)(delayed(describe)(v) for v in views)
    for view, (kind, filename, mode, writeable, total) in zip(views, out, strict=True):
        assert (kind, filename, mode, writeable) == ("memmap", str(path), "r", False)
        assert total == pytest.approx(float(view.sum()))
    # Nothing was written: no copy of the array in the sharing folder.
    assert shared_files() == before


def test_arrays_nested_in_containers_and_objects_are_shared(tmp_path):
    path = tmp_path / "data.bin"
    np.ones(BIG).tofile(path)
    mm = np.memmap(path, dtype=np.float64, mode="r")

    class Holder:
        def __init__(self, arr):
            self.arr = arr

    def kinds(obj):
        return [
            type(obj["list"][0]).__name__,
            type(obj["tuple"][1]).__name__,
            type(obj["holder"].arr).__name__,
        ]

    obj = {"list": [mm], "tuple": (1, np.zeros(BIG)), "holder": Holder(mm[::2])}
    assert Parallel(2)(delayed(kinds)(obj) for _ in range(2)) == [["memmap"] * 3] * 2


def test_array_over_a_registered_mmap_is_sent_by_reference(tmp_path):
    path = tmp_path / "raw.bin"
    np.arange(BIG, dtype=np.float64).tofile(path)
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    register_mapped_file(mm, str(path), 0, writable=False)
    arr = np.frombuffer(mm, dtype=np.float64)[100:]
    before = shared_files()
    ((kind, filename, mode, _, total),) = Parallel(2)(delayed(describe)(arr) for _ in range(1))
    assert (kind, filename, mode) == ("memmap", str(path), "r")
    assert total == float(arr.sum())
    assert shared_files() == before
    del arr
    mm.close()


def fill(arr, i):
    arr[i] = i + 1


def test_writable_memmap_is_shared_for_writing(tmp_path):
    out = np.memmap(tmp_path / "out.bin", dtype=np.float64, mode="w+", shape=(BIG,))
    Parallel(2)(delayed(fill)(out, i) for i in range(8))
    assert list(out[:8]) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert shared_files() == []


# --- other arrays: written once, reused ------------------------------------------------------


def test_big_array_written_once_and_reused_across_calls():
    data = np.random.default_rng(0).random(BIG)
    first = Parallel(2)(delayed(describe)(data) for _ in range(6))
    files = shared_files()
    assert len(files) == 1 and files[0].endswith(".bin")
    assert POOL.paths() == files
    assert {row[1] for row in first} == set(files)
    assert {row[:4] for row in first} == {("memmap", files[0], "r", False)}
    assert first[0][4] == pytest.approx(data.sum())
    inode, mtime = os.stat(files[0]).st_ino, os.stat(files[0]).st_mtime_ns
    # A later call: same file, not rewritten, no new file.
    Parallel(2)(delayed(describe)(data) for _ in range(3))
    assert shared_files() == files
    assert (os.stat(files[0]).st_ino, os.stat(files[0]).st_mtime_ns) == (inode, mtime)
    # A changed array is hashed again and gets a new file, which replaces the old one.
    data[0] += 1
    (row,) = Parallel(2)(delayed(describe)(data) for _ in range(1))
    assert row[1] not in files and row[4] == pytest.approx(data.sum())
    assert shared_files() == [row[1]]
    # Files live as long as the array they were written from.
    del data
    gc.collect()
    assert shared_files() == []


def test_equal_content_shares_one_file_and_small_arrays_are_not_written():
    a, b = np.ones(BIG), np.ones(BIG)
    rows = Parallel(2)(delayed(describe)(x) for x in (a, b, np.ones(10)))
    assert rows[0][1] == rows[1][1]
    assert rows[2][0] == "ndarray"
    assert len(shared_files()) == 1
    del a, b


def test_max_nbytes_and_mmap_mode_parameters():
    data = np.ones(BIG)
    assert Parallel(2, max_nbytes=None)(delayed(describe)(data) for _ in range(1))[0][0] == (
        "ndarray"
    )
    assert shared_files() == []
    (row,) = Parallel(2, max_nbytes="100K", mmap_mode="c")(delayed(describe)(data) for _ in [0])
    assert row[0] == "memmap" and row[2] == "c" and row[3] is True
    (row,) = Parallel(2, mmap_mode=None)(delayed(describe)(data) for _ in [0])
    assert row[0] == "ndarray"
    del data


def test_folder_and_file_permissions_and_location(tmp_path):
    data = np.ones(BIG)
    Parallel(2)(delayed(describe)(data) for _ in range(2))
    (path,) = shared_files()
    folder = os.path.dirname(path)
    assert os.path.basename(folder).startswith(f"{PREFIX}{os.getpid()}-")
    assert os.path.dirname(folder) == "/dev/shm"  # plenty of room on this machine
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    # temp_folder puts the files there instead.
    other = np.full(BIG, 2.0)
    (row,) = Parallel(2, temp_folder=str(tmp_path))(delayed(describe)(other) for _ in [0])
    assert row[1].startswith(str(tmp_path / f"{PREFIX}{os.getpid()}-"))
    assert stat.S_IMODE(os.stat(os.path.dirname(row[1])).st_mode) == 0o700
    del data, other


# --- results ---------------------------------------------------------------------------------


def test_big_results_come_back_as_memmaps():
    small, big = Parallel(2)(delayed(ones)(n) for n in (10, BIG))
    assert type(small) is np.ndarray
    assert isinstance(big, np.memmap) and not big.flags.writeable
    assert big.sum() == BIG
    assert big.filename in shared_files()
    assert stat.S_IMODE(os.stat(big.filename).st_mode) == 0o600
    # The file lives as long as the result.
    filename = big.filename
    del big
    gc.collect()
    assert not os.path.exists(filename)
    (copy,) = Parallel(2, mmap_mode=None)(delayed(ones)(n) for n in (BIG,))
    assert type(copy) is np.ndarray and copy.sum() == BIG
    assert shared_files() == []


def test_result_passed_to_next_call_by_reference():
    (first,) = Parallel(2)(delayed(ones)(n) for n in (BIG,))
    files = shared_files()
    (row,) = Parallel(2)(delayed(describe)(first) for _ in [0])
    assert row[1] == first.filename
    assert shared_files() == files
    # A worker returning an input it received returns the reference, not a copy.
    (back,) = Parallel(2)(delayed(identity)(first) for _ in [0])
    assert back.filename == first.filename
    del first, back


def test_generic_results_match_joblib():
    import joblib

    ours = Parallel(2)(delayed(np.arange)(n) for n in (5, BIG))
    theirs = joblib.Parallel(2)(joblib.delayed(np.arange)(n) for n in (5, BIG))
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(a, b)
    del ours
    from joblib.externals.loky import get_reusable_executor as joblib_executor

    joblib_executor().shutdown(wait=True, kill_workers=True)


# --- cleanup ---------------------------------------------------------------------------------


def slow_big(i):
    time.sleep(0.05)
    if i == 5:
        raise RuntimeError("boom")
    return np.ones(BIG)


def test_cleanup_after_error_interrupt_and_generator_close():
    with pytest.raises(RuntimeError, match="boom"):
        Parallel(2)(delayed(slow_big)(i) for i in range(10))
    assert shared_files() == []

    def interrupt(i):
        if i == 3:
            raise KeyboardInterrupt
        return np.ones(BIG)

    with pytest.raises(KeyboardInterrupt):
        Parallel(2)(delayed(interrupt)(i) for i in range(10))
    assert shared_files() == []

    gen = Parallel(2, return_as="generator")(delayed(slow_big)(i) for i in range(4))
    first = next(gen)
    assert isinstance(first, np.memmap)
    gen.close()
    del first
    gc.collect()
    assert shared_files() == []

    gen = Parallel(2, return_as="generator_unordered")(delayed(slow_big)(i) for i in range(4))
    time.sleep(0.3)
    del gen
    gc.collect()
    assert shared_files() == []


def test_folders_removed_at_interpreter_exit(tmp_path: Path):
    script = tmp_path / "share.py"
    script.write_text(
        textwrap.dedent(
            """
            import os
            import numpy as np
            from arraycache.parallel import Parallel, delayed
            from arraycache.parallel._folders import FOLDERS

            data = np.ones(300_000)
            big = Parallel(n_jobs=2)(delayed(np.add)(data, i) for i in range(2))
            print(os.getpid())
            for folder in FOLDERS.existing():
                if os.path.isdir(folder):
                    print(folder)
            """
        )
    )
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    pid, *folders = proc.stdout.split()
    assert folders and all(f"{PREFIX}{pid}-" in f for f in folders)
    assert not any(os.path.exists(folder) for folder in folders)
    assert not [n for n in os.listdir("/dev/shm") if n.startswith(f"{PREFIX}{pid}-")]


def test_temp_dir_is_used_when_shm_has_no_room(monkeypatch):
    import tempfile

    from arraycache.parallel import _folders

    monkeypatch.setattr(_folders, "has_room", lambda root, nbytes: False)
    data = np.full(BIG, 4.0)
    (row,) = Parallel(2)(delayed(describe)(data) for _ in [0])
    assert os.path.dirname(os.path.dirname(row[1])) == tempfile.gettempdir()
    assert os.path.basename(os.path.dirname(row[1])).startswith(f"{PREFIX}{os.getpid()}-")
    del data


def first_item(arr):
    return arr.flat[0], arr.dtype, arr.shape


def test_non_contiguous_datetime_arrays_are_written_and_shared():
    # memoryview() refuses datetime64 buffers: the writer must go through bytes.
    stamps = np.arange(400_000).astype("M8[s]").reshape(2000, 200)[:, ::2]
    out = Parallel(n_jobs=2, max_nbytes=1000)(delayed(first_item)(stamps) for _ in range(2))
    assert out == [(stamps.flat[0], stamps.dtype, stamps.shape)] * 2


def digest_seen_by_worker(arr):
    from arraycache.hashing import array_digest, stored_digest

    return stored_digest(arr), array_digest(np.array(arr))


def test_workers_hash_shared_read_only_arrays_in_constant_time(tmp_path):
    import arraycache

    memory = arraycache.Memory(tmp_path / "cache", mmap_mode="r", verbose=0)
    cached = memory.cache(np.linspace)(0.0, 1.0, BIG)  # a cache hit's memmap: by reference
    written = np.random.default_rng(3).random(BIG)  # a plain array: written once, by digest
    out = Parallel(n_jobs=2)(delayed(digest_seen_by_worker)(a) for a in (cached, written))
    for arr, (stored, by_content) in zip((cached, written), out, strict=True):
        # The worker knows the digest without reading the data, and it is the right one.
        assert stored == arraycache.hash(arr) == by_content
    views = Parallel(n_jobs=2)(delayed(digest_seen_by_worker)(a) for a in (cached[1:],))
    assert views[0][0] is None  # a partial view is hashed by content, as in the caller


def test_parallel_config_bounds_the_copies_kept_between_calls(no_leftover_workers) -> None:
    from arraycache import Parallel, delayed, parallel_config

    big = np.random.default_rng(0).random(1 << 18)  # 2 MiB, above max_nbytes
    with parallel_config(max_shared_bytes=0):
        Parallel(n_jobs=2, max_nbytes="1M")(delayed(np.sum)(big) for _ in range(2))
        assert shared_files() == []  # nothing kept after the call, as joblib
    with parallel_config(max_shared_bytes="64M"):
        Parallel(n_jobs=2, max_nbytes="1M")(delayed(np.sum)(big) for _ in range(2))
        assert len(shared_files()) == 1  # kept for the next call
    with pytest.raises(ValueError, match="max_shared_bytes"):
        parallel_config(max_shared_bytes=-1)
    del big
    assert shared_files() == []
