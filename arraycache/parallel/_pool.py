"""The sharing pool: copies of in-memory arrays written for workers, and how long they stay.

An array above ``max_nbytes`` that does not already live in a file is written once,
named by its content digest, into this process's folder (see ``_folders``), and the
workers map that file.  Keeping the copy after the call lets a later call with the
same array skip the write (the common loop: a grid search, calls in a notebook), but
the copy is RAM when it is in ``/dev/shm``.  What stays, and why, is ``_pinned``'s rule
(pinned while a call uses it, then kept for the array that owns the data, one copy per
owner, under a bound, least recently used first).  The bound, ``max_shared_bytes``:
the default, ``'auto'``, is a quarter of the memory that would be available without the
pool (``psutil.virtual_memory().available`` plus the pool's bytes in ``/dev/shm``),
measured when a copy is added or released; ``0`` keeps nothing after a call (as joblib),
``None`` sets no bound.  Set it with :func:`set_max_shared_bytes` (process wide) or per
call through :class:`~arraycache.parallel._sharing.CallSharing`.

Writes go to ``/dev/shm`` when it has room for the array (memory included), else to
the temporary directory on disk; a root that fails (full, read-only) is skipped.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import psutil

from ._folders import FILE_MODE, FOLDERS, SHM, candidate_roots
from ._pinned import Limit, PinnedCopies

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


class _Pool(PinnedCopies[Copy]):
    """Process-wide: content digest -> :class:`Copy`, in least recently used order."""

    def __init__(self) -> None:
        super().__init__()
        self._shm_bytes = 0

    def acquire(self, digest: str, arr: np.ndarray, temp_folder: str | None,
                limit: Limit) -> Copy:
        """The copy of ``arr`` (digest ``digest``), written if missing, pinned once.

        Raises
        ------
        SharingWriteError
            If no sharing folder takes it (the pool is unchanged).
        """
        # A copy removed or altered by someone else is written again.
        return self._acquire(digest, arr, lambda: self._write(digest, arr, temp_folder, limit),
                             _unchanged)

    def paths(self) -> list[str]:
        """Paths of the copies, least recently used first (for tests and diagnostics)."""
        with self._locked():
            return [copy.path for copy in self._items.values()]

    def pinned_paths(self) -> list[str]:
        """Paths of the copies that running calls use (for tests and diagnostics)."""
        with self._locked():
            return [copy.path for copy in self._items.values() if copy.pins]

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
        self._shm_bytes += copy.nbytes if copy.in_shm else 0
        return copy

    def _dispose(self, copy: Copy) -> None:
        self._shm_bytes -= copy.nbytes if copy.in_shm else 0
        FOLDERS.discard(copy.path)

    def _bound(self, limit: Limit, measure: bool = True) -> int | None:
        if limit != "auto":
            return limit  # type: ignore[return-value]
        try:
            available = psutil.virtual_memory().available
        except Exception:  # no /proc (a locked-down sandbox): keep nothing beyond calls
            return 0
        return int(AUTO_FRACTION * (available + self._shm_bytes))


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
