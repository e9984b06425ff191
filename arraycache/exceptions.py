"""Named errors and warnings, so that users can catch and filter them."""

from __future__ import annotations

__all__ = [
    "CacheWarning",
    "CodeNotCoveredWarning",
    "DamagedEntryWarning",
    "UnhashableArgumentError",
    "UnstorableResultWarning",
    "UntrustedEntryWarning",
    "WrongArgumentsError",
]


class CacheWarning(UserWarning):
    """A cache problem was met; the call still returned the right value."""


class DamagedEntryWarning(CacheWarning):
    """A cache entry failed its checks on load; it was recomputed and replaced."""


class UntrustedEntryWarning(CacheWarning):
    """A cache entry needs unpickling a file another user owns; it was recomputed instead."""


class UnstorableResultWarning(CacheWarning):
    """A result could not be stored; it was returned without being cached."""


class UnhashableArgumentError(TypeError):
    """An argument of a cached function cannot be hashed into a cache key."""


class CodeNotCoveredWarning(UserWarning):
    """A value the cached function's code reaches (a closure variable, a default) cannot
    be hashed, so changing it does not change the cache key."""


class WrongArgumentsError(TypeError, ValueError):
    """The arguments of a call do not match the cached function's signature.

    Both a ``TypeError`` (what Python raises for a bad call) and a ``ValueError``
    (what ``joblib.Memory`` raises, so code written for it still catches it).
    """
