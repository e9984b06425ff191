"""Fault injection: crashes, interrupts, damaged entries, full and read-only disks.

Every test makes the fault happen for real (SIGKILL, SIGINT, flipped bytes on disk,
a size-limited tmpfs, a read-only mount, a file size limit, chown) and checks that
the call still returns the right value and that the cache is consistent afterwards:
the next call is a hit or a clean recompute.  tests/README.md has the table.

Mounting needs CAP_SYS_ADMIN (root on CI); the helpers skip the mount-based tests
only for non-root users, where the permission- and rlimit-based tests still run.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import psutil
import pytest

import arraycache
from arraycache import persistence
from tests.conftest import (
    FORK_TO_PID,
    UNSHARE_PID,
    free_pid,
    sigint_default_in_child,
    skip_without_pid_namespaces,
)

# --- helpers shared with test_concurrency.py -------------------------------------------------

#: A module written into each test's folder and imported by its subprocesses, so that
#: every process caches the very same functions (same module, qualname and source).
JOBS_SOURCE = '''
"""Cached workloads shared by the processes of one test."""
import os
import time

import numpy as np

import arraycache

CACHE = os.environ["FAULT_CACHE"]
COUNTER = os.environ["FAULT_COUNTER"]
SIGNALS = os.environ["FAULT_SIGNALS"]


def signal(name, text=""):
    """Create the handshake file ``name`` atomically."""
    path = os.path.join(SIGNALS, name)
    with open(path + ".part", "w") as f:
        f.write(text or str(os.getpid()))
    os.replace(path + ".part", path)


def wait_for(name, timeout=60.0):
    path = os.path.join(SIGNALS, name)
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {name!r} signal after {timeout}s")
        time.sleep(0.002)


def count(mark="x"):
    """Record one call of a cached function (one character per call)."""
    with open(COUNTER, "a") as f:
        f.write(mark)


def memory(**options):
    options.setdefault("verbose", 0)
    return arraycache.Memory(CACHE, **options)


def slow_array(n, seconds):
    count()
    signal(f"computing-{os.getpid()}")
    time.sleep(seconds)
    return np.arange(n, dtype=np.float64) * 3


def check_slow_array(out, n):
    assert np.array_equal(out, np.arange(n, dtype=np.float64) * 3), "wrong slow_array result"


def held_array(n):
    """Like slow_array, held for FAULT_HOLD seconds (an environment variable, not an
    argument, so that held and quick callers share one cache entry)."""
    count()
    signal(f"computing-{os.getpid()}")
    time.sleep(float(os.environ.get("FAULT_HOLD", "0")))
    return np.arange(n, dtype=np.float64) * 3


def rendezvous(n, parties):
    """Compute only once ``parties`` calls are computing at the same time (or 30 s)."""
    count()
    signal(f"computing-{os.getpid()}")
    deadline = time.monotonic() + 30
    while sum(name.startswith("computing-") for name in os.listdir(SIGNALS)) < parties:
        if time.monotonic() > deadline:
            raise TimeoutError("the other calls never started computing")
        time.sleep(0.002)
    return np.arange(n, dtype=np.float64) * 3


def meet(tag, other):
    """Return only once the call with argument ``other`` has started too (or 20 s)."""
    count()
    start = time.time()
    signal(f"started-{tag}")
    wait_for(f"started-{other}", timeout=20)
    with open(os.path.join(SIGNALS, f"interval-{tag}"), "w") as f:
        f.write(f"{start} {time.time()}")
    return tag


def many_arrays(k, n):
    count()
    return {f"part{i}": np.full(n, i, dtype=np.float64) for i in range(k)}


def check_many_arrays(out, k, n):
    assert sorted(out) == sorted(f"part{i}" for i in range(k)), "missing parts"
    for i in range(k):
        part = out[f"part{i}"]
        assert part.shape == (n,) and bool((part == i).all()), f"part{i} is wrong"


def three_arrays(n):
    count()
    return {"x": np.arange(n, dtype=np.float64), "y": np.arange(n) * 2.0,
            "z": np.ones(n, dtype=np.float32)}


def check_three_arrays(out, n):
    assert np.array_equal(out["x"], np.arange(n, dtype=np.float64))
    assert np.array_equal(out["y"], np.arange(n) * 2.0)
    assert np.array_equal(out["z"], np.ones(n, dtype=np.float32))
'''

#: Put at the top of every subprocess script: cache problems are errors there unless
#: the script says otherwise.
PRELUDE = """\
import os, sys, time, warnings
import numpy as np
import arraycache
import jobs
warnings.simplefilter("error", arraycache.CacheWarning)
"""


class Lab:
    """A test folder with a cache, a call counter, handshake files and subprocesses.

    Every process started through :meth:`spawn` is killed and reaped by
    :meth:`close` (the ``lab`` fixture calls it), whatever happened in the test.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cache = root / "cache"
        self.counter = root / "counter"
        self.signals = root / "signals"
        self.signals.mkdir()
        (root / "jobs.py").write_text(JOBS_SOURCE)
        self.procs: list[subprocess.Popen] = []

    @property
    def calls(self) -> str:
        """One character per call of a cached function, in any process."""
        return self.counter.read_text() if self.counter.exists() else ""

    def function_dir(self, name: str) -> Path:
        return self.cache / "jobs" / name

    def env(self) -> dict[str, str]:
        path = os.pathsep.join(filter(None, [str(self.root), os.environ.get("PYTHONPATH")]))
        return {**os.environ, "PYTHONPATH": path, "FAULT_CACHE": str(self.cache),
                "FAULT_COUNTER": str(self.counter), "FAULT_SIGNALS": str(self.signals)}

    def spawn(self, code: str, name: str, prefix: tuple[str, ...] = (), **env: str
              ) -> subprocess.Popen:
        """Run ``code`` (after :data:`PRELUDE`) in a new process, behind the command
        ``prefix`` if given (e.g. ``unshare``)."""
        script = self.root / f"{name}.py"
        script.write_text(PRELUDE + textwrap.dedent(code))
        proc = subprocess.Popen(
            [*prefix, sys.executable, str(script)], cwd=self.root, env={**self.env(), **env},
            text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=sigint_default_in_child,
        )
        self.procs.append(proc)
        return proc

    def run(self, code: str, name: str, timeout: float = 60) -> str:
        return self.finish(self.spawn(code, name), timeout)

    @staticmethod
    def finish(proc: subprocess.Popen, timeout: float = 60) -> str:
        """Wait for ``proc``; return its stdout; fail with its stderr if it failed."""
        out, err = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, f"{proc.args[-1]} failed ({proc.returncode}):\n{err}"
        return out

    def wait_for(self, name: str, timeout: float = 60) -> str:
        """Wait for the handshake file ``name``; fail early if a process died."""
        path = self.signals / name
        deadline = time.monotonic() + timeout
        while not path.exists():
            for proc in self.procs:
                if proc.poll() not in (None, 0):
                    pytest.fail(f"{proc.args[-1]} died ({proc.returncode}) before {name!r}:\n"
                                f"{proc.stderr.read()}")
            assert time.monotonic() < deadline, f"no {name!r} signal after {timeout}s"
            time.sleep(0.005)
        return path.read_text()

    def go(self) -> None:
        (self.signals / "go").write_text("")

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.communicate(timeout=30)


@pytest.fixture
def lab(tmp_path: Path):
    lab = Lab(tmp_path)
    try:
        yield lab
    finally:
        lab.close()


def entries(location: Path) -> list[Path]:
    """Published entries under a cache location (temporary and trash folders excluded)."""
    found = []
    for meta in location.rglob("zarr.json"):
        entry = meta.parent
        if (entry.parent / "code.json").exists() and ".tmp-" not in entry.name \
                and ".trash-" not in entry.name:
            found.append(entry)
    return sorted(found)


def only_entry(location: Path) -> Path:
    found = entries(location)
    assert len(found) == 1, found
    return found[0]


def leftovers(location: Path) -> list[Path]:
    """Temporary folders, trash folders and lock files: none should outlive a call."""
    return sorted(p for p in location.rglob("*")
                  if ".tmp-" in p.name or ".trash-" in p.name or p.name.endswith(".lock"))


def assert_same(actual, expected) -> None:
    """Deep equality for results made of dicts, arrays and plain values."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and sorted(actual) == sorted(expected)
        for key in expected:
            assert_same(actual[key], expected[key])
    elif isinstance(expected, np.ndarray):
        assert isinstance(actual, np.ndarray)
        assert actual.dtype == expected.dtype and actual.shape == expected.shape
        np.testing.assert_array_equal(actual, expected)
    else:
        assert actual == expected


def can_mount() -> bool:
    return os.geteuid() == 0


def _mount(*args: str) -> None:
    proc = subprocess.run(["mount", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"mount {' '.join(args)} failed: {proc.stderr.strip()} "
                    f"(these tests need CAP_SYS_ADMIN, as on CI)")


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    """A size-limited tmpfs mounted at ``path`` for the duration of the block.

    Skips only when not running as root (then mounting is impossible); as root, a
    failed mount fails the test.
    """
    if not can_mount():
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    _mount("-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path))
    try:
        yield path
    finally:
        gc.collect()  # drop memmaps over the mount
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=True)


def remount_read_only(path: Path) -> None:
    from arraycache.journal import close_journals

    close_journals()  # an open journal keeps the mount busy (as a database would)
    _mount("-o", "remount,ro", str(path))
    with pytest.raises(OSError):  # really read-only, even for root
        (path / "probe").write_text("")


def flip_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    offset = len(data) // 2 if offset is None else offset
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


class Payload:
    """A custom object: results holding it need the pickle skeleton."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Payload) and other.text == self.text

    __hash__ = None


class Exploit:
    """Unpickling this runs code: creates the file ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


PAYLOAD_TEXT = "the quick brown fox jumps over the lazy dog"


# --- 1. atomic publish -----------------------------------------------------------------------


HOLD_IN_WRITE = """
from arraycache import persistence
real_write_array = persistence.write_array

def holding_write_array(entry_dir, name, arr, compression):
    spec = real_write_array(entry_dir, name, arr, compression)
    if name == "a1":  # half of the entry is on disk: let the reader look at it
        jobs.signal("mid-write")
        jobs.wait_for("reader-saw-the-write")
    return spec

persistence.write_array = holding_write_array
"""


def test_reader_process_never_sees_a_partial_entry(lab):
    k, n = 8, 1 << 17  # 8 arrays of 1 MiB
    reader = lab.spawn(f"""
        f = jobs.memory().cache(jobs.many_arrays)
        fdir = {str(lab.function_dir("many_arrays"))!r}
        jobs.signal("reader-ready")
        polls_during_write = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            names = os.listdir(fdir) if os.path.isdir(fdir) else []
            writing = [m for m in names if ".tmp-" in m and not m.startswith("code.json")]
            for m in names:
                if os.path.isdir(os.path.join(fdir, m)) and "." not in m:
                    # A folder under the final name must be whole at first sight.
                    assert os.path.isfile(os.path.join(fdir, m, "zarr.json")), os.listdir(
                        os.path.join(fdir, m))
            if f.check_call_in_cache({k}, {n}):
                jobs.check_many_arrays(f({k}, {n}), {k}, {n})  # a hit, read and verified
                break
            if writing:
                polls_during_write += 1
                if polls_during_write == 100:
                    jobs.signal("reader-saw-the-write")
        else:
            raise TimeoutError("the entry never appeared")
        print(polls_during_write)
    """, "reader")
    lab.wait_for("reader-ready")
    lab.run(HOLD_IN_WRITE + f"""
jobs.check_many_arrays(jobs.memory().cache(jobs.many_arrays)({k}, {n}), {k}, {n})
""", "writer")
    assert int(lab.finish(reader)) >= 100  # polls while the entry was being written
    assert lab.calls == "x"  # the reader only ever hit
    only_entry(lab.cache)
    assert leftovers(lab.cache) == []


STALL_IN_WRITE = """
from arraycache import persistence
real_write_array = persistence.write_array

def stalling_write_array(entry_dir, name, arr, compression):
    spec = real_write_array(entry_dir, name, arr, compression)
    if name == "a1":  # a0 and a1 are on disk, a2 and the metadata are not
        jobs.signal("mid-write")
        time.sleep(600)
    return spec

persistence.write_array = stalling_write_array
"""


def test_writer_killed_mid_write_leaves_a_temp_folder_that_is_recomputed_and_removed(lab):
    writer = lab.spawn(STALL_IN_WRITE + "jobs.memory().cache(jobs.three_arrays)(50_000)",
                       "writer")
    lab.wait_for("mid-write")
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait(timeout=30)
    assert writer.returncode == -signal.SIGKILL

    fdir = lab.function_dir("three_arrays")
    assert entries(lab.cache) == []
    temps = [p for p in fdir.iterdir() if ".tmp-" in p.name and p.is_dir()]
    assert len(temps) == 1
    assert temps[0].name.split(".tmp-")[1].split("-")[0] == str(writer.pid)
    assert (temps[0] / "a1").is_dir()  # it really died half-way through the write
    # Beside it: the lock the writer held while writing, and the entry's compute lock.
    assert {p.name for p in fdir.iterdir()} <= {
        "code.json", temps[0].name, temps[0].name + ".lock",
        temps[0].name.split(".tmp-")[0] + ".lock",
    }

    # A new process takes over the dead writer's lock, recomputes and publishes.
    code = "jobs.check_three_arrays(jobs.memory().cache(jobs.three_arrays)(50_000), 50_000)"
    lab.run(code, "second", timeout=30)
    assert lab.calls == "xx"
    lab.run(code, "third")
    assert lab.calls == "xx"  # a hit
    entry = only_entry(lab.cache)

    arraycache.Memory(lab.cache, verbose=0).reduce_size()
    assert not temps[0].exists()
    assert leftovers(lab.cache) == []
    assert only_entry(lab.cache) == entry
    lab.run(code, "fourth")
    assert lab.calls == "xx"


PAUSE_IN_WRITE = """
from arraycache import persistence
real_write_array = persistence.write_array

def pausing_write_array(entry_dir, name, arr, compression):
    spec = real_write_array(entry_dir, name, arr, compression)
    if name == "a1":  # a0 and a1 are on disk, a2 and the metadata are not
        jobs.signal("mid-write")
        jobs.wait_for("go")
    return spec

persistence.write_array = pausing_write_array
"""

WRITE_THREE = "jobs.check_three_arrays(jobs.memory().cache(jobs.three_arrays)(50_000), 50_000)"


def _writing_folder(lab: Lab) -> Path:
    (temp,) = [p for p in lab.function_dir("three_arrays").iterdir()
               if ".tmp-" in p.name and p.is_dir()]
    return temp


def _sweep_while_writing_then_publish(lab: Lab, writer: subprocess.Popen) -> None:
    """Sweep temporaries while ``writer`` is paused mid-write; let it publish; check the
    entry it published is whole."""
    lab.wait_for("mid-write")
    temp = _writing_folder(lab)
    # Unchanged for two hours, as a long write of one big array looks from its folder.
    old = time.time() - 7200
    os.utime(temp, (old, old))
    sweeper = arraycache.Memory(lab.cache, verbose=0)
    sweeper.reduce_size()
    assert (temp / "a1").is_dir()  # its writer is alive: kept, whatever its age and pid
    lab.go()
    lab.finish(writer)
    assert lab.calls == "x"
    lab.run(WRITE_THREE, "reader")  # a hit on a whole entry (a damaged one would warn)
    assert lab.calls == "x"
    assert arraycache.Memory(lab.cache, verbose=0).verify() == []
    assert leftovers(lab.cache) == []


def test_reduce_size_keeps_the_folder_of_a_live_writer(lab):
    writer = lab.spawn(PAUSE_IN_WRITE + WRITE_THREE, "writer")
    _sweep_while_writing_then_publish(lab, writer)


def test_reduce_size_keeps_the_folder_of_a_writer_in_another_pid_namespace(lab):
    """A real second PID namespace sharing the cache (a container on a shared volume)."""
    skip_without_pid_namespaces()
    target = free_pid()
    writer = lab.spawn(FORK_TO_PID + PAUSE_IN_WRITE + WRITE_THREE, "writer", UNSHARE_PID,
                       ARRAYCACHE_TEST_PID=str(target))
    lab.wait_for("mid-write")
    # The folder is named after a pid that, here, belongs to no process.
    assert _writing_folder(lab).name.split(".tmp-")[1].split("-")[0] == str(target)
    assert not psutil.pid_exists(target)
    _sweep_while_writing_then_publish(lab, writer)


def test_reduce_size_removes_what_dead_writers_left(memory, location):
    f = memory.cache(lambda n: np.arange(n))
    f(10)
    entry = only_entry(location)
    # A real writer that dies (SIGKILL) while writing, with its lock held.
    code = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        import arraycache
        from arraycache.store import LocalStore
        store = LocalStore({str(location)!r})
        tmp = store.new_entry(Path({str(entry)!r}))
        (tmp / "a0").mkdir()
        (tmp / "a0" / "zarr.json").write_text("{{}}")
        print(tmp, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    dead = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert dead.returncode == -signal.SIGKILL, dead.stderr
    dead_tmp = Path(dead.stdout.strip())
    assert (dead_tmp / "a0").is_dir() and Path(f"{dead_tmp}.lock").exists()
    # Left without a lock: by an older version, or on a file system without locks.
    unproven_new = entry.with_name(f"{entry.name}.tmp-{os.getpid()}-0123abcd")
    unproven_old = entry.with_name(f"{entry.name}.tmp-{os.getpid()}-4567cdef")
    dead_pid = dead_tmp.name.split(".tmp-")[1].split("-")[0]
    dead_trash = entry.with_name(f"{entry.name}.trash-{dead_pid}-89abcdef")
    for folder in (unproven_new, unproven_old, dead_trash):
        (folder / "a0" / "c").mkdir(parents=True)
    old = time.time() - 7200
    os.utime(unproven_old, (old, old))
    memory.reduce_size()
    assert not dead_tmp.exists() and not Path(f"{dead_tmp}.lock").exists()
    assert not dead_trash.exists()
    assert not unproven_old.exists()  # older than an hour: taken for a dead writer's
    assert unproven_new.exists()  # nothing proves its writer is gone yet
    assert only_entry(location) == entry
    np.testing.assert_array_equal(f(10), np.arange(10))
    shutil.rmtree(unproven_new)


# --- 3. integrity: damaged entries are detected, recomputed and replaced ----------------------

N = 100_000


def _array(n):
    return np.arange(n, dtype=np.float64) % 977


def _pickled(n):
    return {"obj": Payload(PAYLOAD_TEXT), "data": np.arange(n, dtype=np.int64)}


def _truncate_chunk(entry):
    truncate(entry / "a0" / "c" / "0")


def _remove_chunk(entry):
    (entry / "a0" / "c" / "0").unlink()


def _flip_chunk(entry):
    flip_byte(entry / "a0" / "c" / "0")


def _garbage_meta(entry):
    (entry / "zarr.json").write_bytes(b'{"zarr_format": 3, "attrib\xff')


def _empty_meta(entry):
    (entry / "zarr.json").write_bytes(b"")


def _meta_without_attributes(entry):
    (entry / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group"}')


def _unknown_version(entry):
    meta = json.loads((entry / "zarr.json").read_text())
    meta["attributes"]["arraycache"]["format_version"] = 999
    (entry / "zarr.json").write_text(json.dumps(meta))


def _skeleton(entry):
    return entry / "skeleton" / "c" / "0"


def _truncate_skeleton(entry):
    truncate(_skeleton(entry))


def _remove_skeleton(entry):
    _skeleton(entry).unlink()


def _flip_skeleton(entry):
    # Flip a byte inside the pickled text: the damage still unpickles, silently wrong.
    data = _skeleton(entry).read_bytes()
    offset = data.index(PAYLOAD_TEXT.encode()) + 5
    flip_byte(_skeleton(entry), offset)


DAMAGES = [
    # (id, Memory options, result, damage)
    ("truncated-chunk", {}, _array, _truncate_chunk),
    ("truncated-chunk-mmap", {"mmap_mode": "r"}, _array, _truncate_chunk),
    ("missing-chunk", {}, _array, _remove_chunk),
    ("missing-chunk-mmap", {"mmap_mode": "r"}, _array, _remove_chunk),
    ("bit-flip", {}, _array, _flip_chunk),
    ("bit-flip-in-dict", {}, _pickled, _flip_chunk),
    ("compressed-bit-flip", {"compress": True}, _array, _flip_chunk),
    ("compressed-bit-flip-mmap", {"compress": True, "mmap_mode": "r"}, _array, _flip_chunk),
    ("compressed-truncated", {"compress": 3}, _array, _truncate_chunk),
    ("garbage-zarr-json", {}, _array, _garbage_meta),
    ("empty-zarr-json", {"mmap_mode": "r"}, _array, _empty_meta),
    ("zarr-json-without-attributes", {}, _array, _meta_without_attributes),
    ("unknown-format-version", {}, _array, _unknown_version),
    ("truncated-skeleton", {}, _pickled, _truncate_skeleton),
    ("truncated-skeleton-mmap", {"mmap_mode": "r"}, _pickled, _truncate_skeleton),
    ("missing-skeleton", {}, _pickled, _remove_skeleton),
    ("bit-flipped-skeleton", {}, _pickled, _flip_skeleton),
]


@pytest.mark.filterwarnings("ignore:.*cannot be memory-mapped:UserWarning")
@pytest.mark.parametrize(("options", "make", "damage"), [d[1:] for d in DAMAGES],
                         ids=[d[0] for d in DAMAGES])
def test_damaged_entry_warns_returns_the_value_and_is_replaced(location, options, make, damage):
    memory = arraycache.Memory(location, verbose=0, **options)
    calls = []

    @memory.cache
    def produce(n):
        calls.append(n)
        return make(n)

    expected = make(N)
    assert_same(produce(N), expected)
    entry = only_entry(location)
    damage(entry)
    gc.collect()

    with pytest.warns(arraycache.DamagedEntryWarning, match="damaged"):
        assert_same(produce(N), expected)
    assert len(calls) == 2
    assert only_entry(location) == entry  # replaced in place
    assert leftovers(location) == []

    with warnings.catch_warnings():
        warnings.simplefilter("error", arraycache.CacheWarning)
        assert_same(produce(N), expected)  # a clean hit
    assert len(calls) == 2
    # A fresh process-like view (new Memory object) agrees.
    fresh = arraycache.Memory(location, verbose=0, **options).cache(produce.func)
    assert_same(fresh(N), expected)
    assert len(calls) == 2


def test_bit_flip_under_mmap_is_not_checked_on_hits_but_verify_finds_it(location):
    """mmap_mode='r' hits check file sizes only (O(1)); ``verify`` reads every byte."""
    memory = arraycache.Memory(location, verbose=0, mmap_mode="r")
    f = memory.cache(lambda i: np.full(50_000, i, dtype=np.int64))
    shelved = [f.call_and_shelve(i) for i in range(5)]
    paths = [s.entry for s in shelved]
    assert memory.verify() == []

    flip_byte(paths[1] / "a0" / "c" / "0")
    truncate(paths[2] / "a0" / "c" / "0")
    _garbage_meta(paths[3])
    damaged = memory.verify()
    assert sorted(Path(p) for p in damaged) == sorted(paths[1:4])
    np.testing.assert_array_equal(f(0), np.full(50_000, 0))  # healthy entries still hit
    np.testing.assert_array_equal(f(4), np.full(50_000, 4))


# --- 4. full disk, read-only disk, interrupts --------------------------------------------------


def test_full_disk_warns_returns_the_value_and_leaves_nothing(tmp_path):
    with tmpfs(tmp_path / "small", "2m") as mnt:
        location = mnt / "cache"
        memory = arraycache.Memory(location, verbose=0, mmap_mode="r")
        calls = []

        @memory.cache
        def big(n):
            calls.append(n)
            return np.arange(n, dtype=np.float64)

        with pytest.warns(arraycache.UnstorableResultWarning, match="could not be cached"):
            out = big(500_000)  # 4 MB on a 2 MB file system: ENOSPC half-way
        np.testing.assert_array_equal(out, np.arange(500_000, dtype=np.float64))
        assert entries(location) == [] and leftovers(location) == []
        assert not big.check_call_in_cache(500_000)
        assert shutil.disk_usage(mnt).free > 1.5 * 2**20  # the partial chunk is gone

        # The cache still works for results that fit.
        np.testing.assert_array_equal(big(1000), np.arange(1000.0))
        np.testing.assert_array_equal(big(1000), np.arange(1000.0))
        assert calls == [500_000, 1000]
        del out
        gc.collect()


def test_file_size_limit_warns_returns_the_value_and_leaves_nothing(lab):
    """The same fault without a mount: RLIMIT_FSIZE makes writes fail with EFBIG."""
    out = lab.run("""
        import resource, signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then raises EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        f = jobs.memory().cache(jobs.slow_array)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            jobs.check_slow_array(f(500_000, 0), 500_000)
        print(*sorted({w.category.__name__ for w in caught}))
    """, "limited")
    assert out.split() == ["UnstorableResultWarning"]
    assert entries(lab.cache) == [] and leftovers(lab.cache) == []
    lab.run("jobs.check_slow_array(jobs.memory().cache(jobs.slow_array)(500_000, 0), 500_000)",
            "unlimited")
    assert lab.calls == "xx"
    only_entry(lab.cache)


@pytest.mark.parametrize("where", ["missing-folder", "existing-folder"])
def test_read_only_location_warns_and_computes(tmp_path, where):
    with tmpfs(tmp_path / "ro", "1m") as mnt:
        remount_read_only(mnt)
        location = mnt / "cache" if where == "missing-folder" else mnt
        memory = arraycache.Memory(location, verbose=0)
        calls = []

        @memory.cache
        def f(x):
            calls.append(x)
            return np.arange(x) * 2

        with pytest.warns(arraycache.CacheWarning):
            np.testing.assert_array_equal(f(5000), np.arange(5000) * 2)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            np.testing.assert_array_equal(f(5000), np.arange(5000) * 2)
            assert not f.check_call_in_cache(5000)
        assert all(issubclass(w.category, arraycache.CacheWarning) for w in caught), caught
        assert calls == [5000, 5000]
        assert list(mnt.iterdir()) == []


def test_read_only_filesystem_with_entries_serves_hits(tmp_path):
    with tmpfs(tmp_path / "fs", "16m") as mnt:
        location = mnt / "cache"
        calls = []

        def features(n):
            calls.append(n)
            return {"x": np.arange(n) * 1.5, "obj": Payload(PAYLOAD_TEXT)}

        expected = features(20_000)
        assert_same(arraycache.Memory(location, verbose=0).cache(features)(20_000), expected)
        compressed = arraycache.Memory(location / "z", verbose=0, compress=True)
        assert_same(compressed.cache(features)(20_000), expected)
        assert len(calls) == 3
        remount_read_only(mnt)

        for options in ({}, {"mmap_mode": "r"}, {"mmap_mode": "c"}):
            memory = arraycache.Memory(location, verbose=0, **options)
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                out = memory.cache(features)(20_000)
            assert_same({**out, "x": np.asarray(out["x"])}, expected)
            del out
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert_same(compressed.cache(features)(20_000), expected)
        assert len(calls) == 3  # all hits

        # A miss on the read-only cache: warned, computed, returned.
        f = arraycache.Memory(location, verbose=0).cache(features)
        with pytest.warns(arraycache.CacheWarning):
            assert_same(f(10), features(10))
        gc.collect()


def test_keyboard_interrupt_during_write_propagates_and_leaves_nothing(memory, location,
                                                                       monkeypatch):
    real_write_array = persistence.write_array

    def interrupted_write_array(entry_dir, name, arr, compression):
        spec = real_write_array(entry_dir, name, arr, compression)
        if name == "a1":
            raise KeyboardInterrupt
        return spec

    monkeypatch.setattr(persistence, "write_array", interrupted_write_array)
    calls = []

    @memory.cache
    def three(n):
        calls.append(n)
        return {"x": np.arange(n, dtype=np.float64), "y": np.ones(n), "z": np.zeros(n)}

    with pytest.raises(KeyboardInterrupt):
        three(10_000)
    assert entries(location) == [] and leftovers(location) == []
    assert not three.check_call_in_cache(10_000)

    monkeypatch.setattr(persistence, "write_array", real_write_array)
    assert_same(three(10_000), three.func(10_000))
    assert_same(three(10_000), three.func(10_000))
    assert calls == [10_000] * 4  # 2 direct calls + interrupted one + one recompute
    only_entry(location)


def test_sigint_in_a_writing_process_leaves_nothing(lab):
    writer = lab.spawn(STALL_IN_WRITE + "jobs.memory().cache(jobs.three_arrays)(50_000)",
                       "writer")
    lab.wait_for("mid-write")
    writer.send_signal(signal.SIGINT)
    _, err = writer.communicate(timeout=90)  # ~2 s idle; twice over 30 s on a loaded VM
    assert writer.returncode != 0 and "KeyboardInterrupt" in err
    assert entries(lab.cache) == [] and leftovers(lab.cache) == []
    lab.run("jobs.check_three_arrays(jobs.memory().cache(jobs.three_arrays)(50_000), 50_000)",
            "second")
    assert lab.calls == "xx"
    only_entry(lab.cache)


# --- 5. security --------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_cache_files_honour_the_umask(location, umask):
    old = os.umask(umask)
    try:
        memory = arraycache.Memory(location, verbose=0)
        memory.cache(lambda n: np.arange(n))(5000)
        memory.cache(lambda n: {"obj": Payload(PAYLOAD_TEXT), "a": np.ones(n)})(5000)
        arraycache.Memory(location, verbose=0, compress=True).cache(np.ones)(5000)
    finally:
        os.umask(old)
    paths = [location, *location.rglob("*")]
    assert len(paths) > 10
    too_open = {str(p.relative_to(location)): oct(p.stat().st_mode & 0o777)
                for p in paths if p.stat().st_mode & umask}
    assert too_open == {}


def test_plain_result_never_reads_a_planted_pickle(memory, location, tmp_path):
    calls = []

    @memory.cache
    def plain(n):
        calls.append(n)
        return {"a": np.arange(n), "label": "plain", "scale": 2.5}

    expected = plain.func(5000)
    plain(5000)
    entry = only_entry(location)
    assert not (entry / "skeleton").exists()  # no pickle in a plain entry
    marker = tmp_path / "exploited"
    planted = entry / "skeleton" / "c" / "0"
    planted.parent.mkdir(parents=True)
    planted.write_bytes(pickle.dumps(Exploit(marker)))
    assert_same(plain(5000), expected)
    assert not marker.exists()
    assert len(calls) == 2


NOBODY = 65534


def test_foreign_pickle_is_not_unpickled(memory, location, tmp_path):
    """Planned rule: a skeleton pickle not owned by the current user is not loaded."""
    calls = []

    @memory.cache
    def rich(n):
        calls.append(n)
        return {"obj": Payload(PAYLOAD_TEXT), "data": np.arange(n)}

    expected = {"obj": Payload(PAYLOAD_TEXT), "data": np.arange(5000)}
    rich(5000)
    entry = only_entry(location)
    marker = tmp_path / "exploited"
    _skeleton(entry).write_bytes(pickle.dumps(Exploit(marker)))
    os.chown(_skeleton(entry), NOBODY, NOBODY)

    with pytest.warns(arraycache.UntrustedEntryWarning, match="trust_foreign_pickles"):
        assert_same(rich(5000), expected)
    assert not marker.exists(), "a pickle written by another user was executed"
    assert len(calls) == 2
    assert _skeleton(entry).stat().st_uid == os.geteuid()  # replaced by our own entry
    with warnings.catch_warnings():
        warnings.simplefilter("error", arraycache.CacheWarning)
        assert_same(rich(5000), expected)
    assert len(calls) == 2


def test_foreign_pickle_is_loaded_when_trusted(location):
    calls = []

    def rich(n):
        calls.append(n)
        return {"obj": Payload(PAYLOAD_TEXT), "data": np.arange(n)}

    arraycache.Memory(location, verbose=0).cache(rich)(5000)
    for path in [only_entry(location), *only_entry(location).rglob("*")]:
        os.chown(path, NOBODY, NOBODY)
    trusting = arraycache.Memory(location, verbose=0, trust_foreign_pickles=True)
    assert_same(trusting.cache(rich)(5000), rich(5000))
    assert len(calls) == 2  # one hit (and the reference call above)


def test_foreign_plain_entry_is_a_hit(memory, location):
    """Plain results load without unpickling, so another user's entry is safe to read."""
    calls = []

    @memory.cache
    def plain(n):
        calls.append(n)
        return {"a": np.arange(n), "label": "plain"}

    plain(5000)
    for path in [only_entry(location), *only_entry(location).rglob("*")]:
        os.chown(path, NOBODY, NOBODY)
    assert_same(plain(5000), plain.func(5000))
    assert len(calls) == 2  # the hit did not call; plain.func did
