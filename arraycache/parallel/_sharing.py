"""Arrays sent to workers as references to files instead of bytes.

Two kinds of references, built by :class:`CallSharing` (caller side) and
:func:`result_reference` (worker side), opened by :func:`open_reference`:

- *file-backed*: the array already lives in a file (an ``np.memmap`` in mode
  'r', 'r+' or 'w+', a view of one, or an array over an ``mmap.mmap`` registered
  with :func:`register_mapped_file`, e.g. a cache hit): the reference is (file,
  offset, dtype, shape, strides) and nothing is written;
- *written*: any other array above ``max_nbytes`` is written once into the
  sharing pool (see ``_pool``: named by content digest, reused by later tasks and
  calls, bounded); if no sharing folder takes it, it goes through the pipe with a
  :class:`SharingFallbackWarning`.

Each reference records the file's identity when it was made, and the opening side
checks it (see :func:`open_reference`): a file replaced or removed in between is an
error naming the file, never other bytes.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import threading
import uuid
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..hashing import array_digest, remember_digest, stored_digest
from ._folders import FOLDER_MODE, FOLDERS, candidate_roots
from ._pinned import byte_extent
from ._pool import (
    POOL,
    Copy,
    SharingWriteError,
    check_limit,
    get_max_shared_bytes,
    write_first,
)

__all__ = [
    "CallSharing",
    "Reference",
    "ResultSpec",
    "SharedFileChangedError",
    "SharingFallbackWarning",
    "file_backing",
    "open_reference",
    "register_mapped_file",
    "result_reference",
]

@dataclass(frozen=True)
class Reference:
    """Where an array's bytes are, for the process that maps them."""

    path: str
    """File holding the bytes."""
    offset: int
    """Byte offset in the file of the lowest byte the array touches."""
    span: int
    """Bytes from ``offset`` that the array touches."""
    start: int
    """Position of the array's first element, in bytes from ``offset``."""
    dtype: np.dtype
    shape: tuple[int, ...]
    strides: tuple[int, ...] | None
    """None for a C- or F-contiguous array (then ``order`` says which)."""
    order: str
    mode: str | None
    """``np.memmap`` mode to open with; None loads the array into memory."""
    adopt: bool = False
    """A worker result file that the caller takes over (moves out of the call folder)."""
    digest: str | None = None
    """Content digest of the array, when known: a read-only map of it then hashes in O(1)
    in the worker too (a cached function called in a task does not re-read it)."""
    stamp: tuple[int, int, int, int] | None = None
    """(st_dev, st_ino, st_size, st_mtime_ns) of the file when the reference was made;
    None for a worker result file (fresh, private to the call)."""


# --- where an array's bytes live -------------------------------------------------------------

# id(mmap.mmap) -> (weak reference, file, file offset of the map's first byte, writable)
_mapped_files: dict[int, tuple[weakref.ref, str, int, bool]] = {}


def register_mapped_file(mm: mmap.mmap, path: str, offset: int, writable: bool) -> None:
    """Declare that ``mm`` maps ``path`` from byte ``offset``.

    Arrays built directly over ``mm`` (``np.frombuffer(mm)``) are then passed to
    workers by reference.  ``np.memmap`` objects need no registration.
    """
    key = id(mm)

    def forget(_ref: weakref.ref, key: int = key) -> None:
        _mapped_files.pop(key, None)

    _mapped_files[key] = (weakref.ref(mm, forget), os.path.abspath(path), offset, writable)


def _address(arr: np.ndarray) -> int:
    return arr.__array_interface__["data"][0]


def _extent(arr: np.ndarray) -> tuple[int, int]:
    """(lowest, highest + 1) byte touched by ``arr``, relative to its first element."""
    first = arr.__array_interface__["data"][0]
    low, high = byte_extent(arr)
    return low - first, high - first


def file_backing(arr: np.ndarray) -> tuple[str, int, str] | None:
    """(file, file offset of ``arr``'s first element, mode) if ``arr`` lives in a file.

    Copy-on-write maps ('c') do not count: their memory may differ from the file.
    """
    found = _backing(arr)
    return None if found is None else found[:3]


def _backing(arr: np.ndarray) -> tuple[str, int, str, mmap.mmap] | None:
    """:func:`file_backing`, and the ``mmap.mmap`` object that maps the file."""
    obj: Any = arr
    while isinstance(obj, np.ndarray):
        base = obj.base
        if isinstance(obj, np.memmap) and isinstance(base, mmap.mmap):
            # The np.memmap that made the map: its ``offset`` is the file offset of its
            # first element (views copy ``offset`` unchanged, so they cannot be used).
            if obj.filename is None or obj.mode == "c":
                return None
            mode = "r" if obj.mode == "r" else "r+"
            first = obj.offset + _address(arr) - _address(obj)
            return os.fspath(obj.filename), first, mode, base
        obj = base
    if isinstance(obj, memoryview):  # np.frombuffer(mm) keeps a memoryview of mm
        obj = obj.obj
    if isinstance(obj, mmap.mmap):
        known = _mapped_files.get(id(obj))
        if known is not None and known[0]() is obj:
            _ref, path, offset, writable = known
            start = _address(np.frombuffer(obj, dtype=np.uint8, count=1))
            return path, offset + _address(arr) - start, "r+" if writable else "r", obj
    return None


# id(mmap.mmap) -> (weak reference, the file's stamp when it was mapped)
_mapping_stamps: dict[int, tuple[weakref.ref, tuple[int, int, int, int]]] = {}


def stamp_of(st: os.stat_result) -> tuple[int, int, int, int]:
    """What identifies a file's content cheaply: (st_dev, st_ino, st_size, st_mtime_ns)."""
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def remember_mapping(arr: np.memmap, st: os.stat_result) -> None:
    """Record that ``arr`` maps the file whose ``os.stat`` was ``st`` when it was mapped.

    Then if the file at ``arr.filename`` is later replaced by another one (a cache entry
    cleared and recomputed), sending ``arr`` to workers copies the bytes ``arr`` maps
    instead of referring to the path, which now holds other bytes; if it is modified in
    place, the content digest ``arr`` carries is not passed on.  Call it with the stat
    taken just before mapping (or ``os.fstat`` of the file object given to np.memmap).
    """
    mm = getattr(arr, "_mmap", None)
    if not isinstance(mm, mmap.mmap):
        return
    key = id(mm)

    def forget(_ref: weakref.ref, key: int = key) -> None:
        _mapping_stamps.pop(key, None)

    _mapping_stamps[key] = (weakref.ref(mm, forget), stamp_of(st))


def _mapping_stamp(mm: mmap.mmap) -> tuple[int, int, int, int] | None:
    known = _mapping_stamps.get(id(mm))
    return known[1] if known is not None and known[0]() is mm else None


def _layout(arr: np.ndarray) -> tuple[tuple[int, ...] | None, str]:
    if arr.flags.c_contiguous:
        return None, "C"
    if arr.flags.f_contiguous:
        return None, "F"
    return tuple(arr.strides), "C"


def file_reference(arr: np.ndarray, mmap_mode: str | None) -> Reference | None:
    """Reference to file-backed ``arr``; None if not file-backed, or if its file is gone or
    was replaced since ``arr`` mapped it (its bytes are then sent some other way).

    Raises
    ------
    SharedFileChangedError
        If ``arr`` is a writable map whose file was replaced: workers would write into
        another file than the caller's.
    """
    backing = _backing(arr)
    if backing is None:
        return None
    path, first, mode, mm = backing
    low, high = _extent(arr)
    try:
        stamp = stamp_of(os.stat(path))
    except OSError:
        return None
    if stamp[2] < first + high:
        return None
    digest = stored_digest(arr)
    mapped = _mapping_stamp(mm)
    if mapped is not None and mapped != stamp:
        if mapped[:2] != stamp[:2]:
            if mode != "r":
                raise SharedFileChangedError(
                    f"{path}: the file of a writable memmap was replaced by another file "
                    "after it was mapped: workers would write into the new one"
                )
            return None
        digest = None  # modified in place since it was mapped: the digest is stale
    strides, order = _layout(arr)
    if mode == "r":
        # Read-only data: the caller's mmap_mode decides ('c' keeps worker writes private).
        mode = "c" if mmap_mode in ("c", "r+", "w+") else ("r" if mmap_mode else None)
    # A writable memmap stays shared for writing, as in joblib: workers can fill it.
    return Reference(
        path, first + low, high - low, -low, arr.dtype, arr.shape, strides, order, mode,
        digest=digest, stamp=stamp,
    )


# --- written copies --------------------------------------------------------------------------


class SharingFallbackWarning(UserWarning):
    """A large argument could not be written for the workers; it went through the pipe."""


_DEFAULT: Any = object()


class CallSharing:
    """Turns the arrays of one ``Parallel`` call into references (caller side).

    Within a call an array object is hashed once (later tasks reuse the reference);
    across calls it is hashed again, since a writable array may have changed.

    Parameters
    ----------
    max_nbytes, mmap_mode, temp_folder
        As the ``Parallel`` parameters.
    max_shared_bytes : int, 'auto' or None, optional
        Bound on the pool of written copies (see ``_pool``); by default the
        process-wide value of :func:`~arraycache.parallel._pool.set_max_shared_bytes`.
    """

    def __init__(self, max_nbytes: int | None, mmap_mode: str | None, temp_folder: str | None,
                 max_shared_bytes: Any = _DEFAULT):
        self.max_nbytes = max_nbytes
        self.mmap_mode = mmap_mode
        self.temp_folder = temp_folder
        self.max_shared_bytes = (
            get_max_shared_bytes() if max_shared_bytes is _DEFAULT
            else check_limit(max_shared_bytes)
        )
        self._memo: dict[int, tuple[weakref.ref, Reference | None]] = {}
        self._pinned: list[Copy] = []
        self._lock = threading.Lock()

    def reference(self, arr: np.ndarray) -> Reference | None:
        """Reference for ``arr``, or None to pickle it as bytes."""
        if arr.dtype.hasobject or arr.size == 0:
            return None
        key = id(arr)
        known = self._memo.get(key)
        if known is not None and known[0]() is arr:
            return known[1]
        ref = file_reference(arr, self.mmap_mode)
        if ref is None and self.max_nbytes is not None and arr.nbytes > self.max_nbytes:
            ref = self._write(arr)
        self._memo[key] = (weakref.ref(arr), ref)
        return ref

    def _write(self, arr: np.ndarray) -> Reference | None:
        digest = array_digest(arr)
        try:
            copy = POOL.acquire(digest, arr, self.temp_folder, self.max_shared_bytes)
        except SharingWriteError as exc:
            # The pipe still delivers the right bytes (a pickled copy per task, as with
            # max_nbytes=None): slower and more memory, but the call completes.  The
            # warning names the folder and the error, so the cause can be fixed.
            warnings.warn(
                f"{exc}; it is sent to the workers through the pipe instead (pickled, "
                "one copy per task). Free some space there or choose another temp_folder.",
                SharingFallbackWarning,
                stacklevel=2,
            )
            return None
        with self._lock:
            self._pinned.append(copy)
        # Written copies are shared by every task and later calls: workers may not write
        # to them, so writable modes become copy-on-write.
        mode = {"r": "r", None: None}.get(self.mmap_mode, "c")
        return Reference(
            copy.path, 0, arr.nbytes, 0, arr.dtype, arr.shape, None, copy.order, mode,
            digest=digest, stamp=copy.stamp,
        )

    def close(self) -> None:
        """Release the copies this call pinned (see ``_pool`` for how long they stay)."""
        with self._lock:
            pinned, self._pinned = self._pinned, []
        if pinned:
            POOL.release(pinned, self.max_shared_bytes)
        self._memo.clear()


# --- worker results --------------------------------------------------------------------------


@dataclass(frozen=True)
class ResultSpec:
    """What a worker needs to send large results back through files."""

    max_nbytes: int | None
    mode: str | None
    temp_folder: str | None
    call_folders: dict[str, str]
    """Root -> call folder under the caller's process folder there (made on demand)."""
    same_host: bool = True
    """The worker shares the caller's files; if not (a dask cluster), results are pickled
    whole, memmaps included."""


def result_reference(arr: np.ndarray, spec: ResultSpec) -> Reference | None:
    """Reference for a worker result ``arr`` (worker side), or None to pickle it as bytes.

    The file goes under /dev/shm when it has room, else the temp dir (or ``temp_folder``).
    If no call folder takes it (full, read-only), the result goes through the pipe:
    slower, but it arrives, as with joblib.
    """
    if arr.dtype.hasobject or arr.size == 0 or not spec.same_host:
        return None
    mode = "r+" if spec.mode == "w+" else spec.mode
    ref = file_reference(arr, mode)
    if ref is not None:
        return ref
    if spec.max_nbytes is None or arr.nbytes <= spec.max_nbytes:
        return None
    # The worker's temp dir is the caller's (inherited environment); try the others anyway.
    preferred = [
        r for r in candidate_roots(arr.nbytes, spec.temp_folder) if r in spec.call_folders
    ]
    roots = preferred + [r for r in spec.call_folders if r not in preferred]
    folders = [(spec.call_folders[r], _call_folder_maker(spec.call_folders[r])) for r in roots]
    try:
        path, order, _ = write_first(arr, f"result-{uuid.uuid4().hex}.bin", folders)
    except SharingWriteError:
        return None
    return Reference(path, 0, arr.nbytes, 0, arr.dtype, arr.shape, None, order, mode, True)


def _call_folder_maker(folder: str) -> Callable[[], str]:
    def make() -> str:
        # Only the call folder: its parent, the caller's process folder, is made by the
        # caller with its lock (a folder made here could never be proven dead).
        with contextlib.suppress(FileExistsError):
            os.mkdir(folder, FOLDER_MODE)
        return folder

    return make


def _adopt(path: str) -> str:
    """Move a result file out of its call folder, so it survives the call's cleanup."""
    call_folder = os.path.dirname(path)
    target = os.path.join(os.path.dirname(call_folder), os.path.basename(path))
    os.replace(path, target)
    return target


def _unlink(path: str) -> None:
    # Through FOLDERS: the last file out of a temp_folder's process folder removes it.
    FOLDERS.discard(path)


# --- opening ---------------------------------------------------------------------------------


class SharedFileChangedError(RuntimeError):
    """The file behind a shared array was removed, replaced or cut short after it was sent."""


def _check_file(ref: Reference) -> os.stat_result:
    """Raise if ``ref.path`` is no longer the file the sender referred to; its stat.

    What is checked, and why (a 1 GiB file cannot be hashed per task):

    - another inode at the path (a cache entry replaced: cleared and recomputed, or
      published again by another process), or no file: the sender's array maps the old
      inode, so mapping the path would compute on other bytes, or fail later with a
      bare FileNotFoundError.  An error naming the file instead;
    - a file now shorter than the array's extent: mapping it would crash the process
      (SIGBUS) on the first access past the end.  An error;
    - same inode, other size or mtime: the file was modified in place.  The sender's
      mapping shares that inode, so the worker sees exactly the bytes the sender sees
      now, as a thread would: that is correct for a user's memmap written on purpose
      (mode 'r+', or another process filling it).  Only the digest claim is stale: the
      array is then hashed by content.  (mtime has the kernel's clock-tick granularity,
      and writes through a mapping of a tmpfs file may not update it: such changes
      keep the digest, as they would in the sender.)
    """
    try:
        st = os.stat(ref.path)
    except FileNotFoundError:
        raise SharedFileChangedError(
            f"{ref.path}: the file behind a shared array was removed after the call sent "
            "it (a cache entry cleared, or the file deleted, while Parallel ran)"
        ) from None
    if ref.stamp is None:
        return st
    if (st.st_dev, st.st_ino) != ref.stamp[:2]:
        raise SharedFileChangedError(
            f"{ref.path}: the file behind a shared array was replaced by another file after "
            "the call sent it (a cache entry cleared and recomputed, or written again, while "
            "Parallel ran): its bytes are no longer those of the caller's array"
        )
    if st.st_size < ref.offset + ref.span:
        raise SharedFileChangedError(
            f"{ref.path}: the file behind a shared array was cut to {st.st_size} bytes after "
            f"the call sent it; the array needs {ref.offset + ref.span}"
        )
    return st


def open_reference(ref: Reference) -> np.ndarray:
    """The array ``ref`` points to: an ``np.memmap`` (or an in-memory copy if mode is None).

    Raises
    ------
    SharedFileChangedError
        If the file was removed, replaced or truncated since the reference was made.
    """
    st = _check_file(ref)
    unchanged = ref.stamp is None or stamp_of(st) == ref.stamp
    path = _adopt(ref.path) if ref.adopt else ref.path
    mode = ref.mode or "r"
    if ref.strides is None:
        arr = np.memmap(
            path, dtype=ref.dtype, mode=mode, offset=ref.offset, shape=ref.shape, order=ref.order
        )
    else:
        raw = np.memmap(path, dtype=np.uint8, mode=mode, offset=ref.offset, shape=(ref.span,))
        arr = np.ndarray.__new__(
            np.memmap, ref.shape, ref.dtype, buffer=raw, offset=ref.start, strides=ref.strides
        )
        arr._mmap, arr.filename, arr.offset, arr.mode = raw._mmap, raw.filename, ref.offset, mode
    if ref.mode is None:
        copy = np.array(arr, order="K")
        del arr
        if ref.adopt:
            _unlink(path)
        return copy
    remember_mapping(arr, st)  # rename (adopt) keeps the inode and its stat
    if ref.adopt:
        # The file lives as long as the returned array (and its views).
        weakref.finalize(arr, _unlink, path)
    if ref.digest is not None and unchanged and not arr.flags.writeable and ref.strides is None:
        remember_digest(arr, ref.digest)
    return arr
