"""Private sharing folders: where arrays sent to or returned by workers are written.

Lifetime (the choice, and why):

- One *process folder* per filesystem root (``/dev/shm``, the temp dir, or a
  ``temp_folder``), named ``arraycache-<pid>-<random>``, created on first use and
  removed at interpreter exit (``atexit`` and ``weakref.finalize``).  It must
  outlive a single ``Parallel`` call, because an array written for one call is
  reused by later calls (files are named by content digest).  Inside it, each
  written file lives only as long as the array it was written from (see
  ``_sharing``), so the folder does not grow without bound.
- One *call folder* per call and root, ``<process folder>/call-<random>``, where
  workers write large results; it is removed when the call ends (success, error,
  interrupt, generator closed or collected).  Results handed to the caller are
  first moved out of it, and live as long as the returned array.
- Folders of processes that no longer exist (``kill -9``, a crash) are removed the
  next time a process creates its own.

Folders are 0700 and files 0600: other users cannot read what tasks receive.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import tempfile
import threading
import uuid
import weakref

import psutil

__all__ = ["ProcessFolders", "make_private_dir", "pick_root", "remove_stale_folders"]

FOLDER_MODE = 0o700
FILE_MODE = 0o600
PREFIX = "arraycache-"
_NAME = re.compile(rf"^{PREFIX}(\d+)-[0-9a-f]+$")
SHM = "/dev/shm"
# /dev/shm is RAM: leave this much free beside the array so the machine keeps breathing.
_SHM_MARGIN = 256 << 20


def shm_root() -> str | None:
    """``/dev/shm`` if it is a usable directory here, else None."""
    if os.path.isdir(SHM) and os.access(SHM, os.W_OK | os.X_OK):
        return SHM
    return None


def has_room(root: str, nbytes: int) -> bool:
    """True if the filesystem of ``root`` has room for ``nbytes`` and a safety margin."""
    try:
        free = psutil.disk_usage(root).free
    except OSError:
        return False
    return free >= nbytes + max(_SHM_MARGIN, nbytes // 10)


def pick_root(nbytes: int, temp_folder: str | None) -> str:
    """Root to write an array of ``nbytes`` into: ``temp_folder``, else shm if it has room."""
    if temp_folder is not None:
        return os.path.abspath(temp_folder)
    shm = shm_root()
    if shm is not None and has_room(shm, nbytes):
        return shm
    return tempfile.gettempdir()


def make_private_dir(path: str) -> str:
    """Create ``path`` (and missing parents) with mode 0700; return it."""
    with contextlib.suppress(FileExistsError):
        os.makedirs(path, mode=FOLDER_MODE)
    # makedirs' mode is filtered by the umask; set it exactly.
    os.chmod(path, FOLDER_MODE)
    return path


def _owner_gone(pid: int, folder: str) -> bool:
    if pid == os.getpid():
        return False
    try:
        process = psutil.Process(pid)
        # A pid reused by a process started after the folder was made is not the owner.
        return process.create_time() > os.stat(folder).st_mtime + 1.0
    except psutil.NoSuchProcess:
        return True
    except (psutil.Error, OSError):
        return False


def remove_stale_folders(root: str) -> list[str]:
    """Remove ``arraycache-<pid>-*`` folders in ``root`` whose process is gone."""
    removed = []
    try:
        names = os.listdir(root)
    except OSError:
        return removed
    for name in names:
        match = _NAME.match(name)
        if match is None:
            continue
        path = os.path.join(root, name)
        if _owner_gone(int(match.group(1)), path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _remove_all(paths: dict[str, str]) -> None:
    # Only the process that made the folders removes them (a forked child inherits
    # the dict and the atexit hook).
    for path in list(paths.values()):
        match = _NAME.match(os.path.basename(path))
        if match is not None and int(match.group(1)) == os.getpid():
            shutil.rmtree(path, ignore_errors=True)
    paths.clear()


class ProcessFolders:
    """The process folders of this process, one per root, created on demand."""

    def __init__(self) -> None:
        self._paths: dict[str, str] = {}
        self._lock = threading.Lock()
        self._cleaned: set[str] = set()
        self._finalizer = weakref.finalize(self, _remove_all, self._paths)
        atexit.register(self._finalizer)

    def folder(self, root: str) -> str:
        """The process folder under ``root``, made (0700) on first use."""
        return make_private_dir(self.reserve(root))

    def reserve(self, root: str) -> str:
        """The process folder under ``root``, named now, made later by whoever writes first."""
        with self._lock:
            path = self._paths.get(root)
            if path is None:
                if root not in self._cleaned:
                    self._cleaned.add(root)
                    remove_stale_folders(root)
                path = os.path.join(root, f"{PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}")
                self._paths[root] = path
            return path

    def existing(self) -> list[str]:
        """Process folders made so far."""
        return list(self._paths.values())

    def remove(self) -> None:
        """Remove every process folder now (files in use stay mapped until unmapped)."""
        with self._lock:
            _remove_all(self._paths)


def call_folder_name() -> str:
    """A fresh name for a call folder inside a process folder."""
    return f"call-{uuid.uuid4().hex[:12]}"


#: The folders of this process.
FOLDERS = ProcessFolders()
