"""Bookkeeping shared by processes: LRU order, the enforced bytes_limit, statistics,
eviction under readers, the after-reboot check.  Real processes throughout."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

import arraycache
from arraycache.store import boot_id

JOBS = """
import sys, time
import numpy as np
import arraycache

memory = arraycache.Memory(sys.argv[1], verbose=0, bytes_limit={limit!r})

@memory.cache
def make(i, nbytes=1 << 20):
    time.sleep(0.05)
    return np.full(nbytes // 8, float(i))
"""


def write_jobs(tmp_path: Path, limit=None) -> Path:
    (tmp_path / "jobs.py").write_text(JOBS.format(limit=limit))
    return tmp_path


def start(tmp_path: Path, location: Path, body: str) -> subprocess.Popen:
    """A Python process running ``body`` after ``from jobs import *``."""
    script = tmp_path / f"p{time.monotonic_ns()}.py"
    script.write_text(f"import sys\nsys.argv[1:] = [{str(location)!r}]\nfrom jobs import *\n"
                      + textwrap.dedent(body))
    return subprocess.Popen([sys.executable, str(script)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 120) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return out


def disk_bytes(location: Path) -> int:
    return sum(e.nbytes for e in arraycache.store.LocalStore(location).entries())


@pytest.mark.slow
def test_lru_order_at_one_second_across_two_processes(tmp_path: Path) -> None:
    location = tmp_path / "cache"
    write_jobs(tmp_path)
    finish(start(tmp_path, location, """
        for i in range(3):
            make(i, 1 << 16)
            time.sleep(1.0)
    """))
    # Entry 0 is the oldest store, but another process uses it last.
    finish(start(tmp_path, location, "make(0, 1 << 16)"))
    arraycache.Memory(location, verbose=0).reduce_size(items_limit=2)
    out = finish(start(tmp_path, location,
                       "print([make.check_call_in_cache(i, 1 << 16) for i in range(3)])"))
    assert out.split("\n")[0] == "[True, False, True]"


@pytest.mark.slow
def test_bytes_limit_holds_with_four_processes_storing(tmp_path: Path) -> None:
    location = tmp_path / "cache"
    limit = 6 << 20
    write_jobs(tmp_path, limit=limit)
    (tmp_path / "go").touch()
    procs = [start(tmp_path, location, f"""
        for i in range({k} * 100, {k} * 100 + 8):
            value = make(i)
            assert value.shape == (1 << 17,) and (value == i).all()
        print("ok")
    """) for k in range(4)]
    assert [finish(p).strip() for p in procs] == ["ok"] * 4
    # 32 entries of 1 MiB went through a 6 MiB limit: at most one entry over it.
    assert disk_bytes(location) <= limit + (1 << 20) + 4096
    assert disk_bytes(location) >= (1 << 20)


def test_enforced_limit_evicts_least_recently_used_first(location: Path) -> None:
    memory = arraycache.Memory(location, verbose=0, bytes_limit=int(3.5 * (1 << 20)))
    make = memory.cache(lambda i: np.full(1 << 17, float(i)))
    for i in range(3):
        make(i)
    make(0)  # used: 1 is now the least recently used
    make(3)  # over the limit: one entry goes
    assert [make.check_call_in_cache(i) for i in range(4)] == [True, False, True, True]


def test_entry_evicted_under_a_reader_keeps_its_value(tmp_path: Path) -> None:
    location = tmp_path / "cache"
    write_jobs(tmp_path)
    reader = start(tmp_path, location, """
        import os
        memory2 = arraycache.Memory(sys.argv[1], verbose=0, mmap_mode="r")
        load = memory2.cache(make.func)
        x = load(7)                       # a memmap over the entry's file
        open("mapped", "w").close()
        while not os.path.exists("evicted"):
            time.sleep(0.01)
        print(float(x.sum()), x.size, isinstance(x, np.memmap))
    """)
    deadline = time.monotonic() + 60
    while not (tmp_path / "mapped").exists():
        assert reader.poll() is None, reader.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    arraycache.Memory(location, verbose=0).reduce_size(bytes_limit=0)
    assert disk_bytes(location) == 0
    (tmp_path / "evicted").touch()
    total, size, mapped = finish(reader).split()
    assert (float(total), int(size), mapped) == (7.0 * (1 << 17), 1 << 17, "True")


def test_stats_after_known_calls_in_two_processes(tmp_path: Path) -> None:
    location = tmp_path / "cache"
    write_jobs(tmp_path)
    finish(start(tmp_path, location, "make(1); make(1); make(2)"))
    finish(start(tmp_path, location, "make(1); make(3); make(3)"))
    stats = arraycache.Memory(location, verbose=0).stats()
    assert (stats["hits"], stats["misses"], stats["entries"]) == (3, 3, 3)
    assert stats["bytes"] == disk_bytes(location) > 3 << 20
    assert stats["bytes_loaded"] == 3 * (1 << 20)  # three hits of 1 MiB arrays
    assert stats["bytes_stored"] >= 3 << 20
    assert stats["time_saved"] >= 3 * 0.05 and stats["compute_time"] >= 3 * 0.05
    (function,) = stats["functions"]
    assert function.endswith("/make") and stats["functions"][function]["hits"] == 3
    # The same through the cached function, in this process.
    memory = arraycache.Memory(location, verbose=0)
    out = finish(start(tmp_path, location, """
        import json
        print(json.dumps(make.stats()))
    """))
    assert json.loads(out)["misses"] == 3
    assert memory.stats()["functions"][function] == json.loads(out)


def test_damaged_bookkeeping_never_fails_a_call(location: Path) -> None:
    memory = arraycache.Memory(location, verbose=0)
    make = memory.cache(lambda i: np.arange(i))
    make(5)
    make(5)
    database = location / ".arraycache" / "summary.sqlite"
    database.write_bytes(b"this is not a database" * 100)
    for suffix in ("-wal", "-shm"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)
    np.testing.assert_array_equal(make(5), np.arange(5))
    stats = memory.stats()  # rebuilt: counts are lost, entries follow the disk
    assert stats["entries"] == 1


def _old_boot(entry: Path) -> None:
    meta_path = entry / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"]["arraycache"]["boot"] = "an-earlier-boot"
    meta_path.write_text(json.dumps(meta))


@pytest.mark.skipif(boot_id() is None, reason="the kernel gives no boot id")
def test_entry_from_an_earlier_boot_is_verified_once_at_its_first_mmap_hit(location) -> None:
    memory = arraycache.Memory(location, verbose=0, mmap_mode="r")
    calls = []

    @memory.cache
    def make(n):
        calls.append(n)
        return np.arange(n, dtype=np.float64)

    make(1000)
    (entry,) = [e.path for e in memory._store().entries()]
    chunk = entry / "a0" / "c" / "0"
    # A power loss: the file has its size, not its bytes.  A memory-mapped hit of this
    # boot would not notice (it checks sizes only); one from an earlier boot must.
    data = bytearray(chunk.read_bytes())
    data[80] ^= 1
    chunk.write_bytes(bytes(data))
    _old_boot(entry)
    with pytest.warns(arraycache.DamagedEntryWarning):
        np.testing.assert_array_equal(make(1000), np.arange(1000.0))
    assert len(calls) == 2
    # A sound entry of an earlier boot is checked once, then marked.
    _old_boot(entry)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(make(1000), np.arange(1000.0))
    meta = json.loads((entry / "zarr.json").read_text())["attributes"]["arraycache"]
    assert meta["boot"] == boot_id() and len(calls) == 2


@pytest.mark.slow
def test_reduce_size_while_other_processes_store_and_hit(tmp_path: Path) -> None:
    location = tmp_path / "cache"
    write_jobs(tmp_path)
    workers = [start(tmp_path, location, f"""
        import time
        end = time.monotonic() + 4
        while time.monotonic() < end:
            for i in range(12):
                assert (make(i + {k}, 1 << 14) == i + {k}).all()
    """) for k in range(3)]
    memory = arraycache.Memory(location, verbose=0)
    rounds = 0
    while any(w.poll() is None for w in workers):
        memory.reduce_size(bytes_limit="100K")  # must never raise
        memory.stats()
        rounds += 1
    for w in workers:
        finish(w)
    assert rounds > 3
    assert not [p for p in location.rglob("*") if ".tmp-" in p.name or ".trash-" in p.name]


def test_hits_misses_stores_evictions_and_damage_are_logged(location: Path, caplog) -> None:
    import logging

    caplog.set_level(logging.DEBUG, logger="arraycache")
    memory = arraycache.Memory(location, verbose=0)
    make = memory.cache(lambda n: np.arange(n, dtype=float))
    make(1000)
    make(1000)
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("arraycache")]
    assert any(m.startswith("stored ") and "computed in" in m and "8000 bytes" in m
               for m in messages), messages
    assert any(m.startswith("hit ") for m in messages), messages
    (entry,) = [e.path for e in memory._store().entries()]
    (entry / "a0" / "c" / "0").write_bytes(b"short")
    caplog.clear()
    with pytest.warns(arraycache.DamagedEntryWarning):
        make(1000)
    assert any(r.getMessage().startswith("damaged entry") for r in caplog.records)
    caplog.clear()
    memory.reduce_size(bytes_limit=0)
    assert any(r.getMessage().startswith("evicted ") and r.name == "arraycache.eviction"
               for r in caplog.records)
