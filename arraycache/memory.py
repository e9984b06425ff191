"""Memory: joblib's disk cache of function results, built on zarr entries."""

from __future__ import annotations

import datetime
import functools
import os
import time
from collections.abc import Callable, Iterable
from pathlib import PurePath
from typing import Any

from . import display, persistence
from .codecs import parse_compress
from .eviction import evict
from .journal import FUNCTION_STATS
from .memorized import MemorizedFunc, NotMemorizedFunc, check_mmap_mode
from .store import Store, check_location, open_store

__all__ = ["Memory", "expires_after", "parse_bytes", "verify_entry"]


class Memory:
    """A context object for caching a function's return value on disk.

    Drop-in for ``joblib.Memory``: decorate with :meth:`cache`; results go into
    one zarr v3 group per call under ``location``.

    Parameters
    ----------
    location : str, path-like or None
        The cache folder, or the URL of one in object storage (``s3://bucket/prefix``
        or any URL fsspec opens; ``s3://`` needs ``pip install arraycache[s3]``).
        Entries there are the same zarr groups, readable in place by
        ``zarr.open_group(url, storage_options=...)``.  None turns caching off:
        decorated functions just run.
    backend : {'local'}
        Accepted for joblib compatibility: the kind of store follows ``location``.
    mmap_mode : {None, 'r', 'r+', 'w+', 'c'}
        With 'r' (read-only) or 'c' (copy-on-write, the cache is never changed),
        cached arrays come back as ``np.memmap`` over the stored files: a hit costs
        the same at 1 KB and at 10 GB.  None loads them into memory.
    compress : bool, int, str or (str, int)
        False stores raw bytes (memory-mappable); True or a level 1-9 uses
        Blosc+Zstd with byte shuffle; ``(name, level)`` picks zstd, lz4, lz4hc,
        blosclz, zlib or gzip.
    verbose : int
        0 is silent; 1 prints a line per computed call, as joblib does.
    bytes_limit : int or str, optional
        Size limit of the location, e.g. ``"10G"``, enforced after every store (the
        check is O(1); entries are evicted, stale code versions first, then least
        recently used, only when over it).  Also the default of :meth:`reduce_size`.
    backend_options : dict, optional
        Accepted for joblib compatibility; unused by the local backend.
    lock_timeout : float or None
        While one process computes an entry, others that miss it wait up to this
        many seconds for its result instead of computing it again (a lock whose
        holder died is taken over at once).  None: never wait, always compute.  For
        a URL location the lock is per machine: two machines both compute, one
        publishes, and the entry is one writer's whole result.
    trust_foreign_pickles : bool
        Results that need pickle (anything beyond arrays, numbers, strings and plain
        containers) are only unpickled from files you own, because unpickling runs
        code chosen by whoever wrote the file.  True lifts that rule for locations
        shared with people you trust.  In object storage nobody is known to own a
        file, so pickled results there load only with True.
    storage_options : dict, optional
        For a URL location: passed to fsspec (for ``s3://``: ``key``, ``secret``,
        ``endpoint_url``, ``client_kwargs``...; s3fs also reads the usual AWS variables).
    local_cache : str or path-like, optional
        For a URL location: a local folder that keeps a copy of each entry read, checked
        once when downloaded, so that hits with ``mmap_mode`` map it (a hit then costs
        one metadata request).  Without it, hits download into memory, and
        ``mmap_mode`` warns once and loads into memory.
    """

    def __init__(
        self,
        location: str | os.PathLike | None = None,
        backend: str = "local",
        mmap_mode: str | None = None,
        compress: Any = False,
        verbose: int = 1,
        bytes_limit: int | str | None = None,
        backend_options: dict | None = None,
        lock_timeout: float | None = 600.0,
        trust_foreign_pickles: bool = False,
        storage_options: dict | None = None,
        local_cache: str | os.PathLike | None = None,
    ) -> None:
        if backend != "local":
            # TypeError, as joblib raises for an unknown store backend.
            raise TypeError(f"unknown backend {backend!r}; only 'local' is available")
        check_mmap_mode(mmap_mode)
        parse_compress(compress)  # fail early on a bad value
        parse_bytes(bytes_limit)
        if location is not None and not isinstance(location, (str, os.PathLike)):
            raise TypeError(f"location must be a path or None, not {type(location).__name__}")
        if location is not None:
            check_location(location, storage_options, local_cache)
        self.location = None if location is None else os.fspath(location)
        self.storage_options = storage_options
        self.local_cache = None if local_cache is None else os.fspath(local_cache)
        self.backend = backend
        self.mmap_mode = mmap_mode
        self.compress = compress
        self.verbose = verbose
        self.bytes_limit = bytes_limit
        self.backend_options = backend_options or {}
        self.lock_timeout = lock_timeout
        self.trust_foreign_pickles = trust_foreign_pickles

    def __repr__(self) -> str:
        return display.memory_repr(self)

    def _repr_html_(self) -> str:
        return display.memory_html(self)

    def __reduce__(self) -> tuple:
        return (Memory, (self.location, self.backend, self.mmap_mode, self.compress,
                         self.verbose, self.bytes_limit, self.backend_options, self.lock_timeout,
                         self.trust_foreign_pickles, self.storage_options, self.local_cache))

    def cache(
        self,
        func: Callable | None = None,
        ignore: Iterable[str] | None = None,
        verbose: int | None = None,
        mmap_mode: str | bool | None = False,
        cache_validation_callback: Callable[[dict], bool] | None = None,
    ) -> Any:
        """Decorate ``func`` so that its results are cached.

        Usable as ``@memory.cache`` or ``@memory.cache(ignore=[...])``.

        Parameters
        ----------
        func : callable
            The function to cache.
        ignore : list of str, optional
            Arguments that do not change the result (e.g. ``verbose``).
        verbose : int, optional
            Overrides the Memory's verbosity for this function.
        mmap_mode : {None, 'r', 'r+', 'w+', 'c'} or False
            Overrides the Memory's mmap_mode for this function (False: keep it).
        cache_validation_callback : callable, optional
            Called with the entry's metadata (``duration``, ``time``) on a hit; a
            false return makes the hit a miss.  See :func:`expires_after`.

        Returns
        -------
        MemorizedFunc or NotMemorizedFunc
        """
        if cache_validation_callback is not None and not callable(cache_validation_callback):
            # ValueError, as joblib raises.
            raise ValueError(
                f"cache_validation_callback must be callable, not {cache_validation_callback!r}"
            )
        if func is None:
            return functools.partial(
                self.cache, ignore=ignore, verbose=verbose, mmap_mode=mmap_mode,
                cache_validation_callback=cache_validation_callback,
            )
        if isinstance(func, (MemorizedFunc, NotMemorizedFunc)):
            func = func.func
        if self.location is None:
            return NotMemorizedFunc(func)
        return MemorizedFunc(
            func, self.location, ignore=ignore,
            mmap_mode=self.mmap_mode if mmap_mode is False else mmap_mode,
            compress=self.compress,
            verbose=self.verbose if verbose is None else verbose,
            cache_validation_callback=cache_validation_callback,
            lock_timeout=self.lock_timeout,
            trust_foreign_pickles=self.trust_foreign_pickles,
            bytes_limit=parse_bytes(self.bytes_limit),
            storage_options=self.storage_options,
            local_cache=self.local_cache,
        )

    def eval(self, func: Callable, *args: Any, **kwargs: Any) -> Any:
        """Call ``func(*args, **kwargs)`` through the cache."""
        if self.location is None:
            return func(*args, **kwargs)
        return self.cache(func)(*args, **kwargs)

    def _store(self) -> Store | None:
        if self.location is None:
            return None
        return open_store(self.location, self.storage_options, self.local_cache)

    def clear(self, warn: bool = True) -> None:
        """Delete everything in the cache location."""
        if warn and self.verbose > 0:
            print(f"[Memory] Flushing completely the cache {self.location}")
        store = self._store()
        if store is not None:
            store.clear()

    def verify(self) -> list[PurePath]:
        """Check every byte of every entry against its digests.

        Returns
        -------
        list of Path
            The folders of damaged entries (empty when all is well; paths inside the
            bucket for a URL location).  They are left in place: a later call of their
            function recomputes and replaces them.
        """
        store = self._store()
        if store is None:
            return []
        damaged = []
        for info in store.entries():
            try:
                problems = verify_entry(store, info.path)
            except (ValueError, KeyError, OSError, persistence.EntryDamaged) as exc:
                problems = [str(exc)]
            if problems:
                damaged.append(info.path)
        return damaged

    def reduce_size(
        self,
        bytes_limit: int | str | None = None,
        items_limit: int | None = None,
        age_limit: datetime.timedelta | None = None,
    ) -> None:
        """Evict entries until the cache fits the limits.

        Entries of an older version of their function go first, then the least
        recently used.  Temporary folders of dead writers are removed too.

        Parameters
        ----------
        bytes_limit : int or str, optional
            Largest total size, in bytes or as ``"10M"``, ``"2G"``...; defaults to
            the Memory's ``bytes_limit``.
        items_limit : int, optional
            Largest number of entries.
        age_limit : datetime.timedelta, optional
            Entries not accessed for longer are removed.
        """
        if age_limit is not None and age_limit.total_seconds() < 0:
            raise ValueError(f"age_limit must be a positive timedelta, not {age_limit}")
        store = self._store()
        if store is None:
            return
        evict(store, parse_bytes(self.bytes_limit if bytes_limit is None else bytes_limit),
              items_limit, age_limit)

    def stats(self) -> dict[str, Any]:
        """Counters of this location, kept by every process that uses it.

        Returns
        -------
        dict
            ``hits``, ``misses`` (calls that computed), ``entries``, ``bytes`` (on
            disk now), ``bytes_stored``, ``bytes_loaded`` (array bytes returned by
            hits), ``compute_time`` (seconds spent computing) and ``time_saved`` (the
            recorded compute time of every hit), for the whole location, and the same
            per function under ``functions`` (keyed by ``module/qualname``).
            Counters survive until :meth:`clear`; entries and bytes follow the disk.
            For a URL location the counters are this machine's (kept in a local
            folder keyed by the URL); entries and bytes follow the bucket.
        """
        store = self._store()
        functions = store.stats() if store is not None else {}
        totals = {key: sum(f[key] for f in functions.values()) for key in FUNCTION_STATS}
        return {"location": self.location, **totals, "functions": functions}


def verify_entry(store: Store, entry: PurePath, meta: dict | None = None) -> list[str]:
    """The problems of one entry (checked in full, from a local copy for a remote one).

    Raises
    ------
    ValueError, KeyError, OSError, persistence.EntryDamaged
        If its metadata (read unless given) or files cannot be read.
    """
    meta = store.read_meta(entry) if meta is None else meta
    if not meta:
        return ["no metadata"]
    local = store.fetch(entry, meta)
    try:
        return persistence.verify(local, meta)
    finally:
        store.release(local)


_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_bytes(limit: int | str | None) -> int | None:
    if limit is None or isinstance(limit, int):
        return limit
    text = str(limit).strip().upper().rstrip("B")
    try:
        if text and text[-1] in _UNITS:
            return int(float(text[:-1]) * _UNITS[text[-1]])
        return int(text)
    except ValueError:
        raise ValueError(f"cannot read {limit!r} as a size in bytes (e.g. '10M', '2G')") from None


def expires_after(
    days: float = 0, seconds: float = 0, microseconds: float = 0, milliseconds: float = 0,
    minutes: float = 0, hours: float = 0, weeks: float = 0,
) -> Callable[[dict], bool]:
    """A ``cache_validation_callback`` that invalidates entries older than the delay."""
    delay = datetime.timedelta(days=days, seconds=seconds, microseconds=microseconds,
                               milliseconds=milliseconds, minutes=minutes, hours=hours,
                               weeks=weeks).total_seconds()

    def cache_validation_callback(metadata: dict) -> bool:
        return time.time() - (metadata.get("time") or 0) < delay

    return cache_validation_callback
