"""Lifetime of the process folders that Parallel shares arrays through.

Under a user's ``temp_folder`` the folder ``arraycache-<pid>-*`` and its lock go as soon
as nothing uses them (no call, no kept copy, no returned array), as joblib leaves
nothing in a ``temp_folder``; in ``/dev/shm`` and the temp dir the folder stays for the
next calls.  ``ProcessFolders`` is tested on its own instances with real folders and
locks; ``Parallel`` with real loky workers.
"""

from __future__ import annotations

import gc
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

from arraycache import Parallel, delayed
from arraycache.parallel._folders import LOCK_SUFFIX, PREFIX, ProcessFolders
from arraycache.parallel._pool import POOL


@pytest.fixture
def folders():
    made = ProcessFolders()
    yield made
    made.remove()


def _write(folders: ProcessFolders, root: str, name: str) -> str:
    path = os.path.join(folders.folder(root), name)
    Path(path).write_bytes(b"x" * 10)
    return path


def test_released_empty_folder_goes_with_its_lock(folders, tmp_path: Path) -> None:
    root = str(tmp_path)
    path = folders.reserve(root)
    assert sorted(os.listdir(tmp_path)) == sorted(
        [os.path.basename(path), os.path.basename(path) + LOCK_SUFFIX]
    )
    folders.release(root)
    assert os.listdir(tmp_path) == []
    assert folders.existing() == []


def test_a_file_left_keeps_the_folder_until_discarded(folders, tmp_path: Path) -> None:
    root = str(tmp_path)
    folders.reserve(root)
    kept = _write(folders, root, "copy.bin")
    folders.release(root)
    assert os.path.exists(kept)  # a kept copy or a returned array lives there
    other = _write(folders, root, "result.bin")  # (written by a later call, say)
    folders.discard(kept)
    assert os.listdir(os.path.dirname(other)) == ["result.bin"]
    folders.discard(other)
    assert os.listdir(tmp_path) == []


def test_the_last_of_several_calls_removes_it(folders, tmp_path: Path) -> None:
    root = str(tmp_path)
    path = folders.reserve(root)
    assert folders.reserve(root) == path
    folders.release(root)
    assert os.path.isdir(path) and os.path.exists(path + LOCK_SUFFIX)
    # While a call runs, emptying the folder does not remove it.
    folders.discard(_write(folders, root, "a.bin"))
    assert os.path.isdir(path)
    folders.release(root)
    assert os.listdir(tmp_path) == []


def test_a_later_call_gets_a_new_folder(folders, tmp_path: Path) -> None:
    root = str(tmp_path)
    first = folders.reserve(root)
    folders.release(root)
    second = folders.reserve(root)
    assert second != first
    assert os.path.isdir(second) and os.path.exists(second + LOCK_SUFFIX)
    assert not os.path.exists(first)
    folders.release(root)
    assert os.listdir(tmp_path) == []


def test_default_temp_dir_folder_stays_for_the_next_call(
    folders, tmp_path: Path, monkeypatch
) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    root = tempfile.gettempdir()
    path = folders.reserve(root)
    folders.release(root)
    folders.discard(_write(folders, root, "a.bin"))
    assert os.path.isdir(path) and os.path.exists(path + LOCK_SUFFIX)
    assert folders.reserve(root) == path
    folders.release(root)
    folders.remove()
    assert os.listdir(tmp) == []


def test_release_and_discard_from_a_callback_inside_a_method(folders, tmp_path: Path) -> None:
    # A memmap's finalizer may run (garbage collection) while this thread is inside a
    # method that holds the lock: it must not wait for it, and its news must not be lost.
    root = str(tmp_path)
    folders.reserve(root)
    kept = _write(folders, root, "copy.bin")
    with folders._locked():
        folders.discard(kept)
        folders.release(root)
        assert os.listdir(tmp_path) != []  # not removed under the lock holder's feet
    assert os.listdir(tmp_path) == []


def test_an_unreleased_reservation_keeps_the_folder(folders, tmp_path: Path) -> None:
    root = str(tmp_path)
    path = folders.reserve(root)
    folders.discard(_write(folders, root, "a.bin"))
    assert os.path.isdir(path)


# --- Parallel --------------------------------------------------------------------------------


def _double(a: np.ndarray) -> np.ndarray:
    return a * 2


def test_temp_folder_is_empty_after_the_call_and_its_arrays(
    tmp_path: Path, no_leftover_workers
) -> None:
    arrays = [np.random.default_rng(i).random(1000) for i in range(4)]
    results = Parallel(n_jobs=2, max_nbytes=100, temp_folder=tmp_path)(
        delayed(_double)(a) for a in arrays
    )
    for a, r in zip(arrays, results, strict=True):
        np.testing.assert_array_equal(r, a * 2)
    assert isinstance(results[0], np.memmap)  # a large result, mapped from the folder
    (folder,) = [name for name in os.listdir(tmp_path) if not name.endswith(LOCK_SUFFIX)]
    assert folder.startswith(f"{PREFIX}{os.getpid()}-")
    assert os.listdir(tmp_path / folder) != []  # the copies and results, still in use
    del arrays, results, a, r
    gc.collect()
    assert os.listdir(tmp_path) == []


def test_temp_folder_lasts_as_long_as_the_with_block(
    tmp_path: Path, no_leftover_workers
) -> None:
    # joblib's test_memmapping_leaks: kept inside the block, empty after it.
    with Parallel(n_jobs=2, max_nbytes=1, temp_folder=tmp_path) as parallel:
        out = parallel(delayed(np.sum)(a) for a in [np.random.random(10)] * 2)
        assert out[0] == out[1]
        gc.collect()
        assert os.listdir(tmp_path) != []
    gc.collect()
    assert os.listdir(tmp_path) == []


def test_default_folders_keep_copies_for_later_calls(no_leftover_workers) -> None:
    x = np.arange(300_000, dtype=np.float64)  # 2.4 MB: above max_nbytes
    before = set(POOL.paths())
    assert Parallel(n_jobs=2)(delayed(np.sum)(x) for _ in range(2)) == [x.sum()] * 2
    (copy,) = set(POOL.paths()) - before
    inode = os.stat(copy).st_ino
    # The next call with the same array maps the same file, not a new copy.
    assert Parallel(n_jobs=2)(delayed(np.sum)(x) for _ in range(2)) == [x.sum()] * 2
    assert set(POOL.paths()) - before == {copy}
    assert os.stat(copy).st_ino == inode
    folder = os.path.dirname(copy)
    del x
    gc.collect()
    assert not os.path.exists(copy)
    assert os.path.isdir(folder)  # /dev/shm or the temp dir: ready for the next call
