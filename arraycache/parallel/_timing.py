"""When a batch starts running, for ``Parallel(timeout=...)``.

A timeout bounds the time a batch *runs*, not the time it waits in a queue (loky and
multiprocessing move batches into their call queue before a worker is free for them)
nor the time a new worker takes to start.  How the start is known depends on the
backend:

- worker processes of this machine (``'marker'``): the worker creates a marker file
  just before it runs the batch; the file's modification time is the start;
- threads (``'running'``): ``Future.running()`` turns true when a thread takes the batch;
- other backends (``'slots'``): a batch starts when a worker is free for it, counted
  from completions (workers take batches in the order they were sent).

Nothing here runs when no timeout is set.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import os
import time
from collections.abc import Callable
from typing import Any

__all__ = ["BatchClock", "run_marked"]

_FILE_MODE = 0o600


def run_marked(marker: str, fn: Callable[..., Any], *args: Any) -> Any:
    """Worker side: note that the batch starts now (create ``marker``), then run it."""
    # No marker (a failed write): this batch is not timed, better than a false timeout.
    with contextlib.suppress(OSError):
        os.close(os.open(marker, os.O_WRONLY | os.O_CREAT, _FILE_MODE))
    return fn(*args)


class BatchClock:
    """Finds when each batch in flight started running.

    Parameters
    ----------
    kind : {'marker', 'running', 'slots'}
        How (see the module docstring).
    folder : str, optional
        Where workers create their markers (kind 'marker'): a folder of this call,
        removed with it.
    """

    def __init__(self, kind: str, folder: str | None = None) -> None:
        self.kind = kind
        self.folder = folder

    def submission(
        self, first: int, fn: Callable[..., Any], args: tuple
    ) -> tuple[Callable[..., Any], tuple]:
        """What to submit for the batch starting at task ``first``."""
        if self.kind == "marker":
            assert self.folder is not None
            return run_marked, (os.path.join(self.folder, f"started-{first}"), fn, *args)
        return fn, args

    def started(self, future: cf.Future, first: int, now: float) -> float | None:
        """When (``time.monotonic()`` scale) the batch started, or None if not yet known."""
        if self.kind == "marker":
            assert self.folder is not None
            try:
                mtime = os.stat(os.path.join(self.folder, f"started-{first}")).st_mtime
            except OSError:
                return None
            return min(now, now - (time.time() - mtime))
        if self.kind == "running" and (future.running() or future.done()):
            return now
        return None
