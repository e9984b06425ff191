"""Cache entries in object storage: S3 and the other fsspec URLs that zarr opens.

An entry is the same zarr group as in a :class:`~arraycache.store.LocalStore`, at the
same key under the URL, so ``zarr.open_group(f"{url}/{module}/{qualname}/{key}",
storage_options=...)`` and ``dask.array.from_zarr`` read it in place.

I/O goes through zarr's own :class:`zarr.storage.FsspecStore` (metadata reads and
writes), and through the fsspec file system it wraps (``FsspecStore.fs``) where zarr's
API is the wrong tool: ``Store.set``/``get`` hold a whole value in memory, while
``put_file``/``get_file`` stream a chunk file from and to disk (multipart for big
ones); a listing with sizes is one request per 1,000 objects with ``find``, one per
key with ``getsize``; and an exclusive create (``mode="create"``, S3's
``If-None-Match``) has no zarr equivalent.

Publishing (object storage has no rename): ``persistence.dump`` writes the entry
into a local temporary folder as for a local location; the publisher then takes the
entry's *claim*, an object ``<key>.claim`` created only if absent, uploads every
file, the group ``zarr.json`` last, and drops the claim.  Readers ignore an entry
without its ``zarr.json``.  Two machines computing one entry both finish; the one
that gets the claim publishes, the other returns its value without storing it, so
the entry is always one writer's whole files.  A claim left by a writer that died
is taken over after an hour (at once on its own machine, where its pid is known to
be gone).  File systems without an exclusive create publish without a claim: the
last ``zarr.json`` wins, and an entry mixing two writers' files fails its digests
when loaded and is recomputed.

Compute locks are local: processes of one machine wait for each other (an
``flock``, as for a local location); across machines both compute and one publish
wins.  Bookkeeping (hits, misses, last access, running size) lives in a local
folder keyed by the URL and endpoint, ``$XDG_CACHE_HOME/arraycache/remote/<id>/``
(``~/.cache`` by default): statistics and least-recently-used order are this
machine's view, entries and sizes come from the bucket (an enforced ``bytes_limit``
counts what this machine stored or last listed; ``reduce_size`` lists the bucket).

Reading: a remote entry is downloaded to a local folder and read there.  Without
``local_cache`` the folder is temporary and the arrays are loaded into memory (and
checked against their digests); ``mmap_mode`` then warns once.  With
``local_cache``, entries are kept there, checked once when downloaded (and after a
reboot), and hits map them like local ones after one metadata request.

Pickled parts of results are unpickled only with ``trust_foreign_pickles=True``:
anyone who can write to the bucket chose those bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import json
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from .journal import FOLDER as _BOOKKEEPING
from .journal import Summary, journal_for
from .liveness import OWNED, remove_if_abandoned
from .localcopies import STAGING, LocalCopies, local_files, subfolders
from .store import (
    _HOST,
    _TMP,
    FORMAT_VERSION,
    EntryInfo,
    EntryLock,
    Store,
    _folder_nbytes,
    _pid_alive,
    boot_id,
    exclusive_lock,
    fold_bookkeeping,
    group_json,
    lock_file,
    parse_meta,
    relative,
    temporary,
)

__all__ = ["RemoteStore", "check_protocol", "local_folder"]

logger = logging.getLogger("arraycache.remote")

_META = "zarr.json"
_MARKER = "arraycache.json"
_CODE = "code.json"
_CLAIM = ".claim"
#: A claim this old is taken over (its writer died on another machine, or is stuck).
CLAIM_STALE_SECONDS = 3600.0
#: Requests in flight at once for the files of one entry.
_CONCURRENCY = 16
#: Which extra brings the implementation of a protocol.
_EXTRAS = {"s3": "s3", "s3a": "s3"}


def check_protocol(url: str) -> None:
    """Fail early when the packages for ``url``'s protocol are missing.

    Raises
    ------
    ImportError
        Naming what to install (``pip install arraycache[s3]`` for ``s3://``).
    ValueError
        If fsspec knows no such protocol.
    """
    protocols = [part.split("://", 1)[0] for part in url.split("::")]
    for protocol in protocols:
        extra = _EXTRAS.get(protocol)
        hint = f"pip install arraycache[{extra}]" if extra else "install the package fsspec names"
        try:
            import fsspec
        except ImportError:
            raise ImportError(f"cache location {url!r} needs fsspec: {hint}") from None
        try:
            fsspec.get_filesystem_class(protocol)
        except ImportError as exc:
            raise ImportError(
                f"cache location {url!r} needs the {protocol}:// implementation of fsspec "
                f"({exc}): {hint}"
            ) from None
        except ValueError:
            raise ValueError(f"cache location {url!r}: fsspec knows no protocol "
                             f"{protocol!r}") from None


def _cache_home() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "arraycache" / "remote"


def local_folder(location: str, endpoint: str | None) -> Path:
    """This machine's folder for a remote location: bookkeeping, compute locks, and
    the temporary folders of writes and reads (created; falls back to the temp dir)."""
    ident = hashlib.sha256(f"{location}\n{endpoint or ''}".encode()).hexdigest()[:16]
    for base in (_cache_home(), Path(tempfile.gettempdir()) / f"arraycache-{os.getuid()}"):
        folder = base / ident
        try:
            folder.mkdir(parents=True, exist_ok=True)
            about = folder / "location.json"
            if not about.exists():
                about.write_text(json.dumps({"location": location, "endpoint": endpoint}))
            return folder
        except OSError as exc:
            logger.debug("cannot use %s for %s: %s", folder, location, exc)
    raise OSError(f"no local folder for the bookkeeping of {location}")


def _endpoint(protocol: str, fs: Any, options: dict[str, Any]) -> str | None:
    """The server a URL means: the same bucket name on two servers is two caches."""
    endpoint = options.get("endpoint_url") or (options.get("client_kwargs") or {}).get(
        "endpoint_url") or getattr(fs, "endpoint_url", None)
    if endpoint is None and protocol in ("s3", "s3a"):
        # botocore's own variables (an fsspec config sets endpoint_url on fs, above).
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return endpoint


def _run(make: Callable[[], Awaitable[Any]]) -> Any:
    """Run a coroutine on zarr's event loop (where the store's file system lives).

    Errors of the file system that are not ``OSError`` (e.g. botocore's connection
    errors) become one, so callers handle one kind of I/O failure.
    """
    from zarr.core.sync import sync

    try:
        return sync(make())
    except OSError:
        raise
    except Exception as exc:
        raise OSError(f"{type(exc).__name__}: {exc}") from exc


async def _bounded(func: Callable[..., Awaitable[Any]], calls: Iterable[tuple]) -> list[Any]:
    """``func(*args)`` for each args of ``calls``, at most _CONCURRENCY at a time."""
    gate = asyncio.Semaphore(_CONCURRENCY)

    async def one(args: tuple) -> Any:
        async with gate:
            return await func(*args)

    return list(await asyncio.gather(*(one(a) for a in calls)))


def _takes_mode(fs: Any) -> bool:
    """Whether ``fs._pipe_file`` has fsspec's ``mode`` (``"create"``: exclusive); an
    older s3fs passes unknown keywords on to S3 and would fail every write."""
    try:
        parameters = inspect.signature(fs._pipe_file).parameters
    except (TypeError, ValueError):
        return False
    return "mode" in parameters


class RemoteStore(Store):
    """Cache entries under an fsspec URL (``s3://bucket/prefix``, ``memory://...``).

    Parameters
    ----------
    location : str
        The URL of the cache root.
    storage_options : dict, optional
        Passed to fsspec (``key``, ``secret``, ``endpoint_url``, ... for s3fs).
    local_cache : path-like, optional
        A local folder for copies of the entries that hits read: memory-mappable,
        downloaded once.
    create : bool
        Write the location's ``arraycache.json`` if it is missing.
    """

    owners_known = False
    in_place = False

    def __init__(self, location: str, storage_options: dict[str, Any] | None = None,
                 local_cache: str | os.PathLike | None = None, create: bool = True) -> None:
        check_protocol(location)
        self._location = location.rstrip("/")
        self.storage_options = dict(storage_options or {})
        self._open()
        self.root = PurePosixPath(self._zarr_store.path or "/")
        protocol = self._location.split("::")[-1].split("://", 1)[0]
        self.local = local_folder(self._location,
                                  _endpoint(protocol, self.fs, self.storage_options))
        self.copies = None if local_cache is None else \
            LocalCopies(Path(local_cache).expanduser().absolute())
        # Writes are staged on the local copies' file system when there is one: the
        # staged folder is then renamed into a local copy once uploaded.
        self.staging = (self.local if self.copies is None else self.copies.root) / STAGING
        # A local copy maps read-only or copy-on-write; writing into it would reach
        # neither the bucket nor other machines.
        self.mmap_modes = frozenset({"r", "c"}) if self.copies else frozenset()
        if create and not self.is_cache():
            try:
                self._create(self.root / _MARKER,
                             json.dumps({"format_version": FORMAT_VERSION}).encode())
            except FileExistsError:
                pass
            except OSError as exc:  # e.g. a read-only bucket: its entries can still be read
                logger.debug("cannot write %s/%s: %s", self._location, _MARKER, exc)

    def __repr__(self) -> str:
        return f"RemoteStore({self._location!r})"

    def _open(self) -> None:
        from zarr.storage import FsspecStore

        try:
            self._zarr_store = FsspecStore.from_url(self._location,
                                                    storage_options=self.storage_options)
        except (ImportError, TypeError, ValueError):
            raise  # a missing package or a bad option: the user's to fix
        except Exception as exc:
            raise OSError(f"cannot open {self._location}: {exc}") from exc
        self._pid = os.getpid()

    @property
    def zarr_store(self) -> Any:
        """zarr's ``FsspecStore`` of the location (opened again in a forked child: the
        parent's connections belong to the parent's event loop)."""
        if self._pid != os.getpid():
            self._open()
        return self._zarr_store

    @property
    def fs(self) -> Any:
        """The fsspec file system (async) under :attr:`zarr_store`."""
        return self.zarr_store.fs

    # --- names -----------------------------------------------------------------------------

    @property
    def location(self) -> str:
        """The URL, without a trailing slash."""
        return self._location

    def _key(self, path: PurePosixPath) -> str:
        return path.relative_to(self.root).as_posix()

    def url(self, entry: PurePosixPath) -> str:
        """The entry's URL."""
        return f"{self._location}/{self._key(entry)}"

    def function_dir(self, folder: tuple[str, ...]) -> PurePosixPath:
        """``<root>/<module>/<qualname>`` inside the bucket."""
        return self.root.joinpath(*folder)

    def entry_dir(self, folder: tuple[str, ...], key: str) -> PurePosixPath:
        """``<root>/<module>/<qualname>/<key>`` inside the bucket."""
        return self.function_dir(folder) / key

    def mmap_fallback(self, mmap_mode: str) -> str | None:
        """Copy-on-write maps of the local copy when there is one, else memory."""
        return "c" if self.copies is not None else None

    # --- small objects ---------------------------------------------------------------------

    def _get(self, path: PurePosixPath) -> bytes | None:
        from zarr.abc.store import OffsetByteRequest
        from zarr.core.buffer import default_buffer_prototype

        # A range from 0 is one GET; a whole-object read is a HEAD (for its size) and a
        # GET with s3fs: the hit path pays one round trip, not two.
        buffer = _run(lambda: self.zarr_store.get(self._key(path), default_buffer_prototype(),
                                                  OffsetByteRequest(0)))
        return None if buffer is None else buffer.to_bytes()

    def _put(self, path: PurePosixPath, data: bytes) -> None:
        from zarr.core.buffer import default_buffer_prototype

        value = default_buffer_prototype().buffer.from_bytes(data)
        _run(lambda: self.zarr_store.set(self._key(path), value))

    def _create(self, path: PurePosixPath, data: bytes) -> bool:
        """Write ``data`` only if ``path`` does not exist; False if the file system
        cannot do that exclusively.

        Raises
        ------
        FileExistsError
            If ``path`` exists.
        """
        from zarr.core.sync import sync

        fs = self.fs
        if not _takes_mode(fs):
            _run(lambda: fs._pipe_file(str(path), data))
            return False
        try:
            sync(fs._pipe_file(str(path), data, mode="create"))
        except (NotImplementedError, TypeError):
            _run(lambda: self.fs._pipe_file(str(path), data))
            return False
        except OSError:
            raise
        except Exception as exc:
            raise OSError(f"{type(exc).__name__}: {exc}") from exc
        return True

    def _exists(self, path: PurePosixPath) -> bool:
        return bool(_run(lambda: self.zarr_store.exists(self._key(path))))

    def _rm(self, paths: list[str]) -> None:
        if paths:
            with contextlib.suppress(FileNotFoundError):
                _run(lambda: self.fs._rm(paths))

    def _listing(self, under: PurePosixPath) -> dict[str, dict[str, Any]]:
        """Every object under ``under`` (path -> fsspec info with ``size``)."""
        prefix = f"{under}/"
        try:
            found = _run(lambda: self.fs._find(str(under), detail=True))
        except FileNotFoundError:
            return {}
        finally:
            # s3fs keeps listings and answers ``exists``/``info`` from them: other
            # processes change the bucket, so nothing is answered from a listing.
            self.fs.invalidate_cache()
        return {p: info for p, info in found.items() if p.startswith(prefix)}

    # --- reading ---------------------------------------------------------------------------

    def is_cache(self) -> bool:
        """Whether the URL holds an ``arraycache.json``."""
        return self._exists(self.root / _MARKER)

    def read_meta(self, entry: PurePosixPath) -> dict[str, Any] | None:
        """The entry's metadata (one GET), or None when it has no ``zarr.json``.

        ``boot`` is set to this machine's boot: the after-reboot check is about local
        files a power loss may have cut, and the bytes of a remote entry are checked
        when they are downloaded (see :meth:`fetch`).
        """
        raw = self._get(entry / _META)
        if raw is None:
            return None
        meta = parse_meta(raw)
        meta["boot"] = boot_id()
        return meta

    def _staging(self, entry: PurePosixPath) -> Path:
        self.staging.mkdir(parents=True, exist_ok=True)
        return OWNED.make(temporary(self.staging / entry.name))

    def _download(self, entry: PurePosixPath, dest: Path) -> dict[str, int]:
        """Copy every file of the entry into ``dest``; return relative path -> size."""
        listing = self._listing(entry)
        files = {p[len(str(entry)) + 1:]: int(info.get("size") or 0)
                 for p, info in listing.items()}
        for name in files:
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
        _run(lambda: _bounded(self.fs._get_file,
                              [(str(entry / name), str(dest / name)) for name in files]))
        return files

    def fetch(self, entry: PurePosixPath, meta: dict[str, Any]) -> Path:
        """A local folder with the entry's files: a temporary one (removed by
        :meth:`release`), or the entry's copy in ``local_cache``."""
        if self.copies is not None:
            return self.copies.get(self._key(entry), meta,
                                   lambda folder: self._download(entry, folder))
        local = self._staging(entry)
        try:
            self._download(entry, local)
        except BaseException:
            OWNED.remove(local)
            raise
        return local

    def release(self, local: Path) -> None:
        """Remove a temporary download (a local copy stays)."""
        if local.parent == self.staging:
            OWNED.remove(local)

    # --- writing ---------------------------------------------------------------------------

    def new_entry(self, entry: PurePosixPath) -> Path:
        """A local temporary folder (under this machine's folder for the location)."""
        return self._staging(entry)

    def discard(self, tmp: Path) -> None:
        """Remove a local temporary folder."""
        OWNED.remove(tmp)

    def _claim(self, entry: PurePosixPath) -> tuple[PurePosixPath, bytes] | bool:
        """Take the entry's claim: (its path, our body); True when the file system
        cannot claim exclusively; False when a live writer holds it."""
        path = entry.with_name(entry.name + _CLAIM)
        body = json.dumps({"pid": os.getpid(), "host": _HOST, "time": time.time(),
                           "id": uuid.uuid4().hex}).encode()
        for attempt in range(2):
            try:
                if not self._create(path, body):
                    return True
                return path, body
            except FileExistsError:
                if attempt or not self._stale_claim(path, CLAIM_STALE_SECONDS):
                    return False
                logger.info("taking over the stale claim of %s", self.url(entry))
                self._rm([str(path)])
        return False

    def _stale_claim(self, path: PurePosixPath, min_age: float) -> bool:
        try:
            raw = self._get(path)
            if raw is None:
                return True
            holder = json.loads(raw)
            if time.time() - float(holder["time"]) > min_age:
                return True
            return holder["host"] == _HOST and not _pid_alive(int(holder["pid"]))
        except (ValueError, KeyError, TypeError):
            return True  # not a claim we wrote: a put is whole, so nobody's

    def _unclaim(self, claim: tuple[PurePosixPath, bytes] | bool) -> None:
        if isinstance(claim, bool):
            return
        path, body = claim
        with contextlib.suppress(OSError):
            if self._get(path) == body:  # not a claim taken over from us meanwhile
                self._rm([str(path)])

    def publish(self, tmp: Path, entry: PurePosixPath, meta: dict[str, Any],
                replace: bool) -> bool:
        """Upload ``tmp`` as the entry: its files, then its ``zarr.json``.

        Returns False (and drops ``tmp``) when another writer published first, or
        holds the claim, and ``replace`` is false.  ``replace`` removes the current
        entry first (its ``zarr.json`` first).  A failed upload leaves no entry.
        With ``local_cache``, ``tmp`` becomes the entry's local copy.
        """
        try:
            data = group_json(meta)
            (tmp / _META).write_bytes(data)  # a whole group locally too: sizes, copy
            nbytes = _folder_nbytes(tmp) or 0
            if not self._upload(tmp, entry, data, replace):
                return False
            if self.copies is not None:
                with contextlib.suppress(OSError):
                    self.copies.keep(tmp, self._key(entry), data)
        finally:
            self.discard(tmp)  # a no-op once it became the local copy
        self.record("S", entry, nbytes, float(meta.get("duration") or 0))
        return True

    def _upload(self, tmp: Path, entry: PurePosixPath, data: bytes, replace: bool) -> bool:
        if not replace and self._exists(entry / _META):
            return False
        claim = self._claim(entry)
        if claim is False:
            return False
        try:
            if not replace and self._exists(entry / _META):
                return False  # published between our look and our claim
            self._remove_files(entry)  # a damaged entry, or a dead writer's part
            uploads = [(str(p), str(entry / p.relative_to(tmp).as_posix()))
                       for p in local_files(tmp) if p != tmp / _META]
            try:
                _run(lambda: _bounded(self.fs._put_file, uploads))
                self._put(entry / _META, data)
            except BaseException:
                with contextlib.suppress(Exception):
                    self._remove_files(entry)
                raise
        finally:
            self._unclaim(claim)
        return True

    def _remove_files(self, entry: PurePosixPath) -> bool:
        """Remove the entry's objects, its ``zarr.json`` first; whether there were any."""
        listing = self._listing(entry)
        if not listing:
            return False
        meta = str(entry / _META)
        if meta in listing:
            self._rm([meta])
        self._rm([p for p in listing if p != meta])
        return True

    def delete(self, entry: PurePosixPath) -> bool:
        """Remove an entry (its ``zarr.json`` first, so readers see none) and its
        local copy; return whether there was one."""
        removed = self._remove_files(entry)
        if self.copies is not None:
            self.copies.remove(self._key(entry))
        if removed:
            self.record("D", entry)
        return removed

    # --- bookkeeping, locks, code versions -------------------------------------------------

    def record(self, kind: str, entry: PurePosixPath, nbytes: int = 0,
               seconds: float = 0.0) -> None:
        """Journal an event in this machine's bookkeeping of the location."""
        name = relative(entry)
        journal_for(self.local).record(kind, name, name.rsplit("/", 1)[0], nbytes, seconds)

    @property
    def summary(self) -> Summary:
        """This machine's folded bookkeeping of the location."""
        return Summary(self.local)

    def mark_checked(self, entry: PurePosixPath, meta: dict[str, Any], boot: str) -> None:
        """Nothing to mark: see :meth:`read_meta`."""
        return

    def try_lock(self, entry: PurePosixPath) -> EntryLock | None:
        """A compute lock among the processes of this machine (an ``flock``)."""
        return lock_file(self.local / "locks" / f"{self._key(entry)}.lock")

    def eviction_lock(self) -> contextlib.AbstractContextManager:
        """Evictions of this machine take turns."""
        return exclusive_lock(self.local / _BOOKKEEPING, "evicting")

    def code_info(self, function_dir: PurePosixPath) -> dict[str, Any] | None:
        """The function's ``code.json``, or None when missing or unreadable."""
        try:
            raw = self._get(function_dir / _CODE)
            info = None if raw is None else json.loads(raw)
        except (OSError, ValueError):
            return None
        return info if isinstance(info, dict) else None

    def record_code(self, folder: tuple[str, ...], name: str, code_digest: str) -> None:
        """Add ``code_digest`` to the function's ``code.json`` (read, then written: two
        machines adding versions at once may lose one, which only ages an entry)."""
        fdir = self.function_dir(folder)
        seen = self.code_info(fdir)
        if not isinstance(seen, dict) or not isinstance(seen.get("digests"), dict):
            seen = {"function": name, "digests": {}}
        if code_digest in seen["digests"]:
            return
        seen["digests"][code_digest] = time.time()
        self._put(fdir / _CODE, json.dumps(seen, separators=(",", ":")).encode())

    # --- listing and housekeeping ----------------------------------------------------------

    def _parts(self, path: str) -> tuple[str, ...]:
        return PurePosixPath(path).relative_to(self.root).parts

    def function_dirs(self) -> Iterator[PurePosixPath]:
        """Function folders that hold any object."""
        seen = {parts[:2] for parts in map(self._parts, self._listing(self.root))
                if len(parts) >= 3}
        for module, qualname in sorted(seen):
            yield self.root / module / qualname

    def _survey(self, under: PurePosixPath) -> _Survey:
        """One listing of ``under``, sorted into entries and other objects."""
        survey = _Survey()
        for path, info in self._listing(under).items():
            parts = self._parts(path)
            if len(parts) < 4:
                survey.other.append(path)
                continue
            entry = self.root.joinpath(*parts[:3])
            survey.sizes[entry] = survey.sizes.get(entry, 0) + int(info.get("size") or 0)
            survey.newest[entry] = max(survey.newest.get(entry, 0.0), _mtime(info))
            if len(parts) == 4 and parts[3] == _META:
                survey.published.add(entry)
        return survey

    def entries(self, folder: tuple[str, ...] | None = None) -> Iterator[EntryInfo]:
        """Entries with a ``zarr.json`` (one listing, then their metadata in parallel)."""
        survey = self._survey(self.function_dir(folder) if folder else self.root)
        paths = sorted(survey.published)

        async def read(path: PurePosixPath) -> Any:
            try:
                return await self.fs._cat_file(str(path / _META), start=0)
            except Exception as exc:  # gone meanwhile, or unreadable: listed bare
                return exc

        raws = _run(lambda: _bounded(read, [(p,) for p in paths])) if paths else []
        scanned: list[tuple[PurePosixPath, dict, int]] = []
        for path, raw in zip(paths, raws, strict=True):
            meta: dict[str, Any] = {}
            if isinstance(raw, bytes):
                with contextlib.suppress(ValueError):
                    meta = parse_meta(raw)
            scanned.append((path, meta, survey.sizes[path]))
        yield from fold_bookkeeping(self, scanned, folder)

    def remove_temporaries(self, min_age: float = 3600.0) -> int:
        """Remove stale claims, parts of entries without ``zarr.json`` untouched for
        ``min_age`` seconds (their writer died), this machine's temporary folders of
        dead processes, and local copies of entries that are gone; return how many."""
        removed = 0
        survey = self._survey(self.root)
        claimed = set()
        for path in survey.other:
            if not path.endswith(_CLAIM):
                continue
            if self._stale_claim(PurePosixPath(path), min_age):
                self._rm([path])
                removed += 1
            else:
                claimed.add(PurePosixPath(path[: -len(_CLAIM)]))
        now = time.time()
        for entry, newest in survey.newest.items():
            if entry not in survey.published and entry not in claimed and now - newest > min_age:
                self._remove_files(entry)
                removed += 1
        removed += _remove_dead_folders(self.staging, min_age)
        if self.copies is not None:
            removed += self.copies.prune({self._key(e) for e in survey.published}, min_age)
        return removed

    def clear(self, folder: tuple[str, ...] | None = None) -> None:
        """Remove every entry of one function, or everything but ``arraycache.json``
        (entries' ``zarr.json`` first), and the matching local copies."""
        target = self.function_dir(folder) if folder else self.root
        survey = self._survey(target)
        self._rm([str(e / _META) for e in survey.published])
        rest = [p for p in self._listing(target) if p != str(self.root / _MARKER)]
        self._rm(rest)
        for entry in survey.published:
            self.record("D", entry)
        if self.copies is not None:
            if folder:
                self.copies.remove("/".join(folder))
            else:
                self.copies.clear()
        with contextlib.suppress(Exception):  # the entries table follows the bucket
            self.summary.resync([], "/".join(folder) + "/" if folder else "")

    def usage(self) -> tuple[int, int | None]:
        """Bytes of every object under the URL; free space is unknown."""
        return sum(int(i.get("size") or 0) for i in self._listing(self.root).values()), None


class _Survey:
    """What one listing says about entries."""

    def __init__(self) -> None:
        self.sizes: dict[PurePosixPath, int] = {}
        """Entry -> bytes of its objects (published or not)."""
        self.newest: dict[PurePosixPath, float] = {}
        """Entry -> time of its newest object."""
        self.published: set[PurePosixPath] = set()
        """Entries with their ``zarr.json``."""
        self.other: list[str] = []
        """Objects that are not inside an entry (markers, code.json, claims)."""


def _mtime(info: dict[str, Any]) -> float:
    when = info.get("LastModified") or info.get("mtime") or info.get("created")
    if hasattr(when, "timestamp"):
        return float(when.timestamp())
    try:
        return float(when)
    except (TypeError, ValueError):
        return time.time()  # unknown: counts as new, so never taken for a dead writer's


def _remove_dead_folders(folder: Path, min_age: float) -> int:
    removed = 0
    for path in subfolders(folder):
        if _TMP in path.name:
            removed += remove_if_abandoned(path, min_age)
    return removed
