"""Pickling of batches to workers and of results back, with arrays as file references.

arraycache pickles tasks itself, in the caller's thread, before handing bytes to
loky: a task that cannot be pickled is reported at once, naming the culprit, and
the array reducer can depend on the call (its folder, ``max_nbytes``,
``mmap_mode``) while loky's reusable executor stays the same object across calls.
Functions and classes defined in ``__main__`` or notebooks go by value (cloudpickle).
"""

from __future__ import annotations

import contextlib
import io
import pickle
import threading
import time
import traceback
from collections.abc import Callable
from itertools import repeat
from typing import Any

import cloudpickle
import numpy as np

from ._config import set_nesting_limit
from ._errors import RemoteTaskError, TaskPicklingError
from ._sharing import Reference, ResultSpec, open_reference, result_reference

__all__ = ["ArrayReducer", "dumps_batch", "loads_results", "run_batch_in_worker"]

Task = tuple[Callable[..., Any], tuple, dict]


def _plain(arr: np.ndarray) -> np.ndarray:
    return arr


#: What a sender makes of an array: a file reference, a reduce value of its own (a
#: ``(callable, args)`` tuple, e.g. a key of data scattered to a dask cluster), or None
#: to pickle the bytes.
ArrayReducer = Callable[[np.ndarray], "Reference | tuple | None"]


class _ArrayPickler(cloudpickle.Pickler):
    """cloudpickle, with ndarrays/memmaps turned into :class:`Reference` when asked to."""

    def __init__(self, file: io.BytesIO, reference: ArrayReducer):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._reference = reference

    def reducer_override(self, obj: Any) -> Any:
        kind = type(obj)
        if kind is _At:  # first: one mark per result, kept cheap
            return _reached, (obj.index, obj.kind)
        if kind is np.ndarray or kind is np.memmap:
            ref = self._reference(obj)
            if ref is not None:
                return ref if type(ref) is tuple else (open_reference, (ref,))
            if kind is np.memmap:
                # A memmap that is not passed by reference arrives as a plain array.
                return _plain, (obj.view(np.ndarray),)
        return super().reducer_override(obj)


class _ObjectPickler(_ArrayPickler):
    """:class:`_ArrayPickler` that also lets ``objects`` replace any object it knows."""

    def __init__(self, file: io.BytesIO, reference: ArrayReducer,
                 objects: Callable[[Any], tuple | None]):
        super().__init__(file, reference)
        self._objects = objects

    def reducer_override(self, obj: Any) -> Any:
        reduced = self._objects(obj)
        return reduced if reduced is not None else super().reducer_override(obj)


def _dumps(obj: Any, reference: ArrayReducer,
           objects: Callable[[Any], tuple | None] | None = None) -> bytes:
    buffer = io.BytesIO()
    if objects is None:
        _ArrayPickler(buffer, reference).dump(obj)
    else:
        _ObjectPickler(buffer, reference, objects).dump(obj)
    return buffer.getvalue()


def _no_reference(_arr: np.ndarray) -> None:
    return None


def _culprit(tasks: list[Task], first_index: int, error: Exception) -> str:
    """Name the first part of ``tasks`` that does not pickle (arrays are not tried)."""
    for position, (func, args, kwargs) in enumerate(tasks):
        where = f"task {first_index + position}"
        parts = [(f"the function of {where}", func)]
        parts += [(f"argument {i} of {where}", arg) for i, arg in enumerate(args)]
        parts += [(f"keyword argument {key!r} of {where}", arg) for key, arg in kwargs.items()]
        for name, part in parts:
            try:
                _dumps(part, _no_reference)
            except Exception as exc:
                kind = type(part)
                return (
                    f"{name} (a '{kind.__module__}.{kind.__qualname__}') cannot be sent to "
                    f"a worker: {type(exc).__name__}: {exc}"
                )
    # Every part pickles on its own: what failed is the sharing of an array (its file).
    where = _tasks(first_index, first_index + len(tasks) - 1)
    return f"{where} cannot be sent to a worker: {type(error).__name__}: {error}"


def _tasks(first: int, last: int) -> str:
    return f"task {first}" if first == last else f"tasks {first} to {last}"


def dumps_batch(
    tasks: list[Task],
    first_index: int,
    reference: ArrayReducer,
    results: ResultSpec,
    nesting_limit: int,
    objects: Callable[[Any], tuple | None] | None = None,
) -> bytes:
    """Pickle a batch for a worker process.

    ``reference`` decides how each array goes (see :data:`ArrayReducer`); ``objects``,
    if given, may replace any other object by a reduce value of its own.

    Raises
    ------
    TaskPicklingError
        Naming the task and the argument that cannot be pickled.
    """
    try:
        return _dumps((nesting_limit, results, first_index, tasks), reference, objects)
    except Exception as exc:
        raise TaskPicklingError(_culprit(tasks, first_index, exc)) from exc


# --- worker side ---------------------------------------------------------------------------


def _sendable_exception(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling; else the same type with the same args and none of
    its attributes (what ``except`` clauses look at; the caller rebuilds it by calling the
    type with the args); else a :class:`RemoteTaskError` naming it.  The traceback text
    travels separately."""
    with contextlib.suppress(Exception):
        return _round_tripped(exc)
    with contextlib.suppress(Exception):
        return _round_tripped(type(exc).__new__(type(exc), *exc.args))
    return RemoteTaskError(f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}")


def _round_tripped(exc: BaseException) -> BaseException:
    pickle.loads(cloudpickle.dumps(exc))
    return exc


def run_tasks(tasks: list[Task], nesting_limit: int) -> tuple[list, tuple | None, float]:
    """Run a batch here: (results, (position, exception, traceback text) or None, seconds)."""
    previous = set_nesting_limit(nesting_limit)
    start = time.perf_counter()
    results: list = []
    error = None
    try:
        for position, (func, args, kwargs) in enumerate(tasks):
            try:
                results.append(func(*args, **kwargs))
            except BaseException as exc:
                # Skip this frame: the traceback starts in the task's function.
                tb = exc.__traceback__.tb_next if exc.__traceback__ else None
                text = "".join(traceback.format_exception(type(exc), exc, tb))
                error = (position, exc, text)
                break
    finally:
        set_nesting_limit(previous)
    return results, error, time.perf_counter() - start


class _At:
    """Marks, in a pickle of results, where what one task sent back starts.

    Unpickling calls :func:`_reached` at each mark, so when rebuilding a value fails in
    the caller (its class is not importable there, its ``__reduce__`` raises, its file
    is gone), the error can name the task.  A mark costs ~1.5 us (our reducer_override
    is Python), so a batch of plain numbers, strings and tuples of them (tiny tasks),
    which cannot fail to rebuild, gets no marks.
    """

    __slots__ = ("index", "kind")

    def __init__(self, index: int, kind: str) -> None:
        self.index, self.kind = index, kind

    def __reduce__(self) -> tuple:
        return _reached, (self.index, self.kind)


_rebuilding = threading.local()
_MARK = object()  # what a mark becomes once unpickled
_SCALARS = frozenset((int, float, complex, str, bytes, bool, type(None)))


def _reached(index: int, kind: str) -> object:
    _rebuilding.at = (index, kind)
    return _MARK


def _plain(value: Any) -> bool:
    """A number or string, or a tuple of them: nothing that can fail to unpickle."""
    kind = type(value)
    return kind in _SCALARS or (
        kind is tuple and all(map(_SCALARS.__contains__, map(type, value)))
    )


def _payload(
    results: list, first_index: int | None, error: tuple | None, duration: float,
    reference: Callable[[np.ndarray], Reference | None] = _no_reference,
) -> bytes:
    first = first_index or 0
    if all(map(_plain, results)):
        marked = results  # the common case of many tiny tasks: no marks
    else:
        marked = [None, None] * len(results)
        marked[::2] = map(_At, range(first, first + len(results)), repeat("result"))
        marked[1::2] = results
    known = error is not None and first_index is not None
    mark = _At(first + error[0], "exception") if known else None
    return _dumps((marked is not results, marked, mark, error, duration), reference)


def run_batch_in_worker(payload: bytes) -> bytes:
    """Entry point in a worker process: unpickle a batch, run it, pickle what it gave."""
    try:
        nesting_limit, spec, first_index, tasks = pickle.loads(payload)
    except BaseException as exc:
        text = traceback.format_exc()
        error = (0, _sendable_exception(exc), "while unpickling the batch:\n" + text)
        return _payload([], None, error, 0.0)
    results, error, duration = run_tasks(tasks, nesting_limit)
    if error is not None:
        position, exc, text = error
        error = (position, _sendable_exception(exc), text)

    def reference(arr: np.ndarray) -> Reference | None:
        return result_reference(arr, spec)

    try:
        return _payload(results, first_index, error, duration, reference)
    except Exception as exc:
        for position, value in enumerate(results):
            try:
                _dumps(value, reference)
            except Exception as value_exc:
                kind = type(value)
                failure = TaskPicklingError(
                    f"the result of task {first_index + position} (a '{kind.__module__}."
                    f"{kind.__qualname__}') cannot be sent back from the worker: "
                    f"{type(value_exc).__name__}: {value_exc}"
                )
                return _payload(results[:position], first_index, (position, failure, ""),
                                duration, reference)
        failure = TaskPicklingError(f"the results cannot be sent back: {exc}")
        return _payload([], first_index, (0, failure, traceback.format_exc()), duration)


def loads_results(data: bytes) -> tuple[list, tuple | None, float]:
    """Caller side of :func:`run_batch_in_worker`; large arrays come back as ``np.memmap``.

    An error while rebuilding a result or an exception gets a note naming its task.
    """
    _rebuilding.at = None
    try:
        has_marks, marked, _mark, error, duration = pickle.loads(data)
    except Exception as exc:
        at = _rebuilding.at
        if at is not None:
            index, kind = at
            what = "the result of" if kind == "result" else "the exception raised by"
            exc.add_note(
                f"(while rebuilding in the caller {what} task {index}, sent back by its worker)"
            )
        raise
    finally:
        _rebuilding.at = None
    results = marked[1::2] if has_marks else marked
    return results, error, duration
