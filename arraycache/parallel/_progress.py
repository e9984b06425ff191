"""joblib-style progress messages for ``Parallel(verbose=...)``."""

from __future__ import annotations

import math
import sys
import time

__all__ = ["Progress"]


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


class Progress:
    """Writes ``[Parallel(n_jobs=2)]: Done   4 tasks      | elapsed:    0.1s`` lines.

    Like joblib: to stderr, or stdout when ``verbose >= 50``; nothing when 0.
    """

    def __init__(self, name: str, verbose: int) -> None:
        self.name = name
        self.verbose = verbose
        self.start = time.time()
        self._batches = 0

    def write(self, message: str) -> None:
        """Print one message line, prefixed by the runner's name."""
        if not self.verbose:
            return
        stream = sys.stderr if self.verbose < 50 else sys.stdout
        stream.write(f"[{self.name}]: {message}\n")
        stream.flush()

    def using(self, backend_name: str, n_workers: int) -> None:
        """Announce the backend, once per call."""
        self.write(f"Using backend {backend_name} with {n_workers} concurrent workers.")

    def batch_done(self, completed: int, dispatched: int, all_dispatched: bool) -> None:
        """Report after a batch completed: ``completed`` tasks of ``dispatched`` so far."""
        if not self.verbose:
            return
        index = self._batches
        self._batches += 1
        elapsed = time.time() - self.start
        if all_dispatched and completed == dispatched:
            return  # the "finished" line follows
        if _skip(index, self.verbose):
            return
        if not all_dispatched:
            self.write(f"Done {completed:3d} tasks      | elapsed: {_format_time(elapsed)}")
        else:
            remaining = elapsed / max(completed, 1) * (dispatched - completed)
            self.write(
                f"Done {completed:3d} out of {dispatched:3d} | elapsed: "
                f"{_format_time(elapsed)} remaining: {_format_time(remaining)}"
            )

    def finished(self, completed: int) -> None:
        """The last line, once every task has completed."""
        elapsed = time.time() - self.start
        self.write(
            f"Done {completed:3d} out of {completed:3d} | elapsed: {_format_time(elapsed)} finished"
        )
