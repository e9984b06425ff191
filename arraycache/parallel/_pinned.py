"""What the local sharing pool (``_pool``) and the dask registry (``_scatter``) share: copies
of arrays, named by content digest, that stay while a call uses them, then while the array
they came from lives, under a bound, least recently used first.

- A copy is *pinned* by each running call that sent it, and is never dropped while pinned.
- After the calls, it stays for its *owner*: the array that owns the data, when it was
  sent whole (itself, a reshape, a transpose).  One copy per owner: when the owner is sent
  again with other content (updated in place), its previous copy is let go before the new
  one is made, so the two never coexist unpinned.  Copies of partial views last only for
  their call.
- It goes when its owner is collected, or when the bound needs room (unpinned copies,
  least recently used first).

Owners are tracked by weak references.  Their callbacks run inside the garbage collector,
at any allocation, maybe inside a method below: they only queue their news, which the
holder of the (non-reentrant) lock applies before releasing it, so nothing changes under a
method's feet.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, Protocol, TypeVar

import numpy as np

__all__ = ["Limit", "PinnedCopies", "owner_of"]

Limit = int | str | None


class Copy(Protocol):
    digest: str
    nbytes: int
    pins: int
    owners: set[int]


C = TypeVar("C", bound=Copy)


def byte_extent(arr: np.ndarray) -> tuple[int, int]:
    """(lowest, highest + 1) address ``arr`` touches."""
    low = high = arr.__array_interface__["data"][0]
    for n, stride in zip(arr.shape, arr.strides, strict=True):
        if stride < 0:
            low += stride * (n - 1)
        else:
            high += stride * (n - 1)
    return low, high + arr.itemsize


def owner_of(arr: np.ndarray) -> np.ndarray | None:
    """The array that owns ``arr``'s data if ``arr`` covers all of it, else None."""
    owner = arr
    while isinstance(owner.base, np.ndarray):
        owner = owner.base
    if owner is arr:
        return owner
    if arr.nbytes == owner.nbytes and byte_extent(arr) == byte_extent(owner):
        return owner
    return None


class PinnedCopies(Generic[C]):
    """Digest -> copy, in least recently used order, with pins, owners and a bound.

    Subclasses say how a copy is made (the ``make`` of :meth:`_acquire`), whether an
    existing one is still good (``valid``), how one is let go (:meth:`_dispose`) and what
    ``'auto'`` bounds (:meth:`_bound`).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: collections.OrderedDict[str, C] = collections.OrderedDict()
        # id(owner) -> (weak reference to the owner, digest of its current copy)
        self._owners: dict[int, tuple[weakref.ref, str]] = {}
        self._gone: collections.deque[tuple[int, weakref.ref]] = collections.deque()
        self._bytes = 0

    # --- to provide ---

    def _dispose(self, item: C) -> None:
        """Let go of ``item``, already removed from the books."""
        raise NotImplementedError

    def _bound(self, limit: Limit, measure: bool) -> int | None:
        """The bytes ``limit`` allows (``'auto'`` measured only if ``measure``)."""
        raise NotImplementedError

    # --- locking with deferred owner deaths ---

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock:
            yield
            self._apply_gone()

    def _owner_died(self, ref: weakref.ref, key: int) -> None:
        self._gone.append((key, ref))
        if self._lock.acquire(blocking=False):
            try:
                self._apply_gone()
            finally:
                self._lock.release()

    def _apply_gone(self) -> None:
        while self._gone:
            key, ref = self._gone.popleft()
            known = self._owners.get(key)
            if known is None or known[0] is not ref:
                continue  # the id was reused by a newer owner
            del self._owners[key]
            item = self._items.get(known[1])
            if item is not None:
                item.owners.discard(key)
                self._drop_if_unused(item)

    # --- public ---

    def release(self, items: Iterable[C], limit: Limit) -> None:
        """Undo one acquire pin per copy, then apply ``limit``."""
        with self._locked():
            for item in items:
                item.pins -= 1
                self._drop_if_unused(item)
            self._shrink(limit)

    def nbytes(self) -> int:
        """Bytes of all copies."""
        return self._bytes

    # --- inside the lock ---

    def _acquire(self, digest: str, arr: np.ndarray, make: Callable[[], C],
                 valid: Callable[[C], bool]) -> C:
        """The copy of ``arr`` (content ``digest``), made by ``make`` if missing or no
        longer ``valid``, pinned once."""
        with self._locked():
            item = self._items.get(digest)
            if item is not None and not valid(item):
                self._delete(item)  # calls that pinned it release the old object, harmlessly
                item = None
            owner = owner_of(arr)
            if item is None:
                if owner is not None:
                    # An array updated in place: its previous copy goes before the new
                    # one is made, not after (one copy per array, not two, at peak).
                    self._drop_previous(owner, digest)
                item = make()
                self._items[digest] = item
                self._bytes += item.nbytes
            else:
                self._items.move_to_end(digest)
            item.pins += 1
            if owner is not None:
                self._retain(owner, item)
            return item

    def _retain(self, owner: np.ndarray, item: C) -> None:
        key = id(owner)
        ref = None
        known = self._owners.get(key)
        if known is not None:
            ref, previous = known
            if ref() is not owner:
                ref = None  # a dead owner whose id was reused; its death is still queued
            old = self._items.get(previous)
            if old is not None and old is not item:
                # The owner's content changed: its old copy goes once no call uses it.
                old.owners.discard(key)
                self._drop_if_unused(old)
        if ref is None:
            ref = weakref.ref(owner, lambda r, key=key: self._owner_died(r, key))
        self._owners[key] = (ref, item.digest)
        item.owners.add(key)

    def _drop_previous(self, owner: np.ndarray, digest: str) -> None:
        known = self._owners.get(id(owner))
        if known is None or known[0]() is not owner or known[1] == digest:
            return
        old = self._items.get(known[1])
        if old is not None:
            old.owners.discard(id(owner))
            self._drop_if_unused(old)

    def _drop_if_unused(self, item: C) -> None:
        if item.pins <= 0 and not item.owners:
            self._delete(item)

    def _delete(self, item: C) -> None:
        if self._items.get(item.digest) is not item:
            return  # already dropped
        del self._items[item.digest]
        self._bytes -= item.nbytes
        for key in item.owners:
            known = self._owners.get(key)
            if known is not None and known[1] == item.digest:
                del self._owners[key]
        item.owners.clear()
        self._dispose(item)

    def _shrink(self, limit: Limit, incoming: int = 0, measure: bool = False) -> None:
        """Drop unpinned copies, least recently used first, until ``incoming`` more fits."""
        if limit is None or not self._items:
            return
        bound = self._bound(limit, measure)
        if bound is None or self._bytes + incoming <= bound:
            return
        for item in list(self._items.values()):
            if self._bytes + incoming <= bound:
                break
            if item.pins <= 0:
                self._delete(item)
