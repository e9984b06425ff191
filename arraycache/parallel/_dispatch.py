"""One ``Parallel`` call: batching, dispatch, collection, errors and cleanup.

Everything runs in the caller's thread: batches are pickled and submitted while
fewer than ``pre_dispatch`` are in flight, and each completion refills the queue.
"""

from __future__ import annotations

import concurrent.futures as cf
import concurrent.futures.process
import os
import shutil
import tempfile
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

from ._backends import ParallelBackend
from ._config import UNSET, cpu_count, nesting_limit
from ._errors import ParallelTimeoutError, WorkerDiedError
from ._folders import FOLDERS, call_folder_name, make_private_dir, pick_root, shm_root
from ._loky import ShutdownExecutorError
from ._pickling import (
    Task,
    _sendable_exception,
    dumps_batch,
    loads_results,
    run_batch_in_worker,
    run_tasks,
)
from ._progress import Progress
from ._sharing import CallSharing, ResultSpec
from ._timing import BatchClock

__all__ = ["CallRun", "run_tasks_elsewhere"]


def _check_task(item: Any, index: int) -> Task:
    try:
        func, args, kwargs = item
    except (TypeError, ValueError):
        raise TypeError(
            f"task {index} is a {type(item).__name__!r}, not a call made with delayed(f)(...)"
        ) from None
    if not callable(func):
        raise TypeError(f"task {index}: {func!r} is not callable")
    return func, tuple(args), dict(kwargs)


def _tasks(first: int, last: int) -> str:
    return f"task {first}" if first == last else f"tasks {first} to {last}"


def _shut_down(first: int, n: int) -> RuntimeError:
    return RuntimeError(
        f"the worker processes for {_tasks(first, first + n - 1)} were shut down by another "
        "part of this program while this call was running (loky's executor shut down, "
        "e.g. get_reusable_executor().shutdown()); the call cannot complete"
    )


# Calls in progress, to know whether killing shared workers would hit another call.
_LIVE_RUNS: weakref.WeakSet = weakref.WeakSet()
# Reentrant: a call collected by the garbage collector closes itself in whatever thread.
_LIVE_LOCK = threading.RLock()


def run_tasks_elsewhere(tasks: list[Task], nesting_limit: int) -> tuple[list, tuple | None, float]:
    """:func:`run_tasks` for a backend that pickles tasks itself (its exception must travel)."""
    results, error, duration = run_tasks(tasks, nesting_limit)
    if error is not None:
        position, exc, text = error
        error = (position, _sendable_exception(exc), text)
    return results, error, duration


class CallRun:
    """State of one call; :meth:`results` yields ``(index, value)`` pairs."""

    def __init__(
        self,
        backend: ParallelBackend,
        n_workers: int,
        iterable: Iterable,
        *,
        batch_size: int | str,
        pre_dispatch: int | str,
        timeout: float | None,
        ordered: bool,
        max_nbytes: int | None,
        mmap_mode: str | None,
        temp_folder: str | None,
        progress: Progress,
        max_shared_bytes: Any = UNSET,
        stop_backend: bool,
    ) -> None:
        self.backend = backend
        self.n_workers = n_workers
        self.timeout = timeout
        self.ordered = ordered
        self.progress = progress
        self._stop_backend = stop_backend
        self._iterator: Iterator | None = iter(iterable)
        self._sequential = not backend.uses_processes and n_workers == 1
        self._auto = batch_size == "auto" and not self._sequential
        self._sizer = backend.batch_sizer()
        # Tasks pickled by the backend itself (one written for joblib, maybe remote).
        self._runner = run_tasks if backend.supports_sharedmem else run_tasks_elsewhere
        self._fixed_size = 1 if batch_size == "auto" else int(batch_size)
        self._max_inflight = self._inflight_limit(pre_dispatch)
        self._ready: deque[tuple[int, list[Task]]] = deque()
        self._inflight: dict[cf.Future, tuple[int, int, float | None]] = {}
        self._done: dict[int, list] = {}
        self._n_pulled = 0
        self._started = False
        self.n_completed = 0
        self._closed = False
        self._close_lock = threading.Lock()
        # Tasks of a process backend get a share of the CPUs for their own Parallel calls;
        # inline tasks keep the caller's limit.
        self._nesting = (
            nesting_limit() if self._sequential else max(1, cpu_count() // max(n_workers, 1))
        )
        self._sharing: CallSharing | None = None
        self._spec: ResultSpec | None = None
        self._call_folders: list[str] = []
        self._reserved_roots: list[str] = []
        #: Why the call was aborted before its results were all read (then reading on
        #: raises RuntimeError with it, rather than ending early as if complete).
        self.abandoned: str | None = None
        # A backend that ships pickled batches its own way (dask): see call_channel.
        self._channel: Any = None
        if not backend.uses_processes and not self._sequential:
            self._channel = backend.call_channel(max_nbytes, mmap_mode, max_shared_bytes, timeout)
        if backend.uses_processes:
            bound = {} if max_shared_bytes is UNSET else {"max_shared_bytes": max_shared_bytes}
            self._sharing = CallSharing(max_nbytes, mmap_mode, temp_folder, **bound)
            name = call_folder_name()
            roots = [pick_root(0, temp_folder)]
            if temp_folder is None:
                roots = [r for r in (shm_root(), tempfile.gettempdir()) if r is not None]
            folders = {root: os.path.join(FOLDERS.reserve(root), name) for root in roots}
            self._reserved_roots = list(folders)  # released by close()
            self._call_folders = list(folders.values())
            self._spec = ResultSpec(max_nbytes, mmap_mode, temp_folder, folders)
        self._clock = None if timeout is None or self._sequential else self._make_clock()
        with _LIVE_LOCK:
            _LIVE_RUNS.add(self)
        backend.start_call()

    def _make_clock(self) -> BatchClock:
        if self._call_folders:
            folder = self._call_folders[0]
            try:
                FOLDERS.folder(os.path.dirname(os.path.dirname(folder)))
                make_private_dir(folder)
            except OSError:
                pass  # no markers: count from free workers instead
            else:
                return BatchClock("marker", folder)
        return BatchClock("running" if self.backend.reports_running else "slots")

    def _inflight_limit(self, pre_dispatch: int | str) -> float:
        if self._sequential:
            return 1
        if pre_dispatch == "all":
            return float("inf")
        if isinstance(pre_dispatch, str):
            # joblib accepts expressions such as '2 * n_jobs'.
            value = eval(pre_dispatch, {"__builtins__": {}}, {"n_jobs": self.n_workers})
        else:
            value = pre_dispatch
        return max(1, int(value))

    # --- dispatch ----------------------------------------------------------------------------

    @property
    def all_dispatched(self) -> bool:
        return self._iterator is None and not self._ready

    @property
    def n_dispatched(self) -> int:
        return self._n_pulled - sum(len(tasks) for _, tasks in self._ready)

    def _pull(self) -> None:
        """Move tasks from the iterable to the ready queue, cut into batches."""
        assert self._iterator is not None
        size = self._sizer.size if self._auto else self._fixed_size
        wanted = None
        if self._max_inflight != float("inf"):
            # A few batches ahead, but never more than the free pre_dispatch slots take:
            # pre_dispatch=3 pulls 3 tasks before the first completes, as in joblib.
            free = int(self._max_inflight) - len(self._inflight)
            wanted = size * max(1, min(self.n_workers, free))
        chunk = []
        for item in self._iterator:
            chunk.append(_check_task(item, self._n_pulled + len(chunk)))
            if wanted is not None and len(chunk) >= wanted:
                break
        else:
            self._iterator = None
            if self._auto:
                # Last tasks: smaller batches so that all workers finish together.
                size = max(1, min(size, len(chunk) // (10 * self.n_workers)))
        for i in range(0, len(chunk), size):
            self._ready.append((self._n_pulled + i, chunk[i : i + size]))
        self._n_pulled += len(chunk)

    def _fill(self) -> None:
        while len(self._inflight) < self._max_inflight:
            if not self._ready:
                if self._iterator is None:
                    return
                self._pull()
                if not self._ready:
                    return
            first, tasks = self._ready.popleft()
            self._submit(first, tasks)

    def _submit(self, first: int, tasks: list[Task]) -> None:
        if self._channel is not None:
            started = None
            if self._clock is not None and self._clock.kind == "slots":
                started = time.monotonic() if len(self._inflight) < self.n_workers else None
            self._inflight[self._channel.send(first, tasks, self._nesting)] = (
                first, len(tasks), started,
            )
            return
        if self._sharing is not None:
            assert self._spec is not None
            payload = dumps_batch(tasks, first, self._sharing.reference, self._spec, self._nesting)
            fn, args = run_batch_in_worker, (payload,)
        else:
            fn, args = self._runner, (tasks, self._nesting)
        started = None
        if self._clock is not None:
            fn, args = self._clock.submission(first, fn, args)
            if self._clock.kind == "slots" and len(self._inflight) < self.n_workers:
                started = time.monotonic()
        try:
            future = self.backend.submit(fn, *args)
        except ShutdownExecutorError as exc:
            raise _shut_down(first, len(tasks)) from exc
        self._inflight[future] = (first, len(tasks), started)

    # --- collection --------------------------------------------------------------------------

    def _wait(self) -> set[cf.Future]:
        if self._clock is None:
            done, _ = cf.wait(self._inflight, return_when=cf.FIRST_COMPLETED)
            return done
        assert self.timeout is not None
        while True:
            now = time.monotonic()
            deadline = None
            for future, (first, n, started) in list(self._inflight.items()):
                if future.done():
                    continue
                if started is None:
                    started = self._clock.started(future, first, now)
                    if started is not None:
                        self._inflight[future] = (first, n, started)
                if started is not None:
                    if now - started > self.timeout:
                        raise ParallelTimeoutError(
                            f"{_tasks(first, first + n - 1)} did not finish within "
                            f"timeout={self.timeout} s"
                        )
                    end = started + self.timeout
                    deadline = end if deadline is None else min(deadline, end)
            # Wake up at the nearest deadline, and now and then to see batches start.
            wait = min(max(self.timeout / 10, 0.01), 1.0)
            if deadline is not None:
                wait = min(wait, max(deadline - now, 0.0) + 0.001)
            done, _ = cf.wait(self._inflight, timeout=wait, return_when=cf.FIRST_COMPLETED)
            if done:
                return done

    def _outcome(self, future: cf.Future, first: int, n: int) -> list:
        try:
            outcome = future.result()
        except concurrent.futures.process.BrokenProcessPool as exc:
            # Every batch in flight fails together: name them all.
            firsts = [first] + [f for f, _, _ in self._inflight.values()]
            lasts = [first + n - 1] + [f + k - 1 for f, k, _ in self._inflight.values()]
            raise WorkerDiedError(
                "a worker process died while running one of "
                f"{_tasks(min(firsts), max(lasts))}: "
                "killed by a signal or by the OS (often for using too much memory; see "
                "`dmesg`), or crashed (e.g. a segfault in compiled code). The other tasks "
                f"were cancelled.\n({type(exc).__name__}: {exc})"
            ) from exc
        except ShutdownExecutorError as exc:
            raise _shut_down(first, n) from exc
        pickled = self._sharing is not None or self._channel is not None
        if pickled:
            results, error, duration = loads_results(outcome)
        else:
            results, error, duration = outcome
        if error is not None:
            position, exc, text = error
            # Crossed a process boundary (tblib, imported by distributed, may pickle
            # tracebacks too: a traceback does not prove the exception stayed here).
            if text and (pickled or exc.__traceback__ is None):
                exc.add_note(
                    f"\nThe exception above was raised in a worker, in task {first + position}:"
                    f"\n{text.rstrip()}"
                )
            raise exc
        if self._auto:
            self._sizer.record(n, duration)
        return results

    def start(self) -> None:
        """Send the first batches now (``Parallel`` does, before returning a generator)."""
        if not self._started:
            self._started = True
            self._fill()

    def results(self) -> Iterator[tuple[int, Any]]:
        """Run the call; yield ``(task index, result)`` in order, or as completed."""
        next_index = 0
        with self.backend.retrieval_context():
            self._check_abandoned()
            self.start()
            while self._inflight:
                done = self._wait()
                for future in sorted(done, key=lambda f: self._inflight[f][0]):
                    first, n, _ = self._inflight.pop(future)
                    values = self._outcome(future, first, n)
                    self.n_completed += len(values)
                    self._promote_waiting()
                    if self.ordered:
                        self._done[first] = values
                    else:
                        for i, value in enumerate(values):
                            yield first + i, value
                self._fill()
                self.progress.batch_done(
                    self.n_completed, self.n_dispatched, self.all_dispatched
                )
                while next_index in self._done:
                    values = self._done.pop(next_index)
                    for i, value in enumerate(values):
                        yield next_index + i, value
                    next_index += len(values)
            self._check_abandoned()
        self.progress.finished(self.n_completed)

    def _check_abandoned(self) -> None:
        if self.abandoned is not None:
            raise RuntimeError(self.abandoned)

    def _promote_waiting(self) -> None:
        # A completion frees a worker: the oldest queued batch starts now (for timeouts
        # counted from free workers).
        if self._clock is None or self._clock.kind != "slots":
            return
        for future, (first, n, started) in self._inflight.items():
            if started is None:
                self._inflight[future] = (first, n, time.monotonic())
                return

    # --- end ---------------------------------------------------------------------------------

    def _workers_shared_now(self) -> bool:
        """True if another live call runs on the same (shared) workers."""
        if not self.backend.shared_workers:
            return False
        kind = type(self.backend)
        with _LIVE_LOCK:
            runs = list(_LIVE_RUNS)
        return any(
            run is not self and not run._closed and type(run.backend) is kind for run in runs
        )

    def close(self, abort: bool) -> None:
        """Free what the call holds; with ``abort``, stop tasks still running first."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        try:
            if abort and self._inflight:
                running = [f for f in self._inflight if not f.cancel()]
                if any(not f.done() for f in running) and not self._workers_shared_now():
                    self.backend.abort()
                else:
                    # Tasks already running finish in the background, their results
                    # dropped: killing the workers would break another live call.
                    self.backend.cancelled()
            self._inflight.clear()
            self._ready.clear()
            # Results not handed out: drop them now, not when a traceback that still
            # references this call is cleared (their files go with them).
            self._done.clear()
            self._iterator = None
            self.backend.stop_call()
        finally:
            with _LIVE_LOCK:
                _LIVE_RUNS.discard(self)
            if self._sharing is not None:
                self._sharing.close()
            if self._channel is not None:
                self._channel.close(abort)
            for folder in self._call_folders:
                shutil.rmtree(folder, ignore_errors=True)
            # A temp_folder's process folder goes once no call uses it and it is empty.
            roots, self._reserved_roots = self._reserved_roots, []
            for root in roots:
                FOLDERS.release(root)
            if self._stop_backend:
                self.backend.stop()
