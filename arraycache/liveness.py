"""Proof that whoever made a temporary file or folder is gone: lock files held with flock.

A process that makes something others may sweep (a sharing folder, an entry being
written) holds an exclusive ``flock`` on a lock file beside it for as long as it needs
it.  The kernel drops the lock when the process dies, however it dies, so a sweeper that
can take the lock knows the owner is gone.  A pid in a name proves nothing: it may belong
to another PID namespace sharing the folder (containers with ``--ipc=host``, pods, NFS)
or have been reused.  Without a lock file (made by an older version, or on a file system
without ``flock``) only age can tell, so such things are swept only when old.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import time
import uuid
from pathlib import Path

__all__ = [
    "LOCK_SUFFIX",
    "OWNED",
    "OwnedFolders",
    "hold_lock",
    "remove_if_abandoned",
    "remove_interrupted_lock",
    "take_abandoned_lock",
]

LOCK_SUFFIX = ".lock"
FILE_MODE = 0o600
#: errnos of file systems that cannot lock (NFS without lockd, some FUSE mounts).
NO_LOCKS = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL})
#: Seconds after which an unlocked lock file still being created is taken as a crash's.
NEW_LOCK_MIN_AGE = 3600.0


def hold_lock(path: str | os.PathLike) -> int:
    """Create the lock file ``path``, held (``flock`` LOCK_EX) by this process; return its fd.

    Keep the fd open for as long as the thing the lock stands for lives: the kernel
    releases the lock when the process dies, however it dies.  The file is created
    under a temporary name (``.<name>.<random>``) and renamed once locked, so nobody can
    ever find ``path`` unlocked while its owner lives (a sweeper would take it for a dead
    one's).  The fd is not inherited across ``exec`` (workers do not keep it alive); a
    ``fork`` child shares it, and then the lock lives as long as either process.

    Raises
    ------
    OSError
        If the file cannot be created or locked (read-only or full file system, no
        permission, a file system without locks: errno in :data:`NO_LOCKS`).
    """
    folder, name = os.path.split(os.fspath(path))
    tmp = os.path.join(folder, f".{name}.{uuid.uuid4().hex[:8]}")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    try:
        # A file nobody else has opened yet: this cannot block.
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(tmp, path)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return fd


def take_abandoned_lock(path: str | os.PathLike) -> int | None:
    """The fd of lock file ``path``, now held by us, if its owner is gone; else None.

    None also when the file is missing or cannot be opened: only a lock we can take
    proves that nobody holds it.  Close the fd once done with what it guarded.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def is_new_lock(name: str) -> bool:
    """Whether ``name`` is a lock file that :func:`hold_lock` is still creating."""
    return name.startswith(".") and LOCK_SUFFIX + "." in name


def remove_interrupted_lock(path: str | os.PathLike, min_age: float = NEW_LOCK_MIN_AGE) -> bool:
    """Remove a lock file left half-created by :func:`hold_lock`; return whether removed.

    :func:`hold_lock` locks its temporary file right after creating it: a file that is
    old and unlocked was left by a process that died in between.
    """
    fd = take_abandoned_lock(path)
    if fd is None:
        return False
    try:
        if time.time() - os.fstat(fd).st_mtime <= min_age:
            return False
        with contextlib.suppress(OSError):
            os.unlink(path)
        return True
    finally:
        os.close(fd)


# --- temporary folders owned by a writer -------------------------------------------------------


def lock_of(path: Path) -> Path:
    """The lock file standing for the folder ``path``."""
    return path.with_name(path.name + LOCK_SUFFIX)


class OwnedFolders:
    """Temporary folders this process made, each with a lock file beside it that it holds.

    One registry per process (:data:`OWNED`), shared by threads: a writer makes a folder
    with :meth:`make` and, once the folder is renamed into place, calls :meth:`release`
    (or :meth:`remove` to drop it).  Sweepers call :func:`remove_if_abandoned`.
    """

    def __init__(self) -> None:
        self._fds: dict[Path, int | None] = {}

    def make(self, path: Path) -> Path:
        """Create the folder ``path`` and hold its lock; return ``path``.

        The lock comes first, so the folder never exists without a live owner's lock.
        On a file system without locks the folder is made without one (sweepers then go
        by age alone).

        Raises
        ------
        OSError
            If the folder or its lock file cannot be created.
        """
        try:
            fd: int | None = hold_lock(lock_of(path))
        except OSError as exc:
            if exc.errno not in NO_LOCKS:
                raise
            fd = None
        try:
            path.mkdir()
        except BaseException:
            _unlock(path, fd)
            raise
        self._fds[path] = fd
        return path

    def release(self, path: Path) -> None:
        """Drop the lock of ``path``, once the folder has been renamed or removed."""
        _unlock(path, self._fds.pop(path, None))

    def remove(self, path: Path) -> None:
        """Remove the folder ``path`` and then its lock."""
        shutil.rmtree(path, ignore_errors=True)
        self.release(path)


def _unlock(path: Path, fd: int | None) -> None:
    if fd is None:
        return
    # Unlinked before unlocked: a sweeper never takes a lock file whose owner still runs.
    with contextlib.suppress(OSError):
        os.unlink(lock_of(path))
    os.close(fd)


#: This process's owned temporary folders.
OWNED = OwnedFolders()


def remove_if_abandoned(path: Path, min_age: float) -> bool:
    """Remove the temporary ``path`` (a folder, a file or a lock file) if its owner is gone.

    A folder with a lock file goes when its lock can be taken, whatever its age; a lock
    file goes with its folder, or alone once its folder is gone and nobody holds it.
    Anything without a lock goes only when unchanged for ``min_age`` seconds.

    Returns
    -------
    bool
        Whether this call removed it.
    """
    name = path.name
    if is_new_lock(name):
        return remove_interrupted_lock(path, min_age)
    if name.endswith(LOCK_SUFFIX):
        if os.path.lexists(path.with_name(name[: -len(LOCK_SUFFIX)])):
            return False  # swept together with what it stands for
        fd = take_abandoned_lock(path)
        if fd is None:
            return False
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)
        return True
    lock = lock_of(path)
    fd = take_abandoned_lock(lock)
    if fd is None:
        if os.path.lexists(lock):
            return False  # held: its owner is alive
        try:
            if time.time() - path.lstat().st_mtime <= min_age:
                return False
        except OSError:
            return False
        _remove(path)
        return True
    try:
        _remove(path)
        # The lock goes last: while it exists, the folder is not orphaned.
        with contextlib.suppress(OSError):
            os.unlink(lock)
    finally:
        os.close(fd)
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()
