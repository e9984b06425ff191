"""Hold Ctrl-C off while a call cleans up, so that a second press cannot cut the cleanup short.

A notebook's interrupt pressed twice sends two SIGINTs a few milliseconds apart: the
first stops the call, the second used to land inside its cleanup (killing the workers,
releasing shared copies, removing folders) and cut it short, leaving workers running
when the ``KeyboardInterrupt`` reached the caller.  While :func:`sigint_deferred` is
active, a SIGINT is recorded instead; when the block ends, the previous handler is put
back and the signal delivered to it, unless a ``KeyboardInterrupt`` is already on its
way (then a second one adds nothing).  A SIGINT that comes once the block has run for
:data:`ESCAPE_AFTER` seconds interrupts it at once: a cleanup that hangs can still be
interrupted.

Only the main thread of the main interpreter can set signal handlers; elsewhere the
block runs unprotected (signals are delivered to the main thread anyway).
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["ESCAPE_AFTER", "sigint_deferred"]

#: Seconds after which a SIGINT interrupts the protected block instead of waiting.
ESCAPE_AFTER = 5.0


class _Held:
    """The temporary SIGINT handler: records the signal, or raises once the block is slow."""

    def __init__(self, previous: object) -> None:
        self.previous = previous
        self.start = time.monotonic()
        self.frame: FrameType | None = None
        self.count = 0

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if time.monotonic() - self.start > ESCAPE_AFTER:
            signal.signal(signal.SIGINT, self.previous)  # type: ignore[arg-type]
            _deliver(self.previous, frame)
            return
        self.count += 1
        self.frame = frame


def _deliver(handler: object, frame: FrameType | None) -> None:
    """Do what ``handler`` does with a SIGINT."""
    if handler is signal.SIG_DFL:
        signal.raise_signal(signal.SIGINT)
    elif callable(handler):
        handler(signal.SIGINT, frame)


@contextmanager
def sigint_deferred(deliver: bool = True) -> Iterator[None]:
    """Run the block with SIGINT held; deliver a held one to the previous handler after.

    Parameters
    ----------
    deliver : bool, default True
        False drops a held SIGINT (for cleanup at interpreter exit, which is what it
        would ask for anyway).

    Raises
    ------
    KeyboardInterrupt
        After the block, for a SIGINT received during it (with Python's default
        handler), unless the block itself, or the exception being handled where it
        is entered, is a ``KeyboardInterrupt``: a second press then adds nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is None or previous is signal.SIG_IGN:
        # Set outside Python (nothing to restore it with), or ignored: leave it alone.
        yield
        return
    held = _Held(previous)
    try:
        signal.signal(signal.SIGINT, held)
    except (ValueError, OSError):  # not the main interpreter
        yield
        return
    # Entered while handling the KeyboardInterrupt that stopped the call?
    interrupted = isinstance(sys.exc_info()[1], KeyboardInterrupt)
    try:
        yield
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        if signal.getsignal(signal.SIGINT) is held:
            signal.signal(signal.SIGINT, previous)
            redundant = interrupted and previous is signal.default_int_handler
            if held.count and deliver and not redundant:
                _deliver(previous, held.frame)
