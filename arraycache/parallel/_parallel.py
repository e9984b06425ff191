"""``Parallel``: joblib's runner, with large arrays shared through memory-mapped files."""

from __future__ import annotations

import re
import threading
import warnings
import weakref
from collections.abc import Callable, Generator, Iterable
from typing import Any

from ._backends import (
    LokyBackend,
    MultiprocessingBackend,
    ParallelBackend,
    SequentialBackend,
    ThreadingBackend,
)
from ._config import (
    BACKENDS,
    UNSET,
    active_config,
    check_hints,
    default_backend_name,
    nesting_limit,
)
from ._dispatch import CallRun
from ._folders import FOLDERS, pick_root
from ._interrupts import sigint_deferred
from ._progress import Progress, check_progress, print_message
from ._resolve import make_backend

__all__ = ["Parallel"]

_UNSET: Any = UNSET
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _to_bytes(size: int | str | None) -> int | None:
    """``'1M'`` -> 1048576, as joblib's ``max_nbytes`` strings."""
    if size is None or isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)B?\s*", str(size).upper())
    if match is None:
        raise ValueError(f"max_nbytes: cannot read {size!r} as a size such as '1M' or 1024")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def _as_n_jobs(n_jobs: Any) -> int:
    """``n_jobs`` as joblib reads it: an int (``'2'`` and ``2.3`` give 2), never 0."""
    try:
        value = int(n_jobs)
    except (TypeError, ValueError):
        raise ValueError(f"n_jobs could not be converted to int: {n_jobs!r}") from None
    if value == 0:
        raise ValueError(
            "n_jobs == 0 in Parallel has no meaning; use a positive number, or -1 for all CPUs"
        )
    return value


class Parallel:
    """Run ``delayed`` calls in parallel, joblib-style, sharing large arrays through files.

    Parameters
    ----------
    n_jobs : int or None, default None
        Number of workers: ``-1`` all CPUs, ``-2`` all but one, ...; ``None`` means
        the ``parallel_config`` value when this ``Parallel`` is made, else 1 (which
        runs the tasks inline).
    backend : str, backend instance or multiprocessing context, optional
        ``'loky'`` (worker processes, the default), ``'threading'``,
        ``'multiprocessing'`` (a ``multiprocessing`` pool; a context such as
        ``multiprocessing.get_context('spawn')`` selects it with that start method),
        ``'sequential'``, or a name given to :func:`register_parallel_backend`.  A
        backend written for joblib (ray's, joblib-spark's, joblib's own) works too.
    return_as : {'list', 'generator', 'generator_unordered'}, default 'list'
        A list of the results in task order, a generator yielding them in task order
        as they become available, or one yielding them as tasks complete.
    verbose : int, default 0
        Progress messages to stderr (to stdout from 50): more with higher values,
        every batch above 10.
    timeout : float, optional
        Seconds a batch of tasks may run in a worker, counted from when a worker
        picks it up (not while it waits in a queue, nor while a new worker starts;
        unpickling it, with the imports that takes, counts); past it, the call is
        aborted and :class:`ParallelTimeoutError` is raised (both ``except
        TimeoutError`` and ``except multiprocessing.TimeoutError`` catch it).  Not
        applied when tasks run inline (``n_jobs=1``): a warning says so.
    pre_dispatch : int or str, default '2 * n_jobs'
        Batches sent ahead of completions, as a number, an expression of ``n_jobs``
        or ``'all'``; bounds how much of a lazy iterable is consumed ahead (with
        ``batch_size=1``, ``pre_dispatch=3`` takes 3 tasks before one completes).
    batch_size : int or 'auto', default 'auto'
        Tasks per batch sent to a worker.  ``'auto'`` grows batches until each runs
        for 0.2 to 2 s, so that many tiny tasks are not dominated by overhead.
    temp_folder : str, optional
        Where arrays sent to or from worker processes are written.  By default
        ``/dev/shm`` when it has room for the array, else the temporary directory.
    max_nbytes : int, str or None, default '1M'
        Arrays bigger than this are sent to worker processes (and results sent back)
        as memory-mapped files; ``None`` turns this off.  Arrays already backed by a
        file (``np.memmap``, cache hits with ``mmap_mode``) are always sent as a
        reference to their file, whatever their size, and never copied.
    mmap_mode : {'r', 'c', 'r+', 'w+', None}, default 'r'
        How workers map shared arrays, and the caller large results.  Copies written
        by arraycache are shared by content across tasks and calls, so they are
        mapped read-only ('r') or copy-on-write (any writable mode); ``None`` loads
        them in memory.  A writable ``np.memmap`` of yours stays writable in workers.
    prefer : {'processes', 'threads'}, optional
        Soft hint for the backend when none is given.
    require : {'sharedmem'}, optional
        Hard constraint: tasks must see the caller's memory (selects threads; a
        process backend set by ``parallel_config`` is replaced by threads, and its
        ``n_jobs`` with the default, as in joblib).
    initializer : callable, optional
        Called as ``initializer(*initargs)`` in each new worker process (or thread)
        before it runs tasks.  loky keeps its workers between calls while the
        initializer and its arguments stay the same; other ones get new workers.
        Not called when tasks run inline.
    initargs : tuple, default ()
        Arguments of ``initializer``.
    progress : bool or dict, default False
        Show a tqdm progress bar of the completed tasks (a widget in notebooks, a text
        bar in terminals; the total is known when the iterable has a ``len()``).  A
        dict is passed to ``tqdm`` (``{'desc': 'fit', 'file': sys.stdout}``).  Needs
        tqdm (``pip install 'arraycache[progress]'``): without it, a
        ``ProgressWarning`` says so once and the tasks run without a bar.  ``verbose``
        messages are printed as well, if asked for.
    **backend_kwargs
        Further options for the backend's workers, e.g. loky's ``idle_worker_timeout``
        or those of a backend written for joblib.

    Raises
    ------
    ValueError
        For an invalid ``n_jobs``, ``return_as``, ``batch_size``, ``mmap_mode``,
        ``prefer`` or ``require``, an unknown backend, or a backend that cannot
        satisfy ``require='sharedmem'``.

    Notes
    -----
    Used as a context manager, the workers (threads, a multiprocessing pool, or
    loky's processes) are kept for every call made inside the ``with`` block; else
    threads and multiprocessing pools last one call, and loky's reusable workers
    stay for the next one.  With ``return_as='generator'`` the workers start on the
    tasks when the call is made, as in joblib.  A call that ends early (error,
    interrupt, generator closed or collected) kills its loky workers to stop running
    tasks, unless another call is running on them (then its tasks finish unseen).

    Arrays written for a call stay in a private folder of this process
    (``arraycache-<pid>-<random>``, mode 0700) as long as the array they come from
    lives, so a later call with the same array does not write it again; large results
    live as long as the returned arrays.  In a ``temp_folder`` of yours, that folder
    and its ``.lock`` file go as soon as nothing in them is used any more (after the
    call, or after the ``with`` block), as with joblib; in ``/dev/shm`` and the
    temporary directory the folder stays, empty, for later calls, until the process
    exits.  An exception raised by a task is re-raised with its type; when it happened
    in a worker process, the worker's traceback is attached as a note.

    Examples
    --------
    >>> from math import sqrt
    >>> Parallel(n_jobs=2)(delayed(sqrt)(i**2) for i in range(4))
    [0.0, 1.0, 2.0, 3.0]
    """

    def __init__(
        self,
        n_jobs: int | None = None,
        backend: str | ParallelBackend | Any | None = None,
        return_as: str = "list",
        verbose: int = _UNSET,
        timeout: float | None = None,
        pre_dispatch: int | str = "2 * n_jobs",
        batch_size: int | str = "auto",
        temp_folder: str | None = _UNSET,
        max_nbytes: int | str | None = _UNSET,
        mmap_mode: str | None = _UNSET,
        prefer: str | None = _UNSET,
        require: str | None = _UNSET,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple = (),
        progress: bool | dict[str, Any] = _UNSET,
        **backend_kwargs: Any,
    ) -> None:
        config = active_config()

        def pick(value: Any, key: str) -> Any:
            return config[key] if value is _UNSET else value

        if return_as not in ("list", "generator", "generator_unordered"):
            raise ValueError(
                f"return_as must be 'list', 'generator' or 'generator_unordered', not {return_as!r}"
            )
        if batch_size != "auto" and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size must be 'auto' or a positive int, not {batch_size!r}")
        self.prefer = pick(prefer, "prefer")
        self.require = pick(require, "require")
        check_hints(self.prefer, self.require)
        self.return_as = return_as
        self.verbose = pick(verbose, "verbose") or 0
        self.progress = check_progress(pick(progress, "progress"))
        self.timeout = timeout
        self.pre_dispatch = pre_dispatch
        self.batch_size = batch_size
        self.temp_folder = pick(temp_folder, "temp_folder")
        self.max_nbytes = _to_bytes(pick(max_nbytes, "max_nbytes"))
        # A parallel_config setting only (not a joblib parameter); unset: the process-wide
        # bound of _pool.set_max_shared_bytes.
        self._max_shared_bytes = config.get("max_shared_bytes", _UNSET)
        self.mmap_mode = pick(mmap_mode, "mmap_mode")
        if self.mmap_mode not in ("r", "c", "r+", "w+", None):
            raise ValueError(f"mmap_mode must be 'r', 'c', 'r+', 'w+' or None, not {mmap_mode!r}")
        self._options = dict(backend_kwargs)
        if initializer is not None or initargs:
            self._options.update(initializer=initializer, initargs=tuple(initargs))
        settings = {
            "max_nbytes": self.max_nbytes,
            "temp_folder": self.temp_folder,
            "mmap_mode": self.mmap_mode,
            "prefer": self.prefer,
            "require": self.require,
            "verbose": self.verbose,
        }
        self._backend, config_jobs = self._choose_backend(backend, config, settings)
        # Resolved now, as joblib does: a Parallel made inside parallel_config(n_jobs=...)
        # keeps that value after the block.
        if n_jobs is None and config_jobs:
            n_jobs = config["n_jobs"]
        if n_jobs is None:
            n_jobs = self._backend.default_n_jobs
        self.n_jobs = _as_n_jobs(n_jobs)
        self._managed = False
        self._reserved_root: str | None = None
        self._running: weakref.ref | None = None
        self._lock = threading.Lock()

    def _choose_backend(
        self, backend: Any, config: dict[str, Any], settings: dict[str, Any]
    ) -> tuple[ParallelBackend, bool]:
        """The backend, and whether the configured ``n_jobs`` applies to it."""
        explicit = backend is not None
        kwargs: dict[str, Any] = {}
        if backend is None and config["backend"] is not None:
            backend, kwargs = config["backend"], config["backend_kwargs"]
        if backend is None:
            name = default_backend_name()
            process_default = BACKENDS.get(name) in (LokyBackend, MultiprocessingBackend)
            if self.prefer == "threads" or self.require == "sharedmem":
                name = "threading"
            elif nesting_limit() is not None and process_default:
                # Inside a task: threads, capped by effective_n_jobs, not more processes.
                name = "threading"
            elif self.prefer == "processes" and BACKENDS.get(name) is ThreadingBackend:
                name = "loky"
            backend = name
        chosen = make_backend(backend, kwargs, settings)
        if self.require == "sharedmem" and not chosen.supports_sharedmem:
            if explicit:
                raise ValueError(
                    f"Backend {chosen.name} does not support shared memory, which "
                    "require='sharedmem' asks for: use threads, or drop require"
                )
            if self.verbose >= 10:
                # The backend came from parallel_config: joblib's message, printed as joblib.
                print(
                    "Using ThreadingBackend as joblib backend instead of "
                    f"{chosen.name} as the latter does not provide shared memory semantics."
                )
            # The configured n_jobs was meant for the configured backend.
            return ThreadingBackend(), False
        return chosen, True

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_jobs={self.n_jobs})"

    # --- context manager ---------------------------------------------------------------------

    def __enter__(self) -> Parallel:
        self._managed = True
        backend, _ = self._configure()
        if self.temp_folder is not None and backend.uses_processes:
            # As joblib's: the sharing folder in a temp_folder lasts as long as the block
            # (its copies stay there for the block's calls), and goes after it.
            self._reserved_root = pick_root(0, self.temp_folder)
            FOLDERS.reserve(self._reserved_root)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._managed = False
        try:
            # As joblib's: a generator call still running when the block ends is aborted
            # (queued tasks dropped, threads left to finish their task in the background),
            # so leaving the block does not wait for work nobody will read.
            run = self._running() if self._running is not None else None
            if run is not None and not run._closed:
                run.abandoned = (
                    "this Parallel call was aborted when its `with` block ended; consume "
                    "the generator inside the block"
                )
                _end(run, True)
            self._backend.stop()
        finally:
            root, self._reserved_root = self._reserved_root, None
            if root is not None:
                FOLDERS.release(root)

    def _print(self, msg: str) -> None:
        """Print a progress message (override to send them elsewhere)."""
        print_message(repr(self), self.verbose, msg)

    def _effective_n_jobs(self) -> int:
        """Workers a call would use now (joblib's private method, used by joblib's tests)."""
        if isinstance(self._backend, SequentialBackend):
            return 1
        return self._backend.effective_n_jobs(self.n_jobs)

    def _configure(self) -> tuple[ParallelBackend, int]:
        backend = self._backend
        if isinstance(backend, SequentialBackend):
            return backend, 1
        n_workers = backend.effective_n_jobs(self.n_jobs)
        if n_workers > 1:
            n_workers = backend.configure(n_workers, **self._options)
        if n_workers < 1:
            raise RuntimeError(f"{backend.name} has no active worker.")
        if n_workers == 1:
            # One worker: run inline, as joblib does (no process, no pickling).
            return SequentialBackend(), 1
        return backend, n_workers

    # --- calls -------------------------------------------------------------------------------

    def __call__(self, iterable: Iterable) -> list | Generator:
        """Run the tasks of ``iterable`` (made with ``delayed``).

        Returns
        -------
        list or generator
            As chosen by ``return_as``.

        Raises
        ------
        Exception
            The first exception raised by a task, with its own type.
        ParallelTimeoutError
            If a batch ran longer than ``timeout`` (a ``TimeoutError`` and a
            ``multiprocessing.TimeoutError``).
        WorkerDiedError
            If a worker process died while running tasks.
        TaskPicklingError
            If a task cannot be sent to a worker process (the message names it).
        """
        with self._lock:
            previous = self._running() if self._running is not None else None
            if previous is not None and not previous._closed:
                raise RuntimeError(
                    "This Parallel instance is already running: consume or close the "
                    "generator it returned first"
                )
            backend, n_workers = self._configure()
            if self.timeout is not None and not (backend.supports_timeout and n_workers > 1):
                warnings.warn(
                    f"The backend class {backend.name!r} does not support timeout. You have "
                    f"set 'timeout={self.timeout}' in Parallel but the 'timeout' parameter "
                    "will not be used.",
                    stacklevel=2,
                )
            n_tasks = len(iterable) if hasattr(iterable, "__len__") else None
            progress = Progress(repr(self), self.verbose, self._print, n_tasks, self.progress)
            progress.using(backend.name, n_workers)
            run = CallRun(
                backend,
                n_workers,
                iterable,
                batch_size=self.batch_size,
                pre_dispatch=self.pre_dispatch,
                timeout=self.timeout,
                ordered=self.return_as != "generator_unordered",
                max_nbytes=self.max_nbytes,
                max_shared_bytes=self._max_shared_bytes,
                mmap_mode=self.mmap_mode,
                temp_folder=self.temp_folder,
                progress=progress,
                stop_backend=not self._managed or backend is not self._backend,
            )
            self._running = weakref.ref(run)
        try:
            if self.return_as == "list":
                return [value for _, value in _drive(run)]
            if n_workers > 1:
                # As joblib: workers start on the tasks now, not when the generator is
                # first iterated (inline tasks stay lazy).
                run.start()
            generator = _values(_drive(run))
            # A generator dropped before it starts never runs its finally clause.
            weakref.finalize(generator, _end, run, True)
            return generator
        except BaseException:
            # Whatever _drive has not closed (an interrupt before it started); closing
            # twice does nothing.
            _end(run, True)
            raise


def _end(run: CallRun, abort: bool) -> None:
    """Close ``run``; Ctrl-C waits until its workers are stopped and its files removed."""
    with sigint_deferred():
        try:
            run.close(abort=abort)
        finally:
            run.progress.close()


def _drive(run: CallRun) -> Generator[tuple[int, Any], None, None]:
    """Yield the call's results; on any exit (error, interrupt, close) clean up."""
    try:
        yield from run.results()
    except BaseException:
        _end(run, True)
        raise
    _end(run, False)


def _values(pairs: Generator[tuple[int, Any], None, None]) -> Generator[Any, None, None]:
    try:
        for _, value in pairs:
            yield value
    finally:
        pairs.close()
