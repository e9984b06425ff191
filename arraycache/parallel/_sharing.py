"""Arrays sent to workers as references to files instead of bytes.

Two kinds of references, built by :class:`CallSharing` (caller side) and
:func:`result_reference` (worker side), opened by :func:`open_reference`:

- *file-backed*: the array already lives in a file (an ``np.memmap`` in mode
  'r', 'r+' or 'w+', a view of one, or an array over an ``mmap.mmap`` registered
  with :func:`register_mapped_file`, e.g. a cache hit): the reference is (file,
  offset, dtype, shape, strides) and nothing is written;
- *written*: any other array above ``max_nbytes`` is written once into the
  process folder as ``<content digest>.bin``; a later task or call passing an
  array with the same content reuses the file.  A written file lives as long as
  the array object that owns the data it was written from, and at least as long
  as the calls that sent it.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
import threading
import uuid
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..hashing import array_digest, remember_digest, stored_digest
from ._folders import FILE_MODE, FOLDERS, make_private_dir, pick_root

__all__ = [
    "CallSharing",
    "Reference",
    "ResultSpec",
    "file_backing",
    "open_reference",
    "register_mapped_file",
    "result_reference",
]

# Writes go through slices of this many bytes so that a non-contiguous array is never
# copied whole.
_WRITE_CHUNK = 64 << 20


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
    low = high = 0
    for n, stride in zip(arr.shape, arr.strides, strict=True):
        if stride < 0:
            low += stride * (n - 1)
        else:
            high += stride * (n - 1)
    return low, high + arr.itemsize


def file_backing(arr: np.ndarray) -> tuple[str, int, str] | None:
    """(file, file offset of ``arr``'s first element, mode) if ``arr`` lives in a file.

    Copy-on-write maps ('c') do not count: their memory may differ from the file.
    """
    obj: Any = arr
    while isinstance(obj, np.ndarray):
        base = obj.base
        if isinstance(obj, np.memmap) and isinstance(base, mmap.mmap):
            # The np.memmap that made the map: its ``offset`` is the file offset of its
            # first element (views copy ``offset`` unchanged, so they cannot be used).
            if obj.filename is None or obj.mode == "c":
                return None
            mode = "r" if obj.mode == "r" else "r+"
            return os.fspath(obj.filename), obj.offset + _address(arr) - _address(obj), mode
        obj = base
    if isinstance(obj, memoryview):  # np.frombuffer(mm) keeps a memoryview of mm
        obj = obj.obj
    if isinstance(obj, mmap.mmap):
        known = _mapped_files.get(id(obj))
        if known is not None and known[0]() is obj:
            _ref, path, offset, writable = known
            start = _address(np.frombuffer(obj, dtype=np.uint8, count=1))
            return path, offset + _address(arr) - start, "r+" if writable else "r"
    return None


def _data_owner(arr: np.ndarray) -> np.ndarray:
    """The last ndarray of ``arr``'s base chain: whose lifetime bounds the data's."""
    owner = arr
    while isinstance(owner.base, np.ndarray):
        owner = owner.base
    return owner


def _layout(arr: np.ndarray) -> tuple[tuple[int, ...] | None, str]:
    if arr.flags.c_contiguous:
        return None, "C"
    if arr.flags.f_contiguous:
        return None, "F"
    return tuple(arr.strides), "C"


def file_reference(arr: np.ndarray, mmap_mode: str | None) -> Reference | None:
    """Reference to file-backed ``arr``; None if not file-backed or its file is gone."""
    backing = file_backing(arr)
    if backing is None:
        return None
    path, first, mode = backing
    low, high = _extent(arr)
    try:
        if os.path.getsize(path) < first + high:
            return None
    except OSError:
        return None
    strides, order = _layout(arr)
    if mode == "r":
        # Read-only data: the caller's mmap_mode decides ('c' keeps worker writes private).
        mode = "c" if mmap_mode in ("c", "r+", "w+") else ("r" if mmap_mode else None)
    # A writable memmap stays shared for writing, as in joblib: workers can fill it.
    return Reference(
        path, first + low, high - low, -low, arr.dtype, arr.shape, strides, order, mode,
        digest=stored_digest(arr),
    )


# --- writing ---------------------------------------------------------------------------------


def _write_array(arr: np.ndarray, path: str) -> str:
    """Write ``arr``'s elements to ``path`` (0600) in C order, or F if it is F-contiguous."""
    order = "F" if arr.flags.f_contiguous and not arr.flags.c_contiguous else "C"
    flat = arr.T if order == "F" else arr
    tmp = f"{path}.{uuid.uuid4().hex[:8]}.part"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        with open(fd, "wb", closefd=False) as f:
            if flat.flags.c_contiguous:
                f.write(memoryview(flat.reshape(-1).view(np.uint8)))
            else:
                row_nbytes = flat.itemsize * math.prod(flat.shape[1:])
                rows = max(1, _WRITE_CHUNK // max(1, row_nbytes)) if flat.ndim else 1
                for i in range(0, flat.shape[0], rows):
                    slab = np.ascontiguousarray(flat[i : i + rows])
                    f.write(memoryview(slab.reshape(-1).view(np.uint8)))
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    # rename is atomic: a reader never sees a half-written file under the final name.
    os.replace(tmp, path)
    return order


def _written_reference(
    path: str, arr: np.ndarray, order: str, mode: str | None, digest: str
) -> Reference:
    return Reference(path, 0, arr.nbytes, 0, arr.dtype, arr.shape, None, order, mode,
                     digest=digest)


@dataclass
class _Written:
    path: str
    order: str
    owners: dict[int, weakref.ref]
    pins: int = 0


class _Registry:
    """Process-wide: content digest -> file written for it, with its lifetime bookkeeping."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._files: dict[str, _Written] = {}

    def acquire(self, digest: str, arr: np.ndarray, temp_folder: str | None) -> _Written:
        """The file for ``digest`` (written from ``arr`` if missing), pinned once."""
        with self._lock:
            entry = self._files.get(digest)
            if entry is not None and not os.path.exists(entry.path):
                entry = None
            if entry is None:
                folder = FOLDERS.folder(pick_root(arr.nbytes, temp_folder))
                path = os.path.join(folder, f"{digest}.bin")
                order = _write_array(arr, path)
                entry = self._files[digest] = _Written(path, order, {})
            entry.pins += 1
            owner = _data_owner(arr)
            key = id(owner)
            known = entry.owners.get(key)
            if known is None or known() is not owner:
                entry.owners[key] = weakref.ref(
                    owner, lambda _r, d=digest, k=key: self._owner_gone(d, k)
                )
            return entry

    def release(self, digest: str) -> None:
        """Undo one :meth:`acquire` pin."""
        with self._lock:
            entry = self._files.get(digest)
            if entry is not None:
                entry.pins -= 1
                self._maybe_remove(digest, entry)

    def _owner_gone(self, digest: str, key: int) -> None:
        with self._lock:
            entry = self._files.get(digest)
            if entry is not None:
                entry.owners.pop(key, None)
                self._maybe_remove(digest, entry)

    def _maybe_remove(self, digest: str, entry: _Written) -> None:
        if entry.pins <= 0 and not entry.owners:
            del self._files[digest]
            with contextlib.suppress(OSError):
                os.unlink(entry.path)

    def paths(self) -> list[str]:
        """Paths of the files currently written (for tests and diagnostics)."""
        with self._lock:
            return [entry.path for entry in self._files.values()]


REGISTRY = _Registry()


class CallSharing:
    """Turns the arrays of one ``Parallel`` call into references (caller side).

    Within a call an array object is hashed once (later tasks reuse the reference);
    across calls it is hashed again, since a writable array may have changed.
    """

    def __init__(self, max_nbytes: int | None, mmap_mode: str | None, temp_folder: str | None):
        self.max_nbytes = max_nbytes
        self.mmap_mode = mmap_mode
        self.temp_folder = temp_folder
        self._memo: dict[int, tuple[weakref.ref, Reference | None]] = {}
        self._pinned: list[str] = []
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

    def _write(self, arr: np.ndarray) -> Reference:
        digest = array_digest(arr)
        entry = REGISTRY.acquire(digest, arr, self.temp_folder)
        with self._lock:
            self._pinned.append(digest)
        # Written copies are shared by every task and later calls: workers may not write
        # to them, so writable modes become copy-on-write.
        mode = {"r": "r", None: None}.get(self.mmap_mode, "c")
        return _written_reference(entry.path, arr, entry.order, mode, digest)

    def close(self) -> None:
        """Release the files this call pinned (they stay while their arrays live)."""
        with self._lock:
            pinned, self._pinned = self._pinned, []
        for digest in pinned:
            REGISTRY.release(digest)
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


def result_reference(arr: np.ndarray, spec: ResultSpec) -> Reference | None:
    """Reference for a worker result ``arr`` (worker side), or None to pickle it as bytes.

    The file goes under /dev/shm when it has room, else the temp dir (or ``temp_folder``).
    """
    if arr.dtype.hasobject or arr.size == 0:
        return None
    mode = "r+" if spec.mode == "w+" else spec.mode
    ref = file_reference(arr, mode)
    if ref is not None:
        return ref
    if spec.max_nbytes is None or arr.nbytes <= spec.max_nbytes:
        return None
    root = pick_root(arr.nbytes, spec.temp_folder)
    # The worker's temp dir is the caller's (inherited environment); fall back anyway.
    call_folder = spec.call_folders.get(root) or next(iter(spec.call_folders.values()))
    make_private_dir(os.path.dirname(call_folder))
    make_private_dir(call_folder)
    path = os.path.join(call_folder, f"result-{uuid.uuid4().hex}.bin")
    order = _write_array(arr, path)
    return Reference(path, 0, arr.nbytes, 0, arr.dtype, arr.shape, None, order, mode, True)


def _adopt(path: str) -> str:
    """Move a result file out of its call folder, so it survives the call's cleanup."""
    call_folder = os.path.dirname(path)
    target = os.path.join(os.path.dirname(call_folder), os.path.basename(path))
    os.replace(path, target)
    return target


def _unlink(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


# --- opening ---------------------------------------------------------------------------------


def open_reference(ref: Reference) -> np.ndarray:
    """The array ``ref`` points to: an ``np.memmap`` (or an in-memory copy if mode is None)."""
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
    if ref.adopt:
        # The file lives as long as the returned array (and its views).
        weakref.finalize(arr, _unlink, path)
    if ref.digest is not None and not arr.flags.writeable and ref.strides is None:
        remember_digest(arr, ref.digest)
    return arr
