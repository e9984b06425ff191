"""The sharing pool: copies of in-memory arrays written for workers, and how long they stay.

An array above ``max_nbytes`` that does not already live in a file is written once,
named by its content digest, into this process's folder (see ``_folders``), and the
workers map that file.  Keeping the copy after the call lets a later call with the
same array skip the write (the common loop: a grid search, calls in a notebook), but
the copy is RAM when it is in ``/dev/shm``.  What stays, and why:

- while a call that sent a copy runs, the copy stays (it is *pinned*);
- after the calls, a copy stays only for an array that *owns* its data (the base of
  its view chain) and was sent whole (itself, a reshape, a transpose): its *owner*.
  One copy per owner: when the owner is sent again with other content (updated in
  place), the new copy replaces the old one as soon as no running call uses it.
  Copies of partial views (windows, slices) last only for their call: a long-lived
  base with many windows would otherwise keep one copy per window;
- the copy goes when its owner is collected;
- all copies together stay under a bound, ``max_shared_bytes``: least recently used
  copies not pinned by a running call are dropped first.  The default, ``'auto'``,
  is a quarter of the memory that would be available without the pool
  (``psutil.virtual_memory().available`` plus the pool's bytes in ``/dev/shm``),
  measured when a copy is added or released; ``0`` keeps nothing after a call (as
  joblib), ``None`` sets no bound.  Set it with :func:`set_max_shared_bytes` (process
  wide) or per call through :class:`~arraycache.parallel._sharing.CallSharing`.

Writes go to ``/dev/shm`` when it has room for the array (memory included), else to
the temporary directory on disk; a root that fails (full, read-only) is skipped.
"""

from __future__ import annotations

import collections
import contextlib
import math
import numbers
import os
import threading
import uuid
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import psutil

from ._folders import FILE_MODE, FOLDERS, SHM, candidate_roots

__all__ = [
    "AUTO_FRACTION",
    "POOL",
    "SharingWriteError",
    "get_max_shared_bytes",
    "set_max_shared_bytes",
    "write_array",
    "write_first",
]

#: Share of the memory available without the pool that ``'auto'`` lets the pool keep.
AUTO_FRACTION = 0.25

Limit = int | str | None

_max_shared_bytes: list[Limit] = ["auto"]

# Writes go through slices of this many bytes so that a non-contiguous array is never
# copied whole.
_WRITE_CHUNK = 64 << 20


def check_limit(value: Limit) -> Limit:
    """``value`` if it is a valid ``max_shared_bytes``, else ValueError."""
    if value is None or value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(
            f"max_shared_bytes must be 'auto', None or a number of bytes >= 0, not {value!r}"
        )
    return int(value)


def set_max_shared_bytes(value: Limit) -> Limit:
    """Set the process-wide bound on the pool of written copies; return the previous one.

    Parameters
    ----------
    value : int, 'auto' or None
        Bytes kept at most (``0``: nothing is kept after a call), ``'auto'`` (a quarter
        of the memory available without the pool) or None (no bound).
    """
    previous = _max_shared_bytes[0]
    _max_shared_bytes[0] = check_limit(value)
    return previous


def get_max_shared_bytes() -> Limit:
    """The process-wide bound set by :func:`set_max_shared_bytes` (default ``'auto'``)."""
    return _max_shared_bytes[0]


# --- writing ---------------------------------------------------------------------------------


class SharingWriteError(OSError):
    """An array could not be written into any sharing folder (full, read-only, ...)."""


def write_array(arr: np.ndarray, path: str) -> str:
    """Write ``arr``'s elements to ``path`` (0600) in C order, or F if it is F-contiguous.

    Nothing is left at ``path`` (nor beside it) if the write fails.
    """
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
        os.close(fd)
        fd = -1
        # rename is atomic: a reader never sees a half-written file under the final name.
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return order


def write_first(
    arr: np.ndarray, name: str, folders: Iterable[tuple[str, Callable[[], str]]]
) -> tuple[str, str, str]:
    """Write ``arr`` as ``name`` into the first folder that takes it.

    ``folders`` yields (root, function making the folder); a folder that cannot be made
    or written (full, read-only, quota) is skipped.

    Returns
    -------
    (path, order, root)

    Raises
    ------
    SharingWriteError
        Naming every folder tried and its error, if none took the array.
    """
    failures = []
    for root, make in folders:
        try:
            folder = make()
            path = os.path.join(folder, name)
            return path, write_array(arr, path), root
        except OSError as exc:
            failures.append(f"{root}: {exc.strerror or exc}")
    raise SharingWriteError(
        f"cannot write a {_size(arr.nbytes)} array into the sharing folder "
        + "; nor ".join(failures)
    )


def _size(nbytes: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} bytes"


# --- the pool --------------------------------------------------------------------------------


@dataclass(eq=False)
class Copy:
    """One written copy, named by the digest of the content it holds."""

    digest: str
    path: str
    order: str
    nbytes: int
    in_shm: bool
    stamp: tuple[int, int, int, int]
    """(st_dev, st_ino, st_size, st_mtime_ns) right after writing."""
    pins: int = 0
    """Running calls (one per array object of a call) that sent it."""
    owners: set[int] = field(default_factory=set)
    """Owner keys (see ``_Pool._owners``) whose current copy this is."""


def byte_extent(arr: np.ndarray) -> tuple[int, int]:
    """(lowest, highest + 1) address ``arr`` touches."""
    low = high = arr.__array_interface__["data"][0]
    for n, stride in zip(arr.shape, arr.strides, strict=True):
        if stride < 0:
            low += stride * (n - 1)
        else:
            high += stride * (n - 1)
    return low, high + arr.itemsize


def owner_of(arr: np.ndarray) -> np.ndarray | None:
    """The array that owns ``arr``'s data if ``arr`` covers all of it, else None."""
    owner = arr
    while isinstance(owner.base, np.ndarray):
        owner = owner.base
    if owner is arr:
        return owner
    if arr.nbytes == owner.nbytes and byte_extent(arr) == byte_extent(owner):
        return owner
    return None


class _Pool:
    """Process-wide: content digest -> :class:`Copy`, in least recently used order."""

    def __init__(self) -> None:
        # Not reentrant on purpose: weakref callbacks (run by the garbage collector at any
        # allocation, maybe inside a method below) only queue their news, which the lock
        # holder applies before releasing; the pool never changes under a method's feet.
        self._lock = threading.Lock()
        self._copies: collections.OrderedDict[str, Copy] = collections.OrderedDict()
        # id(owner) -> (weak reference to the owner, digest of its current copy)
        self._owners: dict[int, tuple[weakref.ref, str]] = {}
        self._gone: collections.deque[tuple[int, weakref.ref]] = collections.deque()
        self._bytes = 0
        self._shm_bytes = 0

    # --- locking with deferred owner deaths ---

    @contextlib.contextmanager
    def _locked(self):
        with self._lock:
            yield
            self._apply_gone()

    def _owner_died(self, ref: weakref.ref, key: int) -> None:
        self._gone.append((key, ref))
        if self._lock.acquire(blocking=False):
            try:
                self._apply_gone()
            finally:
                self._lock.release()

    def _apply_gone(self) -> None:
        while self._gone:
            key, ref = self._gone.popleft()
            known = self._owners.get(key)
            if known is None or known[0] is not ref:
                continue  # the id was reused by a newer owner
            del self._owners[key]
            copy = self._copies.get(known[1])
            if copy is not None:
                copy.owners.discard(key)
                self._drop_if_unused(copy)

    # --- public ---

    def acquire(self, digest: str, arr: np.ndarray, temp_folder: str | None,
                limit: Limit) -> Copy:
        """The copy of ``arr`` (digest ``digest``), written if missing, pinned once.

        Raises
        ------
        SharingWriteError
            If no sharing folder takes it (the pool is unchanged).
        """
        with self._locked():
            copy = self._copies.get(digest)
            if copy is not None and not _unchanged(copy):
                # Removed or altered by someone else: drop it and write it again (calls
                # that pinned it release the old object, harmlessly).
                self._delete(copy)
                copy = None
            owner = owner_of(arr)
            if copy is None:
                if owner is not None:
                    # An array updated in place: its previous copy goes before the new
                    # one is written, not after (one copy per array, not two, at peak).
                    self._drop_previous(owner, digest)
                copy = self._write(digest, arr, temp_folder, limit)
            else:
                self._copies.move_to_end(digest)
            copy.pins += 1
            if owner is not None:
                self._retain(owner, copy)
            return copy

    def release(self, copies: Iterable[Copy], limit: Limit) -> None:
        """Undo one :meth:`acquire` pin per copy, then apply ``limit``."""
        with self._locked():
            for copy in copies:
                copy.pins -= 1
                self._drop_if_unused(copy)
            self._shrink(limit)

    def paths(self) -> list[str]:
        """Paths of the copies, least recently used first (for tests and diagnostics)."""
        with self._locked():
            return [copy.path for copy in self._copies.values()]

    def nbytes(self) -> int:
        """Bytes of all copies."""
        return self._bytes

    # --- inside the lock ---

    def _write(self, digest: str, arr: np.ndarray, temp_folder: str | None,
               limit: Limit) -> Copy:
        # Make room first: dropping old copies may also free /dev/shm for this one.
        self._shrink(limit, incoming=arr.nbytes)
        roots = candidate_roots(arr.nbytes, temp_folder)
        path, order, root = write_first(
            arr, f"{digest}.bin", [(r, lambda r=r: FOLDERS.folder(r)) for r in roots]
        )
        copy = Copy(digest, path, order, arr.nbytes, root == SHM, _stat(path))
        self._copies[digest] = copy
        self._bytes += copy.nbytes
        self._shm_bytes += copy.nbytes if copy.in_shm else 0
        return copy

    def _retain(self, owner: np.ndarray, copy: Copy) -> None:
        key = id(owner)
        ref = None
        known = self._owners.get(key)
        if known is not None:
            ref, previous = known
            if ref() is not owner:
                ref = None  # a dead owner whose id was reused; its death is still queued
            old = self._copies.get(previous)
            if old is not None and old is not copy:
                # The owner's content changed: its old copy goes once no call uses it.
                old.owners.discard(key)
                self._drop_if_unused(old)
        if ref is None:
            ref = weakref.ref(owner, lambda r, key=key: self._owner_died(r, key))
        self._owners[key] = (ref, copy.digest)
        copy.owners.add(key)

    def _drop_previous(self, owner: np.ndarray, digest: str) -> None:
        known = self._owners.get(id(owner))
        if known is None or known[0]() is not owner or known[1] == digest:
            return
        old = self._copies.get(known[1])
        if old is not None:
            old.owners.discard(id(owner))
            self._drop_if_unused(old)

    def _drop_if_unused(self, copy: Copy) -> None:
        if copy.pins <= 0 and not copy.owners:
            self._delete(copy)

    def _delete(self, copy: Copy) -> None:
        if self._copies.get(copy.digest) is not copy:
            return  # already dropped
        del self._copies[copy.digest]
        self._bytes -= copy.nbytes
        self._shm_bytes -= copy.nbytes if copy.in_shm else 0
        for key in copy.owners:
            known = self._owners.get(key)
            if known is not None and known[1] == copy.digest:
                del self._owners[key]
        copy.owners.clear()
        FOLDERS.discard(copy.path)

    def _bound(self, limit: Limit) -> int | None:
        if limit != "auto":
            return limit  # type: ignore[return-value]
        try:
            available = psutil.virtual_memory().available
        except Exception:  # no /proc (a locked-down sandbox): keep nothing beyond calls
            return 0
        return int(AUTO_FRACTION * (available + self._shm_bytes))

    def _shrink(self, limit: Limit, incoming: int = 0) -> None:
        """Drop unpinned copies, least recently used first, until ``incoming`` more fits."""
        if limit is None or not self._copies:
            return
        bound = self._bound(limit)
        if bound is None or self._bytes + incoming <= bound:
            return
        for copy in list(self._copies.values()):
            if self._bytes + incoming <= bound:
                break
            if copy.pins <= 0:
                self._delete(copy)


def _stat(path: str) -> tuple[int, int, int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _unchanged(copy: Copy) -> bool:
    try:
        return _stat(copy.path) == copy.stamp
    except OSError:
        return False


#: The pool of this process.
POOL = _Pool()
