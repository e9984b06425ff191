"""``delayed``, and the batch-size rule that keeps tiny tasks from drowning in overhead."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

__all__ = ["AutoBatchSize", "delayed"]


def delayed(function: Callable[..., Any]) -> Callable[..., tuple[Callable, tuple, dict]]:
    """Capture a function call to run later in :class:`Parallel`.

    Parameters
    ----------
    function : callable
        The function to call; it may be defined in ``__main__``, a notebook cell, or
        be a lambda or closure (it is sent to workers by value).

    Returns
    -------
    callable
        Called as ``function`` would be, it returns the task
        ``(function, args, kwargs)``, as joblib's ``delayed`` does.

    Examples
    --------
    >>> from math import sqrt
    >>> Parallel(n_jobs=1)(delayed(sqrt)(i**2) for i in range(3))
    [0.0, 1.0, 2.0]
    """

    # wraps() copies what exists: partial objects and callable instances are fine.
    @functools.wraps(function)
    def delayed_function(*args: Any, **kwargs: Any) -> tuple[Callable, tuple, dict]:
        return function, args, kwargs

    return delayed_function


class AutoBatchSize:
    """Adapts the batch size so that a batch takes 0.2 to 2 s of worker time.

    Durations are measured in the worker (queueing time excluded) and smoothed;
    the size doubles at most per step going up and shrinks in one step going down.
    """

    MIN_DURATION = 0.2
    MAX_DURATION = 2.0

    def __init__(self) -> None:
        self.size = 1
        self._smoothed = 0.0

    def record(self, batch_size: int, duration: float) -> None:
        """Account for a batch of ``batch_size`` tasks that ran ``duration`` seconds."""
        if batch_size != self.size:
            return  # measured at an older size: not comparable
        if self._smoothed == 0.0:
            self._smoothed = duration
        else:
            self._smoothed = 0.8 * self._smoothed + 0.2 * duration
        duration = self._smoothed
        new = self.size
        if 0 < duration < self.MIN_DURATION:
            ideal = int(self.size * self.MIN_DURATION / duration) * 2
            new = max(1, min(2 * self.size, ideal))
        elif duration > self.MAX_DURATION and self.size >= 2:
            new = max(1, 2 * int(self.size * self.MIN_DURATION / duration))
        if new != self.size:
            self.size = new
            self._smoothed = 0.0
