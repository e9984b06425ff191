"""Private sharing folders: where arrays sent to or returned by workers are written.

Lifetime (the choice, and why):

- One *process folder* per filesystem root (``/dev/shm``, the temp dir, or a
  ``temp_folder``), named ``arraycache-<pid>-<random>``, created when a call first
  needs that root.  It outlives a single ``Parallel`` call, because an array written
  for one call is reused by later calls (files are named by content digest); what it
  keeps is bounded by ``_pool``.  In ``/dev/shm`` and the temp dir it stays until
  interpreter exit (``atexit`` and ``weakref.finalize``), ready for the next call.
  Under a ``temp_folder`` given by the user it goes (with its lock file) as soon as
  nothing uses it: no call has it reserved (:meth:`ProcessFolders.reserve` /
  :meth:`~ProcessFolders.release`) and no file is left in it (files are removed
  through :meth:`~ProcessFolders.discard`, which removes the folder after the last
  one), as joblib leaves nothing in a ``temp_folder`` after a call.
- One *call folder* per call and root, ``<process folder>/call-<random>``, where
  workers write large results; it is removed when the call ends (success, error,
  interrupt, generator closed or collected).  Results handed to the caller are
  first moved out of it, and live as long as the returned array.
- Beside each process folder, ``arraycache-<pid>-<random>.lock`` is held with
  ``flock`` by its owner for its whole life.  Folders whose lock nobody holds (the
  kernel drops a lock when its holder dies: ``kill -9``, a crash) are removed the
  next time a process creates its own.  The pid in the name is only for people:
  a pid says nothing about a process of another PID namespace sharing the same
  ``/dev/shm`` or temp dir (containers run with ``--ipc=host``, pods, NFS), and it
  can be reused; a lock is proof.

Folders are 0700 and files 0600: other users cannot read what tasks receive.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import os
import re
import shutil
import tempfile
import threading
import uuid
import weakref
from collections.abc import Iterator

import psutil

from ..liveness import (
    LOCK_SUFFIX,
    NO_LOCKS,
    hold_lock,
    remove_interrupted_lock,
    take_abandoned_lock,
)
from ._interrupts import sigint_deferred

__all__ = [
    "ProcessFolders",
    "candidate_roots",
    "make_private_dir",
    "pick_root",
    "remove_stale_folders",
]

FOLDER_MODE = 0o700
FILE_MODE = 0o600
PREFIX = "arraycache-"
_NAME = re.compile(rf"^{PREFIX}(\d+)-[0-9a-f]+$")
_LOCK_NAME = re.compile(rf"^({PREFIX}\d+-[0-9a-f]+){re.escape(LOCK_SUFFIX)}$")
# A lock file being created (see hold_lock); left behind only by a crash in that instant.
_NEW_LOCK = re.compile(rf"^\.{PREFIX}\d+-[0-9a-f]+{re.escape(LOCK_SUFFIX)}\.[0-9a-f]+$")
# flock errors meaning "this file system has no locks", not "this folder is unusable".
SHM = "/dev/shm"
# /dev/shm is RAM: leave this much free beside the array so the machine keeps breathing.
_SHM_MARGIN = 256 << 20


def shm_root() -> str | None:
    """``/dev/shm`` if it is a usable directory here, else None."""
    if os.path.isdir(SHM) and os.access(SHM, os.W_OK | os.X_OK):
        return SHM
    return None


def has_room(root: str, nbytes: int) -> bool:
    """True if the filesystem of ``root`` has room for ``nbytes`` and a safety margin.

    For ``/dev/shm`` the room is also bounded by the memory available: its size limit
    (half the RAM by default) is no promise that the RAM is free.
    """
    try:
        free = psutil.disk_usage(root).free
        if root == SHM:
            free = min(free, psutil.virtual_memory().available)
    except OSError:
        return False
    return free >= nbytes + max(_SHM_MARGIN, nbytes // 10)


def candidate_roots(nbytes: int, temp_folder: str | None) -> list[str]:
    """Roots to try, in order, for writing ``nbytes``.

    ``temp_folder`` alone if given (the user chose it); else ``/dev/shm`` when it has
    room, then the temporary directory on disk.
    """
    if temp_folder is not None:
        return [os.path.abspath(temp_folder)]
    roots = []
    shm = shm_root()
    if shm is not None and has_room(shm, nbytes):
        roots.append(shm)
    roots.append(tempfile.gettempdir())
    return roots


def pick_root(nbytes: int, temp_folder: str | None) -> str:
    """Root to write an array of ``nbytes`` into: ``temp_folder``, else shm if it has room."""
    return candidate_roots(nbytes, temp_folder)[0]


def make_private_dir(path: str) -> str:
    """Create ``path`` (and missing parents) with mode 0700; return it."""
    with contextlib.suppress(FileExistsError):
        os.makedirs(path, mode=FOLDER_MODE)
    # makedirs' mode is filtered by the umask; set it exactly.
    os.chmod(path, FOLDER_MODE)
    return path


def remove_stale_folders(root: str) -> list[str]:
    """Remove the process folders in ``root`` whose owner no longer holds their lock.

    A folder without a lock file beside it is kept: nothing proves its owner is gone
    (it was made by an older version, or its lock file was removed by hand).

    Returns
    -------
    list of str
        The folders removed (whether or not the folder itself still existed).
    """
    removed: list[str] = []
    try:
        names = os.listdir(root)
    except OSError:
        return removed
    for name in names:
        match = _LOCK_NAME.match(name)
        if match is not None:
            lock = os.path.join(root, name)
            fd = take_abandoned_lock(lock)
            if fd is None:
                continue
            folder = os.path.join(root, match.group(1))
            try:
                shutil.rmtree(folder, ignore_errors=True)
                # The lock goes last: while it exists, the folder is not orphaned.
                with contextlib.suppress(OSError):
                    os.unlink(lock)
            finally:
                os.close(fd)
            removed.append(folder)
        elif _NEW_LOCK.match(name):
            remove_interrupted_lock(os.path.join(root, name))
    return removed


# --- this process's folders --------------------------------------------------------------------


def _remove_all(paths: dict[str, str], locks: dict[str, int]) -> None:
    # Only the process that made the folders removes them (a forked child inherits the
    # dicts, the lock fds and the atexit hook).  Its lock fds are closed, never unlocked:
    # LOCK_UN from a fork child would release the parent's lock too.
    for root, path in list(paths.items()):
        match = _NAME.match(os.path.basename(path))
        if match is None or int(match.group(1)) != os.getpid():
            continue
        shutil.rmtree(path, ignore_errors=True)
        fd = locks.pop(root, None)
        if fd is not None and fd >= 0:
            with contextlib.suppress(OSError):
                os.unlink(path + LOCK_SUFFIX)
            with contextlib.suppress(OSError):
                os.close(fd)
    paths.clear()
    locks.clear()


def _remove_at_exit(paths: dict[str, str], locks: dict[str, int]) -> None:
    # A second Ctrl-C often arrives while the interpreter exits after the first: it
    # must not leave folders or lock files behind (the exit goes on anyway).
    with sigint_deferred(deliver=False):
        _remove_all(paths, locks)


def _owned(path: str) -> bool:
    """True if the process folder ``path`` was made by this process (not a fork parent)."""
    match = _NAME.match(os.path.basename(path))
    return match is not None and int(match.group(1)) == os.getpid()


def _kept_roots() -> tuple[str, ...]:
    """Roots whose process folder stays between calls (not a user's ``temp_folder``)."""
    return (SHM, tempfile.gettempdir())


class ProcessFolders:
    """The process folders of this process, one per root, created on demand.

    Calls count their uses of a root with :meth:`reserve` and :meth:`release`, and
    remove the files they wrote there with :meth:`discard`: a folder under a user's
    ``temp_folder`` goes when the last use ends.  :meth:`release` and :meth:`discard`
    may run in garbage-collector callbacks (a memmap's finalizer), maybe while this
    thread is inside another method: they never wait for the lock, they leave their
    news for whoever holds it.
    """

    def __init__(self) -> None:
        self._paths: dict[str, str] = {}
        self._locks: dict[str, int] = {}
        self._lock = threading.Lock()
        self._cleaned: set[str] = set()
        # Root -> calls using it now (reserve() minus release()).
        self._users: dict[str, int] = {}
        # ("release", root) or ("check", folder), applied under the lock.
        self._news: collections.deque[tuple[str, str]] = collections.deque()
        self._finalizer = weakref.finalize(self, _remove_at_exit, self._paths, self._locks)
        atexit.register(self._finalizer)

    # --- locking with news from callbacks ---

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            with self._lock:
                try:
                    yield
                finally:
                    self._apply_news()
        finally:
            # News left, while we held the lock, by a callback that could not take it.
            self._take_news()

    def _take_news(self) -> None:
        while self._news and self._lock.acquire(blocking=False):
            try:
                self._apply_news()
            finally:
                self._lock.release()

    def _apply_news(self) -> None:
        while self._news:
            kind, value = self._news.popleft()
            if kind == "release":
                users = self._users.get(value, 0) - 1
                if users > 0:
                    self._users[value] = users
                    continue
                self._users.pop(value, None)
                self._remove_if_unused(value)
            else:
                for root, path in self._paths.items():
                    if path == value:
                        self._remove_if_unused(root)
                        break

    def _remove_if_unused(self, root: str) -> None:
        """Remove the folder under a user's ``root`` if no call uses it and it is empty."""
        path = self._paths.get(root)
        if path is None or self._users.get(root) or root in _kept_roots() or not _owned(path):
            return
        try:
            os.rmdir(path)  # fails, harmlessly, while a file or call folder is in it
        except FileNotFoundError:
            pass
        except OSError:
            return
        del self._paths[root]
        fd = self._locks.pop(root, None)
        if fd is not None and fd >= 0:
            # The lock goes last: while it exists, the folder is not orphaned.
            with contextlib.suppress(OSError):
                os.unlink(path + LOCK_SUFFIX)
            with contextlib.suppress(OSError):
                os.close(fd)

    # --- public ---

    def folder(self, root: str) -> str:
        """The process folder under ``root``, made (0700, with its held lock) if missing.

        For writing during a call that holds a :meth:`reserve` of ``root``.

        Raises
        ------
        OSError
            If it cannot be made (read-only or full file system, no permission).
        """
        with self._locked():
            path = self._name(root)
            self._make(root, path)
            return path

    def reserve(self, root: str) -> str:
        """Count one more call using ``root``; its process folder, made now if possible.

        Never raises.  Workers create their call folders inside it, so it is made (with
        its lock) here, by its owner: a folder made without a lock could never be
        proven dead.  Each reserve is undone by one :meth:`release` when the call ends
        (one never released keeps a ``temp_folder``'s folder until exit).
        """
        with self._locked():
            self._users[root] = self._users.get(root, 0) + 1
            path = self._name(root)
            with contextlib.suppress(OSError):
                self._make(root, path)
            return path

    def release(self, root: str) -> None:
        """Undo one :meth:`reserve` of ``root`` (its call has ended, files removed)."""
        self._news.append(("release", root))
        self._take_news()

    def discard(self, path: str) -> None:
        """Remove the file ``path`` (missing: fine); then its process folder, if unused."""
        with contextlib.suppress(OSError):
            os.unlink(path)
        self._news.append(("check", os.path.dirname(path)))
        self._take_news()

    def _name(self, root: str) -> str:
        path = self._paths.get(root)
        if path is None:
            if root not in self._cleaned:
                self._cleaned.add(root)
                remove_stale_folders(root)
            path = os.path.join(root, f"{PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}")
            self._paths[root] = path
        return path

    def _make(self, root: str, path: str) -> None:
        if root not in self._locks:
            # The lock first: from the moment the folder exists, it is provably alive.
            try:
                self._locks[root] = hold_lock(path + LOCK_SUFFIX)
            except OSError as exc:
                if exc.errno not in NO_LOCKS:
                    raise
                # A file system without flock (some NFS setups): share anyway, with no
                # lock file; the folder is then never swept by others (it cannot be
                # proven dead), only removed by us when unused or at exit.
                self._locks[root] = -1
        if not os.path.isdir(path):
            make_private_dir(path)

    def existing(self) -> list[str]:
        """Process folders named so far (and not removed since)."""
        return list(self._paths.values())

    def remove(self) -> None:
        """Remove every process folder now (files in use stay mapped until unmapped)."""
        with self._locked():
            _remove_all(self._paths, self._locks)

    def remove_root(self, root: str) -> None:
        """Remove the process folder under ``root`` now and let go of its lock file.

        For a ``temp_folder`` that is about to be unmounted; a later call that writes
        there makes a new folder.
        """
        with self._locked():
            paths = {root: self._paths.pop(root)} if root in self._paths else {}
            locks = {root: self._locks.pop(root)} if root in self._locks else {}
            _remove_all(paths, locks)


def call_folder_name() -> str:
    """A fresh name for a call folder inside a process folder."""
    return f"call-{uuid.uuid4().hex[:12]}"


#: The folders of this process.
FOLDERS = ProcessFolders()
