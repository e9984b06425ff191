"""Parallel under faults (issue 14): the sharing pool's bound, folders of other PID
namespaces, full and read-only sharing folders, results that cannot be rebuilt, and
files replaced while they are being sent.

Every fault really happens: real loky workers, real second processes (in a real PID
namespace when root allows), real size-limited and read-only tmpfs mounts (root only;
skipped otherwise), real cache entries cleared and recomputed.
"""

from __future__ import annotations

import contextlib
import gc
import os
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
from arraycache.parallel import Parallel, delayed
from arraycache.parallel._folders import FOLDERS, LOCK_SUFFIX, PREFIX, remove_stale_folders
from arraycache.parallel._pool import set_max_shared_bytes
from arraycache.parallel._sharing import (
    SharedFileChangedError,
    SharingFallbackWarning,
    remember_mapping,
)

from .conftest import (
    FORK_TO_PID,
    UNSHARE_PID,
    free_pid,
    shared_files,
    skip_without_pid_namespaces,
)

N = 300_000  # float64 elements: 2.4 MB, above the default max_nbytes of 1 MB

pytestmark = pytest.mark.usefixtures("no_leftover_workers")


@pytest.fixture(autouse=True)
def _nothing_left_in_the_pool():
    gc.collect()
    yield
    gc.collect()
    assert shared_files() == []


@pytest.fixture
def pool_bound():
    """Set the pool bound for one test; the default comes back after it."""
    previous = []

    def set_bound(value):
        previous.append(set_max_shared_bytes(value))

    yield set_bound
    if previous:
        set_max_shared_bytes(previous[0])


def worker_view(arr):
    """What a worker received: (class, file, sum)."""
    return type(arr).__name__, getattr(arr, "filename", None), float(np.asarray(arr).sum())


def file_content(path: str, like: np.ndarray) -> np.ndarray:
    return np.fromfile(path, dtype=like.dtype).reshape(like.shape)


# --- 1. written copies: one per owner, views for the call, a bound -----------------------------


def test_an_array_updated_in_place_keeps_one_copy():
    data = np.zeros(N)
    for step in range(12):
        data += 1  # in place: the same array object, new content
        ((kind, filename, total),) = Parallel(n_jobs=2)(delayed(worker_view)(data) for _ in [0])
        assert (kind, total) == ("memmap", float(N * (step + 1)))
        # One copy, and it holds the current content.
        assert shared_files() == [filename]
        np.testing.assert_array_equal(file_content(filename, data), data)
    del data
    gc.collect()
    assert shared_files() == []


def test_copies_of_views_last_only_for_their_call():
    base = np.arange(8 * N, dtype=np.float64)  # 19 MB, alive for the whole test
    step = N // 2
    for start in range(0, 6 * N, step):
        window = base[start : start + N]
        out = Parallel(n_jobs=2)(delayed(worker_view)(window) for _ in range(2))
        assert [row[0] for row in out] == ["memmap", "memmap"]
        assert out[0][2] == float(window.sum())
        del window
        assert shared_files() == []
    # Many windows in one call: each is written, and none outlives the call.
    windows = [base[i : i + N] for i in range(0, 6 * N, step)]
    out = Parallel(n_jobs=2)(delayed(worker_view)(w) for w in windows)
    assert len({row[1] for row in out}) == len(windows)
    assert [row[2] for row in out] == [float(w.sum()) for w in windows]
    assert shared_files() == []
    # A view covering the whole base (a transpose) is the base's copy: kept for reuse.
    grid = base.reshape(2000, -1).T
    ((_, filename, _),) = Parallel(n_jobs=2)(delayed(worker_view)(grid) for _ in [0])
    assert shared_files() == [filename]
    del grid, base, windows
    gc.collect()
    assert shared_files() == []


def test_pool_bound_drops_least_recently_used_copies(pool_bound):
    nbytes = N * 8
    pool_bound(int(2.5 * nbytes))  # room for two copies, not three
    a, b, c, d = (np.full(N, float(i)) for i in range(4))

    def send(arr):
        ((_, filename, total),) = Parallel(n_jobs=2)(delayed(worker_view)(arr) for _ in [0])
        assert total == float(arr.sum())
        return filename

    def kept():
        return sorted(float(file_content(path, a)[0]) for path in shared_files())

    send(a)
    send(b)
    assert kept() == [0.0, 1.0]
    send(c)  # a is the least recently used: dropped to make room
    assert kept() == [1.0, 2.0]
    send(b)  # used again: now c is the least recently used
    send(d)
    assert kept() == [1.0, 3.0]
    # The bound is in bytes: sending an array again after its copy was dropped writes it
    # again, with the right content.
    assert file_content(send(a), a)[0] == 0.0


def test_pool_bound_zero_keeps_nothing_after_a_call(pool_bound):
    pool_bound(0)
    data = np.full(N, 5.0)
    out = Parallel(n_jobs=2)(delayed(worker_view)(data) for _ in range(4))
    # Still shared through one file during the call...
    assert {row[:2] for row in out} == {("memmap", out[0][1])}
    assert [row[2] for row in out] == [5.0 * N] * 4
    # ...and gone after it, although the array lives on.
    assert shared_files() == []
    del data


def test_pool_bound_rejects_bad_values(pool_bound):
    for bad in (-1, 1.5, "1G", True):
        with pytest.raises(ValueError, match="max_shared_bytes"):
            set_max_shared_bytes(bad)
    pool_bound(np.int64(10))
    assert set_max_shared_bytes(None) == 10


def slow_view(arr, i):
    import time

    time.sleep(0.05)
    return float(np.asarray(arr).sum()), getattr(arr, "filename", None)


def test_old_copy_stays_while_a_running_call_uses_it():
    data = np.ones(N)
    first = Parallel(n_jobs=2, batch_size=1, return_as="generator")(
        delayed(slow_view)(data, i) for i in range(8)
    )
    _, old_file = next(first)  # the first call runs: its copy is in use
    data += 1  # in place: the next call writes a new copy for this owner
    new = Parallel(n_jobs=2)(delayed(slow_view)(data, i) for i in range(2))
    assert [total for total, _ in new] == [2.0 * N] * 2
    new_file = new[0][1]
    assert new_file != old_file
    # The old copy is still there for the tasks of the first call, which all see its content.
    assert sorted(shared_files()) == sorted([old_file, new_file])
    rest = list(first)
    assert [total for total, _ in rest] == [float(N)] * 7
    assert {f for _, f in rest} == {old_file}
    # Once that call is done, the owner keeps only its current copy.
    gc.collect()
    assert shared_files() == [new_file]
    del data, first


def test_arrays_go_to_the_temp_dir_when_dev_shm_is_short(tmp_path):
    """A real small /dev/shm (as in a container: 64 MB), in a private mount namespace."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs over /dev/shm needs root")
    script = tmp_path / "short_shm.py"
    script.write_text(textwrap.dedent("""
        import os, tempfile
        import numpy as np
        from arraycache.parallel import Parallel, delayed

        def where(arr):
            return type(arr).__name__, str(arr.filename), float(arr.sum())

        data = np.ones(2_000_000)  # 16 MB: below the tmpfs size, not beside a safety margin
        (row,) = Parallel(n_jobs=2)(delayed(where)(data) for _ in [0])
        print(row[0], os.path.dirname(os.path.dirname(row[1])), row[2])
        print(tempfile.gettempdir())
    """))
    command = (
        "mount -t tmpfs -o size=64m tmpfs /dev/shm && "
        f"exec {sys.executable} {script}"
    )
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", command],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    if proc.returncode != 0 and "unshare" in proc.stderr and "not permitted" in proc.stderr:
        pytest.skip(f"no mount namespace here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    first, tempdir = proc.stdout.splitlines()
    kind, root, total = first.split()
    assert (kind, root, float(total)) == ("memmap", tempdir, 2_000_000.0)


# --- 4. sharing folders of other PID namespaces ----------------------------------------------

HOLDER = """
    import os, sys
    from arraycache.parallel._folders import FOLDERS

    folder = FOLDERS.folder(sys.argv[1])
    with open(os.path.join(folder, "in-use.bin"), "wb") as f:
        f.write(b"data a running call maps")
    print(folder, flush=True)
    sys.stdin.readline()  # hold the folder until told to go
"""


@contextlib.contextmanager
def holder_process(root: Path, prefix: tuple[str, ...] = (), script: str = HOLDER,
                   **env: str):
    """A real process holding its sharing folder under ``root``; yields (process, folder)."""
    path = root / "holder.py"
    path.write_text(textwrap.dedent(script))
    proc = subprocess.Popen(
        [*prefix, sys.executable, str(path), str(root)], env={**os.environ, **env},
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = proc.stdout.readline().strip()
        if not line:
            proc.kill()
            pytest.fail(f"the holder process did not start: {proc.communicate()[1]}")
        yield proc, Path(line)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def kill_and_wait(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc`` (no atexit cleanup: its folder stays behind); wait for its tree."""
    tree = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _, alive = psutil.wait_procs(tree, timeout=30)
    assert alive == []


def test_live_folder_is_kept_whatever_pid_its_name_says(tmp_path):
    with holder_process(tmp_path) as (proc, folder):
        # Seen from another PID namespace, the owner's pid means nothing: give the folder
        # (and its lock file) the name of a pid that does not exist here.  The owner
        # still holds the lock.
        fake = tmp_path / f"{PREFIX}{free_pid()}-{folder.name.rsplit('-', 1)[1]}"
        folder.rename(fake)
        Path(str(folder) + LOCK_SUFFIX).rename(str(fake) + LOCK_SUFFIX)
        assert remove_stale_folders(str(tmp_path)) == []
        assert (fake / "in-use.bin").read_bytes() == b"data a running call maps"
        kill_and_wait(proc)
        # Now its owner is gone: swept, lock file included.
        assert remove_stale_folders(str(tmp_path)) == [str(fake)]
        assert not fake.exists() and not Path(str(fake) + LOCK_SUFFIX).exists()


def test_folders_of_dead_owners_are_swept_and_unproven_ones_kept(tmp_path):
    with holder_process(tmp_path) as (proc, folder):
        alive = folder
        kill_and_wait(proc)
    # A folder without a lock file (an older version, or its lock removed by hand): its
    # owner cannot be proven gone, so it stays, even under the pid of no process.
    unproven = tmp_path / f"{PREFIX}{free_pid()}-0123456789ab"
    unproven.mkdir()
    unrelated = tmp_path / "arraycache-notapid"
    unrelated.mkdir()
    # The next sharing folder made in that root sweeps it first.
    data = np.full(N, 3.0)
    ((kind, filename, _),) = Parallel(n_jobs=2, temp_folder=str(tmp_path))(
        delayed(worker_view)(data) for _ in [0]
    )
    assert kind == "memmap" and filename.startswith(str(tmp_path / f"{PREFIX}{os.getpid()}-"))
    assert not alive.exists() and not Path(str(alive) + LOCK_SUFFIX).exists()
    assert unproven.exists() and unrelated.exists()
    del data
    gc.collect()
    FOLDERS.remove_root(str(tmp_path))


NAMESPACED_HOLDER = FORK_TO_PID + textwrap.dedent(HOLDER)


def test_live_folder_of_another_pid_namespace_is_kept(tmp_path):
    """A real second PID namespace sharing the folder's root (as ``--ipc=host`` does)."""
    skip_without_pid_namespaces()
    target = free_pid()
    with holder_process(tmp_path, UNSHARE_PID, NAMESPACED_HOLDER,
                        ARRAYCACHE_TEST_PID=str(target)) as (proc, folder):
        assert folder.name.startswith(f"{PREFIX}{target}-")
        assert not psutil.pid_exists(target)  # here, its pid belongs to no process
        assert remove_stale_folders(str(tmp_path)) == []
        assert (folder / "in-use.bin").read_bytes() == b"data a running call maps"
        kill_and_wait(proc)  # unshare takes its whole namespace with it
        assert remove_stale_folders(str(tmp_path)) == [str(folder)]
        assert not folder.exists()


# --- 5, 6. full and read-only sharing folders ---------------------------------------------------


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    """A size-limited tmpfs mounted at ``path`` (root only; skipped otherwise)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                           str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"mount failed: {proc.stderr.strip()} (these tests need CAP_SYS_ADMIN)")
    try:
        yield path
    finally:
        gc.collect()  # drop memmaps over the mount
        FOLDERS.remove_root(str(path))
        subprocess.run(["umount", str(path)], check=True)


def remount_read_only(path: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)
    with pytest.raises(OSError):  # really read-only, even for root
        (path / "probe").write_text("")


def files_under(path: Path) -> list[str]:
    return sorted(
        os.path.relpath(os.path.join(d, name), path)
        for d, _, names in os.walk(path) for name in names
    )


def filled(value, n):
    return np.full(n, float(value))


def test_large_result_with_a_full_sharing_folder_comes_through_the_pipe(tmp_path):
    with tmpfs(tmp_path / "small", "4m") as mnt:
        sizes = (N, 4 * N)  # 2.4 MB fits in the 4 MB folder; 9.6 MB does not
        out = Parallel(n_jobs=2, temp_folder=str(mnt))(
            delayed(filled)(i, n) for i, n in enumerate(sizes)
        )
        assert isinstance(out[0], np.memmap) and str(out[0].filename).startswith(str(mnt))
        assert type(out[1]) is np.ndarray  # through the pipe, as joblib
        for i, (arr, n) in enumerate(zip(out, sizes, strict=True)):
            np.testing.assert_array_equal(arr, np.full(n, float(i)))
        del out
        gc.collect()
        # Nothing half-written left: only this process's (empty) folder.
        assert [f for f in files_under(mnt) if not f.endswith(LOCK_SUFFIX)] == []


def total(arr):
    return float(arr.sum()), type(arr).__name__


def test_argument_that_cannot_be_written_goes_through_the_pipe_with_a_warning(tmp_path):
    with tmpfs(tmp_path / "small", "4m") as mnt:
        big = np.full(4 * N, 2.0)  # 9.6 MB
        with pytest.warns(SharingFallbackWarning) as record:
            out = Parallel(n_jobs=2, temp_folder=str(mnt))(delayed(total)(big) for _ in range(3))
        assert out == [(2.0 * 4 * N, "ndarray")] * 3
        (warning,) = record  # once per array, not per task
        message = str(warning.message)
        assert str(mnt) in message and "No space left on device" in message
        assert "through the pipe" in message
        # An array that fits is still shared through the folder.
        fits = np.full(N, 1.0)
        assert Parallel(n_jobs=2, temp_folder=str(mnt))(delayed(total)(fits) for _ in [0]) == [
            (float(N), "memmap")
        ]
        del big, fits, out
        gc.collect()


def test_array_updated_in_place_needs_room_for_one_copy_only(tmp_path):
    # A folder with room for one copy of the array and not two: the previous copy of an
    # array updated in place goes before the new one is written (no fallback warning).
    with tmpfs(tmp_path / "small", "4m") as mnt:
        data = np.zeros(N)  # 2.4 MB
        with warnings.catch_warnings():
            warnings.simplefilter("error", SharingFallbackWarning)
            for step in range(1, 4):
                data += 1
                out = Parallel(n_jobs=2, temp_folder=str(mnt))(delayed(total)(data) for _ in [0])
                assert out == [(float(N * step), "memmap")]
        del data
        gc.collect()


def test_read_only_sharing_folder_warns_and_completes(tmp_path):
    with tmpfs(tmp_path / "ro", "64m") as mnt:
        remount_read_only(mnt)
        big = np.full(N, 3.0)
        with pytest.warns(SharingFallbackWarning, match="Read-only file system") as record:
            out = Parallel(n_jobs=2, temp_folder=str(mnt))(
                delayed(filled)(i, n) for i, n in [(1, N), (2, N)]
            ) + Parallel(n_jobs=2, temp_folder=str(mnt))(delayed(total)(big) for _ in [0])
        assert str(mnt) in str(record[0].message)
        # Results could not be written there either: they came through the pipe.
        assert [type(x) for x in out[:2]] == [np.ndarray, np.ndarray]
        np.testing.assert_array_equal(out[1], np.full(N, 2.0))
        assert out[2] == (3.0 * N, "ndarray")
        del big, out


# --- 6. a result that cannot be rebuilt in the caller ---------------------------------------------


def _rebuild(caller_pid):
    if os.getpid() == caller_pid:
        raise ValueError("this object cannot be rebuilt in the caller")
    return Unbuildable(caller_pid)


class Unbuildable:
    """Pickles in a worker, fails to unpickle in the caller (like a worker-only class)."""

    def __init__(self, caller_pid):
        self.caller_pid = caller_pid

    def __reduce__(self):
        return _rebuild, (self.caller_pid,)


class UnbuildableError(Exception):
    def __init__(self, caller_pid):
        super().__init__(caller_pid)
        self.caller_pid = caller_pid

    def __reduce__(self):
        return _rebuild_error, (self.caller_pid,)


def _rebuild_error(caller_pid):
    if os.getpid() == caller_pid:
        raise TypeError("this exception cannot be rebuilt in the caller")
    return UnbuildableError(caller_pid)


def make(i, caller_pid, bad):
    if i == bad == 5:
        raise UnbuildableError(caller_pid)
    return Unbuildable(caller_pid) if i == bad else i


def test_result_that_cannot_be_rebuilt_names_its_task():
    with pytest.raises(ValueError, match="cannot be rebuilt") as info:
        Parallel(n_jobs=2, batch_size=2)(delayed(make)(i, os.getpid(), 3) for i in range(6))
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "the result of task 3" in notes


def test_exception_that_cannot_be_rebuilt_names_its_task():
    with pytest.raises(TypeError, match="cannot be rebuilt") as info:
        Parallel(n_jobs=2, batch_size=2)(delayed(make)(i, os.getpid(), 5) for i in range(6))
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "the exception raised by task 5" in notes


# --- 8. a file replaced or removed while it is being sent ---------------------------------------

STATE = {"value": 1.0}


def load(n):
    return np.full(n, STATE["value"])


def digest_and_total(arr):
    from arraycache.hashing import stored_digest

    return stored_digest(arr), float(arr.sum())


def wait_for(go: str) -> None:
    deadline = time.monotonic() + 20
    while not os.path.exists(go):
        if time.monotonic() > deadline:
            raise TimeoutError("never told to go")
        time.sleep(0.005)


def tasks_changing_the_file(arr, change, go: Path, n_after=2):
    """Tasks over ``arr``, the file of which ``change()`` changes while they are in flight.

    Both workers first run a task waiting for ``go``; two tasks over ``arr`` are sent
    (pickled, queued) behind them, then ``change()`` runs, then ``go`` is created, then
    ``n_after`` more tasks over ``arr`` are sent.  Needs n_jobs=2, ``batch_size=1`` (tasks
    are pulled two at a time) and ``pre_dispatch`` > 4 (the generator is resumed without
    waiting for a completion): the two tasks sent before the change are opened by a
    worker only after it.
    """
    yield delayed(wait_for)(str(go))
    yield delayed(wait_for)(str(go))
    yield delayed(digest_and_total)(arr)
    yield delayed(digest_and_total)(arr)
    change()
    go.touch()
    for _ in range(n_after):
        yield delayed(digest_and_total)(arr)


@pytest.fixture
def hit(tmp_path):
    """A function returning (memory, cached function, a 2.4 MB cache hit mapped read-only).

    A function, not the values: a fixture's values live until after the checks of
    ``_nothing_left_in_the_pool``.
    """
    STATE["value"] = 1.0

    def make():
        memory = arraycache.Memory(tmp_path / "cache", mmap_mode="r", verbose=0)
        cached = memory.cache(load)
        cached(N)
        arr = cached(N)
        assert isinstance(arr, np.memmap)
        return memory, cached, arr

    yield make
    STATE["value"] = 1.0


def test_cache_entry_replaced_while_sent_is_an_error_naming_the_file(hit, tmp_path):
    _, cached, arr = hit()

    def replace():
        cached.clear()
        STATE["value"] = 2.0
        cached(N)  # same entry, same path, a new file with other bytes

    go = tmp_path / "go"
    with pytest.raises(SharedFileChangedError, match="replaced by another file") as info:
        Parallel(n_jobs=2, batch_size=1, pre_dispatch=8)(
            tasks_changing_the_file(arr, replace, go)
        )
    assert str(arr.filename) in str(info.value)
    # The caller's array still maps the old bytes; a new call sends the new file.
    assert float(arr.sum()) == float(N)
    out = Parallel(n_jobs=2)(delayed(digest_and_total)(cached(N)) for _ in range(2))
    assert [t for _, t in out] == [2.0 * N] * 2
    del arr


def test_file_replaced_before_the_call_sends_the_mapped_bytes(hit):
    _, cached, arr = hit()
    # What persistence records when it maps a hit (see remember_mapping).
    remember_mapping(arr, os.stat(arr.filename))
    cached.clear()
    STATE["value"] = 2.0
    cached(N)  # the entry is replaced before the call: the path holds other bytes
    out = Parallel(n_jobs=2)(delayed(worker_view)(arr) for _ in range(3))
    # The workers got the bytes the caller's array maps (a copy), not the new file's.
    assert [row[2] for row in out] == [float(N)] * 3
    assert {row[1] for row in out} == set(shared_files())
    assert str(arr.filename) not in {row[1] for row in out}


def test_cache_entry_cleared_while_sent_is_an_error_naming_the_file(hit, tmp_path):
    memory, _, arr = hit()
    go = tmp_path / "go"
    with pytest.raises(SharedFileChangedError, match="was removed") as info:
        Parallel(n_jobs=2, batch_size=1, pre_dispatch=8)(
            tasks_changing_the_file(arr, memory.clear, go)
        )
    assert str(arr.filename) in str(info.value)
    del arr


def test_file_modified_in_place_is_seen_as_the_caller_sees_it_without_its_digest(hit, tmp_path):
    _, _, arr = hit()
    path = str(arr.filename)
    old = os.stat(path)
    os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns - 10**10))  # past any clock tick

    def modify():
        # Another writer changes the file in place (same inode): the caller's own
        # mapping sees the change too.
        with open(path, "r+b") as f:
            f.write(np.full(10, 7.0).tobytes())

    tasks = tasks_changing_the_file(arr, modify, tmp_path / "go")
    out = Parallel(n_jobs=2, batch_size=1, pre_dispatch=8)(tasks)
    expected = float(N) + 10 * (7.0 - 1.0)
    assert float(arr.sum()) == expected
    # Every task over arr was opened after the change: each sees the caller's bytes, and
    # none claims the stored digest, which no longer holds (hashed by content instead).
    assert out[2:] == [(None, expected)] * 4
    del arr


def fill_and_read(out, i):
    out[i] = out[i] + 1  # a worker writes into the user's memmap
    return float(out[N // 2 + i])


def test_user_writable_memmap_changed_during_the_call_is_no_error(tmp_path):
    path = tmp_path / "out.bin"
    out = np.memmap(path, dtype=np.float64, mode="w+", shape=(N,))

    def tasks():
        for i in range(1, 8):
            out[N // 2 + i] = 100.0 * i  # the caller writes through its own mapping...
            if i == 4:
                with open(path, "r+b") as f:  # ...and through the file (mtime changes)
                    f.seek(8 * N - 8)
                    f.write(np.float64(42.0).tobytes())
            yield delayed(fill_and_read)(out, i)

    # Each task sees what the caller wrote before sending it; no error for the changes.
    seen = Parallel(n_jobs=2, batch_size=1)(tasks())
    assert seen == [100.0 * i for i in range(1, 8)]
    np.testing.assert_array_equal(out[1:8], np.ones(7))
    assert out[-1] == 42.0


def read_at(arr, i):
    return float(arr[i])


def test_user_read_only_memmap_of_a_growing_file_is_no_error(tmp_path):
    path = tmp_path / "log.bin"
    np.arange(N, dtype=np.float64).tofile(path)
    arr = np.memmap(path, dtype=np.float64, mode="r")

    def tasks():
        for i in range(5):
            if i == 2:
                with open(path, "ab") as f:  # a writer appends: size and mtime change,
                    f.write(np.ones(1000).tobytes())  # the mapped part is untouched
            yield delayed(read_at)(arr, i)

    assert Parallel(n_jobs=2, batch_size=1)(tasks()) == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_file_cut_short_while_sent_is_an_error(tmp_path):
    path = tmp_path / "data.bin"
    np.ones(N).tofile(path)
    arr = np.memmap(path, dtype=np.float64, mode="r")

    def cut():
        os.truncate(path, 8 * 1000)

    with pytest.raises(SharedFileChangedError, match="cut to 8000 bytes"):
        Parallel(n_jobs=2, batch_size=1, pre_dispatch=8)(
            tasks_changing_the_file(arr, cut, tmp_path / "go")
        )
    del arr
