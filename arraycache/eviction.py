"""Which entries go when a location is over its limits, and the enforced ``bytes_limit``.

Order: entries made by an older version of their function's code first (they only
come back if the code is reverted), then the least recently used (last hit or store,
from the bookkeeping journal, to the second).

One process evicts at a time (an exclusive ``flock`` on ``.arraycache/evicting``, in
the local bookkeeping folder for a remote location: processes of one machine take
turns, machines do not); the next one re-scans once it gets the lock, so two processes
over the limit at once do not both delete the same amount.  A reader whose entry is
deleted under it keeps its memory maps (unlinked files stay mapped) or, mid-read, sees
a miss and computes.
"""

from __future__ import annotations

import datetime
import logging
import time
from pathlib import PurePath

from .store import EntryInfo, Store

__all__ = ["enforce_bytes_limit", "evict"]

logger = logging.getLogger("arraycache.eviction")


def latest_code_digests(store: Store) -> dict[PurePath, str]:
    """Function folder -> the code digest it was most recently stored with."""
    latest = {}
    for folder in store.function_dirs():
        info = store.code_info(folder)
        try:
            digests = info["digests"]  # type: ignore[index]
            if digests:
                latest[folder] = max(digests, key=digests.get)
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
    return latest


def evict(
    store: Store,
    bytes_limit: int | None = None,
    items_limit: int | None = None,
    age_limit: datetime.timedelta | None = None,
) -> list[EntryInfo]:
    """Delete entries until the location fits the limits; return the deleted ones."""
    with store.eviction_lock():
        store.remove_temporaries()
        entries = list(store.entries())
        latest = latest_code_digests(store)
        now = time.time()
        entries.sort(key=lambda e: (e.code_digest == latest.get(e.path.parent), e.last_access))
        total = sum(e.nbytes for e in entries)
        count = len(entries)
        evicted = []
        for e in entries:
            too_big = bytes_limit is not None and total > bytes_limit
            too_many = items_limit is not None and count > items_limit
            too_old = age_limit is not None and now - e.last_access > age_limit.total_seconds()
            if not (too_big or too_many or too_old):
                continue
            if store.delete(e.path):
                evicted.append(e)
                logger.info("evicted %s (%d bytes, last used %.0f s ago)", e.path, e.nbytes,
                            now - e.last_access)
            total -= e.nbytes
            count -= 1
        return evicted


def enforce_bytes_limit(store: Store, bytes_limit: int) -> None:
    """Called after each store: an O(1) look at the running total (the journals are
    folded incrementally), and a scan and eviction only when it is over the limit."""
    try:
        total = store.summary.total_bytes()
    except Exception as exc:  # no bookkeeping: fall back to a scan
        logger.debug("running size of %s unknown (%s); scanning", store.location, exc)
        total = bytes_limit + 1
    if total > bytes_limit:
        evict(store, bytes_limit=bytes_limit)
