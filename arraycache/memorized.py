"""MemorizedFunc: one cached function, and the references to its stored results.

Data flows one way: call -> ``funcinfo`` (bind, identity) -> ``hashing`` (key) ->
``store`` (lookup) -> ``persistence`` (load, or compute and dump) -> ``store``
(publish).
"""

from __future__ import annotations

import functools
import logging
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from . import display, persistence
from .codecs import Compression, parse_compress
from .eviction import enforce_bytes_limit
from .exceptions import (
    CacheWarning,
    CodeNotCoveredWarning,
    DamagedEntryWarning,
    UnhashableArgumentError,
    UnstorableResultWarning,
    UntrustedEntryWarning,
)
from .funcinfo import FunctionInfo
from .hashing import hash as hash_obj
from .journal import FUNCTION_STATS
from .store import OutdatedEntry, Store, boot_id, open_store

__all__ = [
    "MemorizedFunc",
    "MemorizedResult",
    "NotMemorizedFunc",
    "NotMemorizedResult",
    "check_mmap_mode",
]

_MMAP_MODES = (None, "r", "r+", "w+", "c")
_MISS = object()
#: With ``verbose >= 10`` each call is recorded here (joblib logs at 20, to the root logger).
logger = logging.getLogger("arraycache.memory")
_LOCK_POLL_MAX = 0.5


def check_mmap_mode(mmap_mode: Any) -> None:
    if mmap_mode not in _MMAP_MODES:
        raise ValueError(f"mmap_mode must be one of {_MMAP_MODES}, not {mmap_mode!r}")


def _short_repr(value: Any, limit: int = 120) -> str:
    if isinstance(value, np.ndarray):
        return f"array(shape={value.shape}, dtype={value.dtype})"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _format_call(name: str, arguments: dict[str, Any]) -> str:
    return f"{name}({', '.join(f'{k}={_short_repr(v)}' for k, v in arguments.items())})"


def _format_duration(seconds: float) -> str:
    return f"{seconds:.1f}s, {seconds / 60:.1f}min"


def load_entry(store: Store, entry: PurePath, meta: dict, mmap_mode: str | None,
               trust_foreign_pickles: bool) -> Any:
    """Load an entry of a store that is not read in place (a remote one) from its
    local copy.

    Raises
    ------
    persistence.UntrustedEntry
        If it needs unpickling and the store cannot tell who wrote it.
    persistence.EntryDamaged
        If it cannot be read or does not match its metadata.
    """
    if (not store.owners_known and not trust_foreign_pickles
            and meta.get("skeleton") == "pickle"):
        raise persistence.UntrustedEntry(
            f"it holds a pickle in {store.location}, and whoever can write there chose "
            f"its bytes; unpickling them could run their code"
        )
    try:
        local = store.fetch(entry, meta)
    except OSError as exc:
        raise persistence.EntryDamaged(f"cannot be read: {exc}") from exc
    try:
        return persistence.load(local, meta, mmap_mode, trust_foreign_pickles)
    finally:
        store.release(local)


class MemorizedResult:
    """A reference to a stored result, as returned by ``call_and_shelve``.

    Pickles cheaply, so it can be passed to other processes and loaded there.
    """

    def __init__(self, location: str, entry: PurePath, func_name: str,
                 mmap_mode: str | None = None, verbose: int = 0,
                 trust_foreign_pickles: bool = False,
                 storage_options: dict | None = None, local_cache: str | None = None) -> None:
        self.location = location
        # A local folder, or a path inside the bucket of a remote location.
        self.entry = entry if isinstance(entry, PurePath) else Path(entry)
        self.func_name = func_name
        self.mmap_mode = mmap_mode
        self.verbose = verbose
        self.trust_foreign_pickles = trust_foreign_pickles
        self.storage_options = storage_options
        self.local_cache = local_cache

    _metadata: dict[str, Any] | None = None  # read on first use (see metadata)

    def _store(self) -> Store:
        return open_store(self.location, self.storage_options, self.local_cache)

    @property
    def args_id(self) -> str:
        """The entry key (joblib's name for it)."""
        return self.entry.name

    @property
    def func_id(self) -> str:
        """The function's folder, ``<module>/<qualname>`` (joblib's name for it)."""
        return f"{self.entry.parent.parent.name}/{self.entry.parent.name}"

    func = func_id  # as in joblib, where ``func`` is the identifier too

    @property
    def metadata(self) -> dict[str, Any]:
        """``duration``, ``time`` and ``input_args`` of the call that stored the result
        (read from the entry on first access; empty if it is gone)."""
        if self._metadata is None:
            try:
                meta = self._store().read_meta(self.entry)
            except (ValueError, KeyError, OSError):
                meta = None
            self._metadata = MemorizedFunc._metadata(meta) if meta is not None else {}
        return self._metadata

    @property
    def duration(self) -> float | None:
        """Seconds the call that stored the result took."""
        return self.metadata.get("duration")

    def get(self) -> Any:
        """Load the stored result.

        Raises
        ------
        KeyError
            If the entry was cleared or is damaged.
        """
        store = self._store()
        try:
            meta = store.read_meta(self.entry)
            if meta is None:
                raise persistence.EntryDamaged("the entry does not exist")
            if store.in_place:
                return persistence.load(self.entry, meta, self.mmap_mode,
                                        self.trust_foreign_pickles)
            mmap_mode = self.mmap_mode
            if mmap_mode is not None and mmap_mode not in store.mmap_modes:
                mmap_mode = store.mmap_fallback(mmap_mode)
            return load_entry(store, self.entry, meta, mmap_mode, self.trust_foreign_pickles)
        except (persistence.EntryDamaged, ValueError, KeyError) as exc:
            raise KeyError(
                f"no stored result of {self.func_name} in {store.url(self.entry)}: {exc}"
            ) from None

    def clear(self) -> None:
        """Delete the stored result."""
        self._store().delete(self.entry)

    def __repr__(self) -> str:
        return display.result_repr(self)

    def _repr_html_(self) -> str | None:
        if not isinstance(self.entry, Path):
            return None  # a remote entry: the HTML view reads local folders (plain repr)
        return display.result_html(self)


class NotMemorizedResult:
    """The result of ``call_and_shelve`` when caching is off: holds the value itself."""

    def __init__(self, value: Any) -> None:
        self.value = value
        self.valid = True

    def get(self) -> Any:
        """Return the value (KeyError once cleared)."""
        if not self.valid:
            raise KeyError("no value: the result was cleared")
        return self.value

    def clear(self) -> None:
        """Forget the value."""
        self.valid = False
        self.value = None

    def __repr__(self) -> str:
        return f"NotMemorizedResult({self.value!r})" if self.valid else "NotMemorizedResult()"


class NotMemorizedFunc:
    """The function itself, with the memorized-function surface: no caching."""

    def __init__(self, func: Callable) -> None:
        self.func = func
        functools.update_wrapper(self, func)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.func(*args, **kwargs)

    def call(self, *args: Any, **kwargs: Any) -> tuple[Any, dict]:
        """Run the function; return ``(output, {})``."""
        return self.func(*args, **kwargs), {}

    def call_and_shelve(self, *args: Any, **kwargs: Any) -> NotMemorizedResult:
        """Run the function; return its value wrapped like a stored result."""
        return NotMemorizedResult(self.func(*args, **kwargs))

    def check_call_in_cache(self, *args: Any, **kwargs: Any) -> bool:
        """Always False: nothing is cached."""
        return False

    def clear(self, warn: bool = True) -> None:
        """Nothing to clear."""

    def __repr__(self) -> str:
        return f"NotMemorizedFunc(func={self.func!r})"


class MemorizedFunc:
    """A function whose results are cached on disk; made by :meth:`Memory.cache`.

    Calling it returns the cached result for these arguments, or computes, stores
    and returns it.  A cache problem (damaged entry, full disk, read-only folder)
    warns and computes: the call always returns the function's value.
    """

    def __init__(
        self,
        func: Callable,
        location: str,
        ignore: Iterable[str] | None = None,
        mmap_mode: str | None = None,
        compress: Any = False,
        verbose: int = 1,
        cache_validation_callback: Callable[[dict], bool] | None = None,
        lock_timeout: float | None = 600.0,
        trust_foreign_pickles: bool = False,
        bytes_limit: int | None = None,
        storage_options: dict | None = None,
        local_cache: str | None = None,
    ) -> None:
        check_mmap_mode(mmap_mode)
        self.func = func
        self.location = location
        self.ignore = list(ignore or ())
        self.mmap_mode = mmap_mode
        self.compress = compress
        self.compression: Compression | None = parse_compress(compress)
        self.verbose = verbose
        self.cache_validation_callback = cache_validation_callback
        self.lock_timeout = lock_timeout
        self.trust_foreign_pickles = trust_foreign_pickles
        self.bytes_limit = bytes_limit
        self.storage_options = storage_options
        self.local_cache = local_cache
        self.info = FunctionInfo(func, self.ignore)
        self._store: Store | None = None
        self._recorded_code: str | None = None
        self._warned_uncovered: str | None = None
        self._warned_compressed_mmap = False
        self._warned_unmappable = False
        functools.update_wrapper(self, func)

    def __reduce__(self) -> tuple:
        # The module travels too: a script's function, rebuilt by cloudpickle in a
        # worker, no longer knows the script it came from, and must find the same entries.
        return (
            _rebuild,
            (self.info.module, self.func, self.location, self.ignore, self.mmap_mode,
             self.compress, self.verbose, self.cache_validation_callback, self.lock_timeout,
             self.trust_foreign_pickles, self.bytes_limit, self.storage_options,
             self.local_cache),
        )

    def __repr__(self) -> str:
        return display.func_repr(self)

    def _repr_html_(self) -> str:
        return display.func_html(self)

    @property
    def func_id(self) -> str:
        """``module/qualname`` of the function's folder."""
        return "/".join(self.info.folder)

    # --- the pieces of a call --------------------------------------------------------------

    @property
    def store(self) -> Store | None:
        """The store, or None when the location cannot be used (warns at each call)."""
        if self._store is None:
            try:
                self._store = open_store(self.location, self.storage_options, self.local_cache)
            except OSError as exc:
                warnings.warn(
                    f"cannot use cache location {self.location!r} ({exc}); "
                    f"{self.info.name} runs without caching",
                    CacheWarning, stacklevel=4,
                )
                return None
        return self._store

    def _key(self, args: tuple, kwargs: dict) -> tuple[str, dict[str, Any]]:
        arguments = self.info.bind(args, kwargs)
        code = self.info.code_digest
        if self.info.code.uncovered and code != self._warned_uncovered:
            self._warned_uncovered = code
            warnings.warn(
                f"{self.info.name}: {', '.join(self.info.code.uncovered)} cannot be hashed, "
                f"so the cache key does not change when it does; pass it as an argument "
                f"if it decides the result",
                CodeNotCoveredWarning, stacklevel=4,
            )
        try:
            return hash_obj((code, arguments)), arguments
        except (TypeError, ValueError) as exc:
            for name, value in arguments.items():
                try:
                    hash_obj(value)
                except (TypeError, ValueError) as arg_exc:
                    raise UnhashableArgumentError(
                        f"argument {name!r} of {self.info.name}() cannot be hashed into a "
                        f"cache key: {arg_exc}. Pass it in `ignore=` if it does not change "
                        f"the result."
                    ) from None
            raise UnhashableArgumentError(f"cannot hash the arguments: {exc}") from None

    def _entry(self, args: tuple, kwargs: dict) -> tuple[PurePath | None, dict[str, Any]]:
        key, arguments = self._key(args, kwargs)
        store = self.store
        if store is None:
            return None, arguments
        return store.entry_dir(self.info.folder, key), arguments

    def _load(self, entry: PurePath, is_hit: bool = True) -> tuple[Any, dict | None, bool]:
        """Return (result or _MISS, metadata, damaged); ``is_hit`` False for the reload
        right after a store (not counted as a hit)."""
        store = self.store
        try:
            meta = store.read_meta(entry)
        except OutdatedEntry:
            return _MISS, None, True  # an upgrade: recompute and replace, quietly
        except (ValueError, KeyError, OSError) as exc:
            self._warn_damaged(entry, exc)
            return _MISS, None, True
        if meta is None:
            return _MISS, None, False
        if self.cache_validation_callback is not None and not self.cache_validation_callback(
            self._metadata(meta)
        ):
            return _MISS, meta, True
        mmap_mode = self.mmap_mode
        if mmap_mode is not None and any(a["codec"] for a in meta["arrays"].values()):
            self._warn_compressed_mmap()
            mmap_mode = None
        if mmap_mode is not None and mmap_mode not in store.mmap_modes:
            mmap_mode = self._warn_unmappable(store, mmap_mode)
        t0 = time.perf_counter()
        try:
            if store.in_place:
                result = persistence.load(entry, meta, mmap_mode, self.trust_foreign_pickles)
            else:
                result = load_entry(store, entry, meta, mmap_mode, self.trust_foreign_pickles)
        except persistence.UntrustedEntry as exc:
            warnings.warn(
                f"cache entry {store.url(entry)} of {self.info.name} is not loaded: {exc}; "
                f"recomputing "
                f"(pass trust_foreign_pickles=True to Memory to load it)",
                UntrustedEntryWarning, stacklevel=4,
            )
            # Replacing it makes it ours where files have owners; in a bucket nobody
            # owns it, and a replacement would be as untrusted.
            return _MISS, meta, store.owners_known
        except persistence.EntryDamaged as exc:
            if self._replaced_since(entry, meta):
                # Cleared or replaced while we read it (memory.clear() during a call, an
                # eviction, another writer): a miss, not damage.
                return _MISS, None, False
            self._warn_damaged(entry, exc)
            return _MISS, meta, True
        boot = boot_id()
        if meta.get("boot") != boot:
            # Written before the last reboot: a power loss may have left files of the
            # right size with stale bytes, which a memory-mapped hit (sizes only) misses.
            # Checked in full once, then marked (loads without mmap_mode just did it).
            problems = persistence.verify(entry, meta) if mmap_mode is not None else []
            if problems:
                self._warn_damaged(entry, problems[0])
                return _MISS, meta, True
            store.mark_checked(entry, meta, boot)
        if is_hit:
            store.record("H", entry, _loaded_nbytes(meta), float(meta.get("duration") or 0))
        if self.verbose > 4:
            print(f"[Memory]{_format_duration(time.perf_counter() - t0)}   : "
                  f"Loading {self.info.qualname} from {entry}")
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("hit %s in %s (%.1f ms, saves %.3f s)", self.info.name, entry.name,
                         (time.perf_counter() - t0) * 1e3, float(meta.get("duration") or 0))
        return result, meta, False

    def _replaced_since(self, entry: PurePath, meta: dict) -> bool:
        try:
            return self.store.read_meta(entry) != meta
        except (ValueError, KeyError, OSError):
            return False

    def _warn_damaged(self, entry: PurePath, exc: BaseException) -> None:
        where = self.store.url(entry)
        logger.info("damaged entry %s of %s: %s", where, self.info.name, exc)
        warnings.warn(
            f"cache entry {where} of {self.info.name} is damaged ({exc}); recomputing",
            DamagedEntryWarning, stacklevel=5,
        )

    def _warn_compressed_mmap(self) -> None:
        if not self._warned_compressed_mmap:
            self._warned_compressed_mmap = True
            warnings.warn(
                f"{self.info.name}: compressed results cannot be memory-mapped; "
                f"mmap_mode={self.mmap_mode!r} loads them into memory",
                UserWarning, stacklevel=5,
            )

    def _warn_unmappable(self, store: Store, mmap_mode: str) -> str | None:
        """The mode a store that cannot map ``mmap_mode`` loads with; warns once."""
        fallback = store.mmap_fallback(mmap_mode)
        if not self._warned_unmappable:
            self._warned_unmappable = True
            how = ("loads them into memory" if fallback is None else
                   f"maps their local copies with mmap_mode={fallback!r}")
            warnings.warn(
                f"{self.info.name}: results in {store.location} cannot be memory-mapped "
                f"with mmap_mode={mmap_mode!r}; it {how}"
                + (" (pass local_cache= to Memory for memory-mappable local copies)"
                   if fallback is None else ""),
                UserWarning, stacklevel=5,
            )
        return fallback

    @staticmethod
    def _metadata(meta: dict) -> dict:
        return {"duration": meta.get("duration"), "time": meta.get("created"),
                "input_args": meta.get("args", {})}

    def _wait_for_other_writer(self, entry: PurePath) -> Any:
        """Take the compute lock, or wait for the holder's result.

        Returns (lock or None, (result, metadata) or _MISS).
        """
        store = self.store
        if self.lock_timeout is None:
            return None, _MISS
        deadline = time.monotonic() + self.lock_timeout
        pause = 0.01
        while True:
            try:
                lock = store.try_lock(entry)
            except OSError:
                return None, _MISS  # e.g. a read-only location: just compute
            if lock is not None:
                return lock, _MISS
            if time.monotonic() > deadline:
                return None, _MISS  # give up waiting: compute ourselves
            time.sleep(pause)
            pause = min(pause * 2, _LOCK_POLL_MAX)
            result, meta, _ = self._load(entry)
            if result is not _MISS:
                return None, (result, meta)

    def _compute_and_store(
        self, entry: PurePath | None, arguments: dict, args: tuple, kwargs: dict, replace: bool
    ) -> tuple[Any, dict]:
        if self.verbose > 0:
            print("_" * 80)
            print(f"[Memory] Calling {self.info.name}...")
            print(_format_call(self.info.qualname, arguments))
        start = time.time()
        t0 = time.perf_counter()
        output = self.func(*args, **kwargs)
        duration = time.perf_counter() - t0
        if self.verbose > 0:
            tail = f"{self.info.qualname} - {_format_duration(duration)}"
            print(tail.rjust(80, "_"))
        metadata = {"duration": duration, "time": start,
                    "input_args": {k: _short_repr(v) for k, v in arguments.items()}}
        if entry is None:
            return output, metadata
        store = self.store
        store.record("M", entry, 0, duration)
        tmp = None
        try:
            code = self.info.code_digest
            if code != self._recorded_code:  # code.json is for `info` and eviction
                store.record_code(self.info.folder, self.info.name, code)
                self._recorded_code = code
            tmp = store.new_entry(entry)
            meta = persistence.dump(output, tmp, self.compression)
            meta.update(function=self.info.name, code=code, boot=boot_id(),
                        args=metadata["input_args"], created=start, duration=duration)
            published = store.publish(tmp, entry, meta, replace=replace)
            if logger.isEnabledFor(logging.INFO):
                logger.info("%s %s in %s: computed in %.3f s%s", "stored" if published else
                            "another process stored", self.info.name, entry.name, duration,
                            f", {_loaded_nbytes(meta)} bytes of arrays" if published else "")
        except BaseException as exc:
            if tmp is not None:
                store.discard(tmp)
            if not isinstance(exc, Exception):
                raise  # KeyboardInterrupt: nothing half-written stays behind
            warnings.warn(
                f"the result of {self.info.name} could not be cached "
                f"({type(exc).__name__}: {exc}); it is returned without caching",
                UnstorableResultWarning, stacklevel=4,
            )
            return output, metadata
        if self.mmap_mode is not None and (store.in_place or store.mmap_modes):
            # Like joblib: the first call returns what later hits return (memmaps); a
            # store that loads hits into memory would only download what we hold.
            stored, _, _ = self._load(entry, is_hit=False)
            if stored is not _MISS:
                output = stored
        if self.bytes_limit is not None:
            try:
                enforce_bytes_limit(store, self.bytes_limit)
            except Exception as exc:  # the value is computed: never lose it over this
                logger.warning("cannot keep %s under its bytes_limit: %s", self.location, exc)
        return output, metadata

    def _cached_call(self, args: tuple, kwargs: dict, force: bool = False) -> tuple[Any, dict]:
        entry, arguments = self._entry(args, kwargs)
        if self.verbose >= 10:
            logger.info("Querying %s with signature %s (entry %s)", self.info.name,
                        _format_call(self.info.qualname, arguments), entry)
        if entry is None:
            return self._compute_and_store(None, arguments, args, kwargs, False)
        damaged = force
        if not force:
            result, meta, damaged = self._load(entry)
            if result is not _MISS:
                return result, self._metadata(meta)
        lock, loaded = (None, _MISS) if force else self._wait_for_other_writer(entry)
        if loaded is not _MISS:
            result, meta = loaded  # another process computed it while we waited
            return result, self._metadata(meta)
        try:
            if lock is not None and not damaged:
                # Another process may have published while we waited for the lock.
                result, meta, damaged = self._load(entry)
                if result is not _MISS:
                    return result, self._metadata(meta)
            return self._compute_and_store(entry, arguments, args, kwargs, replace=damaged)
        finally:
            if lock is not None:
                lock.release()

    # --- public surface --------------------------------------------------------------------

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._cached_call(args, kwargs)[0]

    def call(self, *args: Any, **kwargs: Any) -> tuple[Any, dict]:
        """Run the function even if cached, store the result and return it.

        Returns
        -------
        output : object
            The function's return value.
        metadata : dict
            ``duration`` (seconds), ``time`` (start, seconds since the epoch) and
            ``input_args`` (short reprs).
        """
        return self._cached_call(args, kwargs, force=True)

    def call_and_shelve(self, *args: Any, **kwargs: Any) -> MemorizedResult | NotMemorizedResult:
        """Compute the result if needed and return a reference to it, not the value.

        Returns
        -------
        MemorizedResult
            Call ``.get()`` to load the value and ``.clear()`` to delete it.
        """
        entry, _ = self._entry(args, kwargs)
        if entry is None:
            return NotMemorizedResult(self.func(*args, **kwargs))
        if not self._in_cache(entry):
            output, _ = self._cached_call(args, kwargs)
            if not self._in_cache(entry):  # could not be stored: keep the value itself
                return NotMemorizedResult(output)
        return MemorizedResult(self.location, entry, self.info.name, self.mmap_mode,
                               self.verbose, self.trust_foreign_pickles,
                               self.storage_options, self.local_cache)

    def _in_cache(self, entry: PurePath) -> bool:
        try:
            meta = self.store.read_meta(entry)
        except (ValueError, KeyError, OSError):
            return False
        if meta is None:
            return False
        return self.cache_validation_callback is None or bool(
            self.cache_validation_callback(self._metadata(meta))
        )

    def check_call_in_cache(self, *args: Any, **kwargs: Any) -> bool:
        """Whether the result of this call is in the cache (the function is not run)."""
        entry, _ = self._entry(args, kwargs)
        return entry is not None and self._in_cache(entry)

    def stats(self) -> dict[str, float]:
        """This function's counters: see :meth:`Memory.stats`."""
        store = self.store
        found = store.stats().get(self.func_id) if store is not None else None
        return found or dict.fromkeys(FUNCTION_STATS, 0)

    def clear(self, warn: bool = True) -> None:
        """Delete every cached result of this function."""
        store = self.store
        if store is None:
            return
        if warn and self.verbose > 0:
            print(f"[Memory] Clearing function cache of {self.info.name}")
        store.clear(self.info.folder)


def _loaded_nbytes(meta: dict) -> int:
    return sum(int(spec.get("nbytes") or 0) for spec in meta.get("arrays", {}).values())


def _rebuild(module: str, *args: Any) -> MemorizedFunc:
    func = MemorizedFunc(*args)
    func.info.module = module
    return func
