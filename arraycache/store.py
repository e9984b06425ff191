"""Where cache entries live: folders, atomic publish, locks, listing and deletion.

Layout under a location::

    arraycache.json                  format version
    <module>/<qualname>/code.json    source digests seen (for info and eviction)
    <module>/<qualname>/<key>/       one zarr group per entry (see persistence.py)
    <module>/<qualname>/<key>.lock   held while one process computes the entry
    .arraycache/                     bookkeeping shared by processes (see journal.py)

An entry is written into ``<key>.tmp-<pid>-<random>`` beside its final place and
renamed in, so readers see a whole entry or none.  Its writer holds the lock file
``<key>.tmp-<pid>-<random>.lock`` meanwhile (see ``liveness.py``): temporary folders
whose lock nobody holds are removed by :meth:`LocalStore.remove_temporaries`.

:class:`Store` is what ``memorized``, ``memory``, ``eviction`` and the command line
use; :func:`open_store` picks the class from the location: a path (or ``file://``)
is a :class:`LocalStore`, any other fsspec URL a ``remote.RemoteStore``.
"""

from __future__ import annotations

import abc
import contextlib
import fcntl
import functools
import json
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

import psutil

from .journal import FOLDER as _BOOKKEEPING
from .journal import Summary, journal_for
from .liveness import OWNED, remove_if_abandoned

__all__ = [
    "FORMAT_VERSION",
    "EntryInfo",
    "LocalStore",
    "OutdatedEntry",
    "Store",
    "boot_id",
    "is_url",
    "open_store",
]

logger = logging.getLogger("arraycache.store")

#: Version of the on-disk format; entries of another version are not read.  2: exact
#: scalar types, dtype metadata, JSON floats by their bits, boot ids (entries of 1 can
#: hold values that version 2 would not return: they are recomputed).
FORMAT_VERSION = 2


class OutdatedEntry(ValueError):
    """An entry written by an older arraycache: recomputed and replaced, without a warning."""

_META = "zarr.json"
_TMP = ".tmp-"
_TRASH = ".trash-"
_LOCK = ".lock"
_HOST = socket.gethostname()


@dataclass(frozen=True)
class EntryInfo:
    """One published cache entry."""

    path: PurePath
    """The entry's folder (a ``PurePosixPath`` inside the bucket for a remote store)."""
    nbytes: int
    """Bytes on disk."""
    last_access: float
    """Time of the last hit (or of the write), seconds since the epoch."""
    code_digest: str | None
    """Digest of the code of the function that produced it."""
    created: float = 0.0
    """When it was written, seconds since the epoch."""
    hits: int = 0
    """Hits recorded since it was written."""
    duration: float = 0.0
    """Seconds the function took to compute it (saved again at each hit)."""

    @property
    def function(self) -> str:
        """``module/qualname`` folder of its function."""
        return f"{self.path.parent.parent.name}/{self.path.parent.name}"


@functools.lru_cache(maxsize=1)
def boot_id() -> str | None:
    """This boot of the machine (Linux); None where the kernel does not say."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return None


def _write_json(path: Path, obj: Any) -> None:
    # Not fsynced, like the data files (see persistence._write_file): an entry whose
    # metadata a power loss cut short fails to parse and is recomputed.
    with open(path, "w") as f:
        json.dump(obj, f, separators=(",", ":"), allow_nan=True)


def _pid_alive(pid: int) -> bool:
    try:
        return psutil.pid_exists(pid)
    except Exception:
        return True


def temporary(path: Path) -> Path:
    """A fresh name beside ``path`` for writing it: ``<name>.tmp-<pid>-<random>``."""
    return path.with_name(f"{path.name}{_TMP}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _dead_deleter(path: Path, min_age: float) -> bool:
    """Whether a ``<key>.trash-<pid>-<rand>`` folder was left by a dead or stuck process.

    Going by pid is enough here: a live deleter that finds its trash already removed
    (its pid seen from another PID namespace) loses nothing.
    """
    try:
        pid = int(path.name.split(_TRASH, 1)[1].split("-", 1)[0])
    except (IndexError, ValueError):
        return True
    try:
        age = time.time() - path.stat().st_mtime
    except OSError:
        return False
    return not _pid_alive(pid) or age > min_age


class EntryLock:
    """An exclusive ``flock`` on an entry's lock file, released on exit.

    The kernel drops the lock when its holder dies, so a crashed holder never
    blocks anyone; the file also records the holder's pid and host for people.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd

    def release(self) -> None:
        """Remove the lock file, then drop the lock (in this order: see try_lock)."""
        if self.fd < 0:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self.fd)
        self.fd = -1

    def __enter__(self) -> EntryLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_file(path: Path) -> EntryLock | None:
    """Take an exclusive ``flock`` on the file ``path`` (created), or None if held.

    Raises
    ------
    OSError
        If the file cannot be created (e.g. a read-only location).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        # The previous holder unlinks the file before unlocking it: if we locked a
        # file that is no longer at ``path``, start over with the current one.
        try:
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            holder = {"pid": os.getpid(), "host": _HOST, "time": time.time()}
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(holder).encode())
            return EntryLock(path, fd)
        os.close(fd)


@contextlib.contextmanager
def exclusive_lock(folder: Path, name: str) -> Iterator[None]:
    """Hold an exclusive, blocking ``flock`` on ``folder/name`` (nothing if it cannot be
    created: a read-only location, where the work it guards fails anyway)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def is_url(location: str | os.PathLike) -> bool:
    """Whether ``location`` is an fsspec URL other than a local file (``file://``)."""
    if not isinstance(location, str) or ("://" not in location and "::" not in location):
        return False
    protocol = location.split("::", 1)[0].split("://", 1)[0]
    return protocol not in ("file", "local")


def _local_path(location: str | os.PathLike) -> str | os.PathLike:
    if isinstance(location, str):
        for prefix in ("file://", "local://"):
            if location.startswith(prefix):
                return location[len(prefix):]
    return location


def open_store(location: str | os.PathLike, storage_options: dict | None = None,
               local_cache: str | os.PathLike | None = None, create: bool = True) -> Store:
    """The store of ``location``: the one place where its class is chosen.

    ``create=False`` leaves a remote location untouched (a local folder is created
    with its ``arraycache.json``, as always).

    Raises
    ------
    ImportError
        If the URL's protocol needs a package that is not installed (the message
        names the extra, e.g. ``pip install arraycache[s3]``).
    OSError
        If the location cannot be used.
    """
    if is_url(location):
        from .remote import RemoteStore  # fsspec is only imported for URLs

        return RemoteStore(str(location), storage_options, local_cache, create=create)
    _refuse_url_options(location, storage_options, local_cache)
    return LocalStore(_local_path(location))


def check_location(location: str | os.PathLike, storage_options: dict | None = None,
                   local_cache: str | os.PathLike | None = None) -> None:
    """Fail early, without touching the location, on what :func:`open_store` would
    refuse: options of the wrong kind, a protocol whose package is missing."""
    if is_url(location):
        from .remote import check_protocol

        check_protocol(str(location))
        if storage_options is not None and not isinstance(storage_options, dict):
            raise TypeError(f"storage_options must be a dict, not "
                            f"{type(storage_options).__name__}")
        return
    _refuse_url_options(location, storage_options, local_cache)


def _refuse_url_options(location: str | os.PathLike, storage_options: dict | None,
                        local_cache: str | os.PathLike | None) -> None:
    if storage_options:
        raise ValueError(f"storage_options are for URL locations (s3://...), and "
                         f"{os.fspath(location)!r} is a local folder")
    if local_cache is not None:
        raise ValueError(f"local_cache is for URL locations (s3://...), and "
                         f"{os.fspath(location)!r} is a local folder")


class Store(abc.ABC):
    """Where the entries of one location live: the operations the cache needs.

    Entries are named by ``entry_dir(folder, key)``: a ``Path`` for a local store, a
    ``PurePosixPath`` inside the bucket for a remote one.  Results are written into a
    local temporary folder (``new_entry``) by ``persistence.dump`` and published from
    there; they are read from a local folder too (``fetch``: the entry itself, or a
    copy of a remote one).
    """

    #: ``mmap_mode`` values whose memory maps reach this store's files.
    mmap_modes: frozenset[str] = frozenset()
    #: Whether a file's owner says who wrote it (the pickle trust check relies on it).
    owners_known: bool = True
    #: Whether entries are read where they are (``fetch`` returns the entry itself).
    in_place: bool = True

    @property
    @abc.abstractmethod
    def location(self) -> str:
        """The location as users name it (folder or URL)."""

    def mmap_fallback(self, mmap_mode: str) -> str | None:
        """What a hit maps with instead of ``mmap_mode`` when this store cannot map it."""
        return None

    def url(self, entry: PurePath) -> str:
        """The entry as users name it (a folder path or a URL)."""
        return str(entry)

    @abc.abstractmethod
    def is_cache(self) -> bool:
        """Whether the location holds an arraycache (its ``arraycache.json``)."""

    @abc.abstractmethod
    def function_dir(self, folder: tuple[str, ...]) -> PurePath:
        """The folder holding one function's entries."""

    @abc.abstractmethod
    def entry_dir(self, folder: tuple[str, ...], key: str) -> PurePath:
        """The final folder of one entry."""

    @abc.abstractmethod
    def read_meta(self, entry: PurePath) -> dict[str, Any] | None:
        """The entry's arraycache metadata, or None when there is no entry (ValueError
        when it is unreadable, OutdatedEntry when it is of an older format)."""

    @abc.abstractmethod
    def fetch(self, entry: PurePath, meta: dict[str, Any]) -> Path:
        """A local folder holding the entry's files, for ``persistence`` to read."""

    def release(self, local: Path) -> None:
        """Done reading what :meth:`fetch` returned (a temporary copy is removed)."""
        return  # read in place: nothing to release

    @abc.abstractmethod
    def new_entry(self, entry: PurePath) -> Path:
        """A fresh local temporary folder to write the entry into."""

    @abc.abstractmethod
    def publish(self, tmp: Path, entry: PurePath, meta: dict[str, Any], replace: bool) -> bool:
        """Make ``tmp`` the entry, its group ``zarr.json`` (holding ``meta``) last; False
        when another writer published first (and ``replace`` is false)."""

    @abc.abstractmethod
    def discard(self, tmp: Path) -> None:
        """Remove a temporary folder that will not be published."""

    @abc.abstractmethod
    def record(self, kind: str, entry: PurePath, nbytes: int = 0, seconds: float = 0.0) -> None:
        """Journal an event of ``entry``: 'H' hit, 'M' miss, 'S' store, 'D' delete."""

    @property
    @abc.abstractmethod
    def summary(self) -> Summary:
        """The folded bookkeeping of this location."""

    def stats(self) -> dict[str, dict[str, float]]:
        """Counters per function folder (see ``journal.FUNCTION_STATS``); entries and
        bytes come from a scan, so they are right even if bookkeeping was lost."""
        list(self.entries())  # brings the entries table in line with the store
        try:
            return self.summary.stats()
        except Exception as exc:
            logger.debug("no statistics for %s: %s", self.location, exc)
            return {}

    @abc.abstractmethod
    def mark_checked(self, entry: PurePath, meta: dict[str, Any], boot: str) -> None:
        """Record that the entry was verified in full during ``boot``."""

    @abc.abstractmethod
    def delete(self, entry: PurePath) -> bool:
        """Remove an entry; return whether this call removed it."""

    @abc.abstractmethod
    def try_lock(self, entry: PurePath) -> EntryLock | None:
        """Take the entry's compute lock, or return None if someone holds it."""

    @abc.abstractmethod
    def record_code(self, folder: tuple[str, ...], name: str, code_digest: str) -> None:
        """Add ``code_digest`` to the function's ``code.json`` (once per digest)."""

    @abc.abstractmethod
    def code_info(self, function_dir: PurePath) -> dict[str, Any] | None:
        """The function's ``code.json`` (``function`` name, ``digests`` -> time seen)."""

    @abc.abstractmethod
    def function_dirs(self) -> Iterator[PurePath]:
        """The folders of every function with entries (or once had some)."""

    @abc.abstractmethod
    def entries(self, folder: tuple[str, ...] | None = None) -> Iterator[EntryInfo]:
        """Published entries, of one function or of all (with bookkeeping folded in)."""

    @abc.abstractmethod
    def remove_temporaries(self, min_age: float = 3600.0) -> int:
        """Remove what writers that died left behind; return how many."""

    @abc.abstractmethod
    def clear(self, folder: tuple[str, ...] | None = None) -> None:
        """Remove all entries of one function, or the whole cache content."""

    @abc.abstractmethod
    def eviction_lock(self) -> contextlib.AbstractContextManager:
        """Held by the one process that evicts at a time."""

    @abc.abstractmethod
    def usage(self) -> tuple[int, int | None]:
        """Bytes of every file of the location, and free space (None: unknown)."""


def fold_bookkeeping(store: Store, scanned: list[tuple[PurePath, dict, int]],
                     folder: tuple[str, ...] | None) -> Iterator[EntryInfo]:
    """EntryInfo of scanned (entry, metadata, bytes), with last access and hits from the
    bookkeeping, which is brought in line with the scan on the way."""
    prefix = "/".join(folder) + "/" if folder else ""
    try:
        known = store.summary.resync(
            [(relative(e), f"{e.parent.parent.name}/{e.parent.name}", n,
              float(m.get("created") or 0)) for e, m, n in scanned],
            prefix,
        )
    except Exception as exc:  # advisory: a listing works without it
        logger.debug("bookkeeping of %s unavailable: %s", store.location, exc)
        known = {}
    for entry, meta, nbytes in scanned:
        created = float(meta.get("created") or 0)
        last, hits = known.get(relative(entry), (created, 0))
        yield EntryInfo(entry, nbytes, max(last, created), meta.get("code"), created, hits,
                        float(meta.get("duration") or 0))


def relative(entry: PurePath) -> str:
    """``module/qualname/key`` of an entry folder: its name in the bookkeeping."""
    return f"{entry.parent.parent.name}/{entry.parent.name}/{entry.name}"


def parse_meta(raw: bytes) -> dict[str, Any]:
    """The arraycache attributes of a group ``zarr.json``.

    Raises
    ------
    ValueError
        If they cannot be read or are of an unknown version (OutdatedEntry: older).
    """
    try:
        meta = json.loads(raw)["attributes"]["arraycache"]
        version = meta.get("format_version")
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"no arraycache metadata ({type(exc).__name__}: {exc})") from None
    if isinstance(version, int) and version < FORMAT_VERSION:
        raise OutdatedEntry(f"entry format version {version} is outdated")
    if version != FORMAT_VERSION:
        raise ValueError(f"entry format version {version!r} is unknown")
    return meta


def group_json(meta: dict[str, Any]) -> bytes:
    """The group ``zarr.json`` that holds ``meta`` (with the format version)."""
    meta = {**meta, "format_version": FORMAT_VERSION}
    return json.dumps({"zarr_format": 3, "node_type": "group",
                       "attributes": {"arraycache": meta}},
                      separators=(",", ":"), allow_nan=True).encode()


class LocalStore(Store):
    """Cache entries in a folder of the local file system.

    Parameters
    ----------
    location : path-like
        The cache folder; created if missing.
    """

    def __init__(self, location: str | os.PathLike) -> None:
        self.root = Path(location).expanduser().absolute()
        self.root.mkdir(parents=True, exist_ok=True)
        self._function_dirs_made: dict[tuple[str, ...], Path] = {}
        marker = self.root / "arraycache.json"
        if not marker.exists():
            # A read-only cache without a marker can still be read: no error here.
            tmp = temporary(marker)
            with contextlib.suppress(OSError):
                _write_json(tmp, {"format_version": FORMAT_VERSION})
                os.replace(tmp, marker)
            # As joblib 1.6 does: a cache inside a repository stays out of its commits.
            with contextlib.suppress(OSError), open(self.root / ".gitignore", "x") as f:
                f.write("# Created by arraycache automatically.\n*\n")

    #: Every mode maps the entry's own files.
    mmap_modes = frozenset({"r", "r+", "w+", "c"})

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    @property
    def location(self) -> str:
        """The cache folder, absolute."""
        return str(self.root)

    def is_cache(self) -> bool:
        """Whether the folder holds an ``arraycache.json``."""
        return (self.root / "arraycache.json").is_file()

    # --- entries ---------------------------------------------------------------------------

    def function_dir(self, folder: tuple[str, ...]) -> Path:
        """The folder holding one function's entries."""
        try:
            return self._function_dirs_made[folder]
        except KeyError:  # pathlib costs microseconds: made once per function
            path = self._function_dirs_made[folder] = self.root.joinpath(*folder)
            return path

    def entry_dir(self, folder: tuple[str, ...], key: str) -> Path:
        """The final folder of one entry."""
        return self.function_dir(folder) / key

    def read_meta(self, entry: Path) -> dict[str, Any] | None:
        """The entry's arraycache metadata, or None when there is no entry.

        Raises
        ------
        ValueError
            If the metadata exists but cannot be read or is of an unknown version.
        """
        try:
            # A string join, not pathlib's (microseconds): this runs on every call.
            with open(f"{entry}{os.sep}{_META}", "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            raise ValueError(f"{entry} is not a folder") from None
        return parse_meta(raw)

    def fetch(self, entry: Path, meta: dict[str, Any]) -> Path:
        """The entry's folder itself: read in place."""
        return entry

    def new_entry(self, entry: Path) -> Path:
        """A fresh temporary folder beside ``entry`` to write it into."""
        entry.parent.mkdir(parents=True, exist_ok=True)
        # Its lock tells sweepers (reduce_size, prune) that this writer is alive.
        return OWNED.make(temporary(entry))

    def publish(self, tmp: Path, entry: Path, meta: dict[str, Any], replace: bool) -> bool:
        """Write the group metadata into ``tmp`` and rename it to ``entry``.

        Returns False (and drops ``tmp``) when another writer published first and
        ``replace`` is false.  ``replace`` moves a damaged entry out of the way first.
        """
        meta = {**meta, "format_version": FORMAT_VERSION}
        _write_json(tmp / _META, {"zarr_format": 3, "node_type": "group",
                                  "attributes": {"arraycache": meta}})
        if replace:
            self.delete(entry)
        nbytes = _folder_nbytes(tmp) or 0
        try:
            os.rename(tmp, entry)
        except OSError:
            if not entry.is_dir():
                raise
            OWNED.remove(tmp)  # another writer won; theirs is as good
            return False
        OWNED.release(tmp)
        self.record("S", entry, nbytes, float(meta.get("duration") or 0))
        return True

    def discard(self, tmp: Path) -> None:
        """Remove a temporary folder that will not be published."""
        OWNED.remove(tmp)

    # --- bookkeeping (advisory: never raises) -----------------------------------------------

    relative = staticmethod(relative)

    def record(self, kind: str, entry: Path, nbytes: int = 0, seconds: float = 0.0) -> None:
        """Journal an event of ``entry``: 'H' hit, 'M' miss, 'S' store, 'D' delete."""
        # String slicing, not pathlib: this runs on every hit.
        relative = os.fspath(entry).rsplit(os.sep, 3)[-3:]
        journal_for(self.root).record(
            kind, "/".join(relative), f"{relative[0]}/{relative[1]}", nbytes, seconds
        )

    @property
    def summary(self) -> Summary:
        """The folded bookkeeping of this location."""
        return Summary(self.root)

    def mark_checked(self, entry: Path, meta: dict[str, Any], boot: str) -> None:
        """Record in the entry's metadata that it was verified in full during ``boot``."""
        with contextlib.suppress(OSError):
            tmp = temporary(entry / _META)
            _write_json(tmp, {"zarr_format": 3, "node_type": "group",
                              "attributes": {"arraycache": {**meta, "boot": boot}}})
            os.replace(tmp, entry / _META)

    def delete(self, entry: Path) -> bool:
        """Remove an entry: renamed away first, so readers never see half of it.

        Returns whether this call removed it (False: it was already gone).
        """
        trash = entry.with_name(f"{entry.name}{_TRASH}{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(entry, trash)
        except FileNotFoundError:
            return False
        self.record("D", entry)
        shutil.rmtree(trash, ignore_errors=True)
        return True

    # --- locks -----------------------------------------------------------------------------

    def try_lock(self, entry: Path) -> EntryLock | None:
        """Take the entry's compute lock, or return None if someone holds it.

        Raises
        ------
        OSError
            If the lock file cannot be created (e.g. a read-only location).
        """
        return lock_file(entry.with_name(entry.name + _LOCK))

    # --- listing and housekeeping ------------------------------------------------------------

    def record_code(self, folder: tuple[str, ...], name: str, code_digest: str) -> None:
        """Add ``code_digest`` to the function's ``code.json`` (once per digest)."""
        path = self.function_dir(folder) / "code.json"
        try:
            seen = json.loads(path.read_text())
        except (OSError, ValueError):
            seen = {"function": name, "digests": {}}
        if code_digest in seen["digests"]:
            return
        seen["digests"][code_digest] = time.time()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary(path)
        _write_json(tmp, seen)
        os.replace(tmp, path)

    def code_info(self, function_dir: Path) -> dict[str, Any] | None:
        """The function's ``code.json``, or None when it is missing or unreadable."""
        try:
            info = json.loads((function_dir / "code.json").read_text())
        except (OSError, ValueError):
            return None
        return info if isinstance(info, dict) else None

    def function_dirs(self) -> Iterator[Path]:
        """The ``<module>/<qualname>`` folders."""
        # Two fixed levels, listed with scandir: other processes rename and delete
        # folders while we list, and a vanished one is skipped, never an error.
        for module in _subfolders(self.root):
            if module.name != _BOOKKEEPING:
                yield from _subfolders(module)

    _function_dirs = function_dirs

    def entries(self, folder: tuple[str, ...] | None = None) -> Iterator[EntryInfo]:
        """Published entries, of one function or of all (with bookkeeping folded in)."""
        dirs = [self.function_dir(folder)] if folder else list(self.function_dirs())
        scanned: list[tuple[PurePath, dict, int]] = []
        for fdir in dirs:
            for entry in _subfolders(fdir):
                if _TMP in entry.name or _TRASH in entry.name:
                    continue
                try:
                    meta = self.read_meta(entry) or {}
                except (ValueError, KeyError, OSError):
                    meta = {}
                nbytes = _folder_nbytes(entry)
                if nbytes is None:
                    continue  # removed while we looked
                scanned.append((entry, meta, nbytes))
        yield from fold_bookkeeping(self, scanned, folder)

    def remove_temporaries(self, min_age: float = 3600.0) -> int:
        """Remove temporary and trash folders of writers that died; return how many."""
        removed = 0
        candidates = [*_children(self.root)]
        for module in _subfolders(self.root):
            if module.name == _BOOKKEEPING:
                continue
            for function in _subfolders(module):
                candidates.extend(_children(function))
        for path in candidates:
            if _TMP in path.name:
                removed += remove_if_abandoned(path, min_age)
            elif _TRASH in path.name and _dead_deleter(path, min_age):
                shutil.rmtree(path, ignore_errors=True)
                removed += 1
        return removed

    def eviction_lock(self) -> contextlib.AbstractContextManager:
        """An exclusive ``flock`` on ``.arraycache/evicting``."""
        return exclusive_lock(self.root / _BOOKKEEPING, "evicting")

    def usage(self) -> tuple[int, int | None]:
        """Bytes of every file under the folder, and free space on its file system."""
        return _folder_nbytes(self.root) or 0, shutil.disk_usage(self.root).free

    def clear(self, folder: tuple[str, ...] | None = None) -> None:
        """Remove all entries of one function, or the whole cache content."""
        target = self.function_dir(folder) if folder else self.root
        for child in _children(target):
            if child.name in ("arraycache.json", ".gitignore", _BOOKKEEPING):
                continue
            if child.is_dir():
                self.delete(child)
            else:
                child.unlink(missing_ok=True)
        with contextlib.suppress(Exception):  # the entries table follows the disk
            self.summary.resync([], "/".join(folder) + "/" if folder else "")


def _children(folder: Path) -> list[Path]:
    try:
        with os.scandir(folder) as it:
            return [Path(e.path) for e in it]
    except (FileNotFoundError, NotADirectoryError):
        return []


def _subfolders(folder: Path) -> list[Path]:
    try:
        with os.scandir(folder) as it:
            return [Path(e.path) for e in it if e.is_dir(follow_symlinks=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []


def _folder_nbytes(folder: Path) -> int | None:
    """Bytes of the files under ``folder``; None if it vanished while we counted."""
    total = 0
    try:
        for dirpath, _, names in os.walk(folder, onerror=_raise):
            for name in names:
                with contextlib.suppress(FileNotFoundError):
                    total += os.stat(os.path.join(dirpath, name)).st_size
    except FileNotFoundError:
        return None
    return total


def _raise(exc: OSError) -> None:
    raise exc
