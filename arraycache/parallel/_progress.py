"""Progress of a ``Parallel`` call: joblib's ``verbose`` lines, and a tqdm bar on request.

The bar (``Parallel(progress=True)``) counts completed tasks, against the number of
tasks when the iterable has a ``len()`` (else once all are dispatched).  tqdm is an
optional dependency (the ``progress`` extra), imported only when a bar is asked for;
``tqdm.auto`` gives a widget in notebooks and a text bar in terminals.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["Progress", "ProgressWarning", "check_progress", "print_message"]


class ProgressWarning(UserWarning):
    """A progress bar was asked for and cannot be shown (tqdm is not installed)."""


# The missing tqdm is said once per process, not at every call of a loop.
_warned_no_tqdm = [False]


def check_progress(value: Any) -> bool | dict[str, Any]:
    """``progress`` as given to ``Parallel``: a bool, or a dict of tqdm arguments.

    Raises
    ------
    TypeError
        For anything else.
    """
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, Mapping) and all(isinstance(key, str) for key in value):
        return dict(value)
    raise TypeError(
        "progress must be True, False or a dict of tqdm arguments (e.g. "
        f"{{'desc': 'fit', 'file': sys.stdout}}), not {value!r}"
    )


def _make_bar(progress: bool | dict[str, Any], total: int | None) -> Any:
    """A tqdm bar (``tqdm.auto``), or None if none is wanted or tqdm is missing."""
    if progress is False:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        if not _warned_no_tqdm[0]:
            _warned_no_tqdm[0] = True
            warnings.warn(
                "progress=True needs tqdm, which is not installed: the tasks run without "
                "a progress bar (pip install 'arraycache[progress]', or tqdm)",
                ProgressWarning,
                stacklevel=4,
            )
        return None
    options = {"total": total, "unit": "task"}
    if isinstance(progress, dict):
        options.update(progress)
    return tqdm(**options)


def _format_time(seconds: float) -> str:
    if seconds > 60:
        return f"{seconds / 60:4.1f}min"
    return f" {seconds:5.1f}s"


def _skip(index: int, verbose: int) -> bool:
    """True if the message for completed batch number ``index`` is not shown.

    Messages thin out on a square-root scale; higher ``verbose`` shows more, and
    above 10 every batch is reported.
    """
    if verbose > 10 or index == 0:
        return False
    scale = 0.5 * (11 - verbose) ** 2
    return int(math.sqrt((index + 1) / scale)) == int(math.sqrt(index / scale))


def print_message(name: str, verbose: int, message: str) -> None:
    """Print ``[name]: message`` as joblib does: to stderr, to stdout from ``verbose=50``."""
    if not verbose:
        return
    stream = sys.stderr if verbose < 50 else sys.stdout
    stream.write(f"[{name}]: {message}\n")
    stream.flush()


class Progress:
    """Writes ``[Parallel(n_jobs=2)]: Done   4 tasks      | elapsed:    0.1s`` lines.

    Like joblib: to stderr, or stdout when ``verbose >= 50``; nothing when 0.  Counts
    are padded to the width of the number of tasks when it is known (``len()`` of the
    iterable), else to 3.  With ``bar`` (True, or a dict of tqdm arguments) a tqdm bar
    counts the completed tasks too; :meth:`close` ends it (call it however the call
    ends).
    """

    def __init__(
        self,
        name: str,
        verbose: int,
        writer: Callable[[str], None] | None = None,
        n_tasks: int | None = None,
        bar: bool | dict[str, Any] = False,
    ) -> None:
        self.name = name
        self.verbose = verbose
        self.start = time.time()
        self.n_tasks = n_tasks
        self._width = len(str(n_tasks)) if n_tasks else 3
        self._writer = writer
        self._batches = 0
        self._bar = _make_bar(bar, n_tasks)

    def write(self, message: str) -> None:
        """Print one message line, prefixed by the runner's name."""
        if not self.verbose:
            return
        if self._writer is not None:
            self._writer(message)
        else:
            print_message(self.name, self.verbose, message)

    def using(self, backend_name: str, n_workers: int) -> None:
        """Announce the backend, once per call."""
        self.write(f"Using backend {backend_name} with {n_workers} concurrent workers.")

    def batch_done(self, completed: int, dispatched: int, all_dispatched: bool) -> None:
        """Report after a batch completed: ``completed`` tasks of ``dispatched`` so far."""
        if self._bar is not None:
            self._advance(completed, dispatched if all_dispatched else None)
        if not self.verbose:
            return
        index = self._batches
        self._batches += 1
        elapsed = time.time() - self.start
        if all_dispatched and completed == dispatched:
            return  # the "finished" line follows
        if _skip(index, self.verbose):
            return
        w = self._width
        if not all_dispatched:
            if self.n_tasks is not None:
                done = f"Done {completed:{w}d} out of {self.n_tasks:{w}d}"
            else:
                # Same width as "out of N", so that the columns line up.
                done = f"Done {completed:{w}d} tasks{' ' * (len('out of ') + w - len('tasks'))}"
            self.write(f"{done} | elapsed: {_format_time(elapsed)}")
        else:
            remaining = elapsed / max(completed, 1) * (dispatched - completed)
            self.write(
                f"Done {completed:{w}d} out of {dispatched:{w}d} | elapsed: "
                f"{_format_time(elapsed)} remaining: {_format_time(remaining)}"
            )

    def finished(self, completed: int) -> None:
        """The last line, once every task has completed."""
        if self._bar is not None:
            self._advance(completed, completed)
            self.close()
        elapsed = time.time() - self.start
        w = self._width
        self.write(
            f"Done {completed:{w}d} out of {completed:{w}d} | elapsed: "
            f"{_format_time(elapsed)} finished"
        )

    def _advance(self, completed: int, total: int | None) -> None:
        bar = self._bar
        if total is not None and bar.total != total:
            bar.total = total  # the iterable had no len(): known once all are dispatched
            bar.refresh()
        if completed > bar.n:
            bar.update(completed - bar.n)

    def close(self) -> None:
        """End the bar, if any, where it stands (an error or interrupt leaves it short)."""
        bar, self._bar = self._bar, None
        if bar is not None:
            bar.close()
