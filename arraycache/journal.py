"""Bookkeeping that every process using a location shares: last access, hit and miss
counts, bytes stored and loaded, compute time saved, and the running size that an
enforced ``bytes_limit`` needs.

Why a journal, measured on the 2-core test VM: an ``UPDATE`` in SQLite's WAL mode
costs ~40 us, more than a whole small hit (~33 us); appending one line to a file costs
~3 us.  So each process appends its events to a file of its own,
``<location>/.arraycache/journal/<pid>-<random>.log`` (one ``write`` per event, no
fsync), and readers fold the journals into ``summary.sqlite`` (WAL mode), from the
offset they reached last time, in the transaction that records the new offset: each
event is counted once, whoever folds.

A writer holds a shared ``flock`` on its journal while it lives; a folder that gets
an exclusive lock knows the writer is gone (the kernel drops a dead process's locks,
also across PID namespaces) and deletes the journal once folded.

The bookkeeping is advisory: the entries are the truth.  A hit never fails because
of it: any error here (read-only or full location, a damaged database) is swallowed,
logged, and at worst loses counts; a damaged database is rebuilt from a scan.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any

__all__ = ["FUNCTION_STATS", "Journal", "Summary", "close_journals", "journal_for"]

logger = logging.getLogger("arraycache.journal")

FOLDER = ".arraycache"
_JOURNALS = "journal"
_DATABASE = "summary.sqlite"
_FOLD_EVERY = 1 << 20

#: Keys of the statistics of a function (and of the totals), in display order.
FUNCTION_STATS = ("hits", "misses", "entries", "bytes", "bytes_stored", "bytes_loaded",
                  "compute_time", "time_saved")

_SCHEMA = """
create table if not exists entries (
    entry text primary key, function text not null, nbytes integer not null,
    created real not null, last_access real not null, hits integer not null default 0
);
create table if not exists functions (
    function text primary key, hits integer not null default 0,
    misses integer not null default 0, bytes_stored integer not null default 0,
    bytes_loaded integer not null default 0, compute_time real not null default 0,
    time_saved real not null default 0
);
create table if not exists journals (name text primary key, offset integer not null);
create table if not exists totals (id integer primary key check (id = 0), nbytes integer not null);
insert or ignore into totals values (0, 0);
create trigger if not exists entries_insert after insert on entries begin
    update totals set nbytes = nbytes + new.nbytes; end;
create trigger if not exists entries_delete after delete on entries begin
    update totals set nbytes = nbytes - old.nbytes; end;
create trigger if not exists entries_resize after update of nbytes on entries begin
    update totals set nbytes = nbytes - old.nbytes + new.nbytes; end;
"""


class Journal:
    """This process's append-only event file for one location (created on first event)."""

    def __init__(self, root: Path) -> None:
        self.folder = root / FOLDER / _JOURNALS
        self._fd = -1
        self._pid = -1
        self._broken = False
        self._written = 0
        self._lock = threading.Lock()

    def _open(self) -> int:
        if self._pid == os.getpid() and self._fd >= 0:
            return self._fd
        # First event, or first in a forked child (whose parent's file is not its own).
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{os.getpid()}-{uuid.uuid4().hex[:8]}.log"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        fcntl.flock(fd, fcntl.LOCK_SH)  # "alive": released by the kernel when we die
        self._fd, self._pid = fd, os.getpid()
        return fd

    def record(self, kind: str, entry: str, function: str, nbytes: int = 0,
               seconds: float = 0.0) -> None:
        """Append one event: 'S' store, 'H' hit, 'M' miss, 'D' delete."""
        if self._broken:
            return
        line = f"{kind}\t{time.time():.6f}\t{entry}\t{function}\t{nbytes}\t{seconds:.6f}\n"
        try:
            fd = self._fd
            fresh = fd < 0 or self._pid != os.getpid()
            if fresh:
                with self._lock:
                    fd = self._open()
            # One write(2) with O_APPEND: lines of threads and processes never interleave.
            self._written += os.write(fd, line.encode())
        except OSError as exc:
            # Read-only or full location: the cache still works, without statistics.
            self._broken = True
            logger.debug("no bookkeeping in %s: %s", self.folder, exc)
            return
        if fresh or self._written > _FOLD_EVERY:
            # Journals of finished processes are folded (and deleted) when a process
            # starts recording, and a busy process folds its own every _FOLD_EVERY bytes.
            self._written = 0
            Summary(self.folder.parent.parent).fold()

    def close(self) -> None:
        """Close the file (the next event opens a new one)."""
        with self._lock:
            if self._fd >= 0 and self._pid == os.getpid():
                with contextlib.suppress(OSError):
                    os.close(self._fd)
            self._fd, self._broken = -1, False


_journals: dict[str, Journal] = {}
_journals_lock = threading.Lock()


def close_journals() -> None:
    """Close this process's journal files: a process that recorded events keeps one
    open per location, like a database connection, which keeps the file system busy
    (no ``umount``, no remount read-only) until it exits or this is called."""
    for journal in list(_journals.values()):
        journal.close()


def journal_for(root: Path) -> Journal:
    """The one journal of this process for the location ``root``."""
    key = str(root)
    journal = _journals.get(key)
    if journal is None:
        with _journals_lock:
            journal = _journals.setdefault(key, Journal(root))
    return journal


class Summary:
    """The folded state of a location's journals, in SQLite."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.folder = root / FOLDER
        self.path = self.folder / _DATABASE

    def _connect(self, timeout: float) -> sqlite3.Connection:
        self.folder.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
        db.execute("pragma journal_mode=wal")
        db.execute("pragma synchronous=normal")
        db.executescript(_SCHEMA)
        return db

    @contextlib.contextmanager
    def transaction(self, timeout: float = 30.0) -> Any:
        """A folded, up-to-date database in an open write transaction.

        Raises ``sqlite3.OperationalError`` when another process holds it longer than
        ``timeout`` seconds.
        """
        try:
            db = self._connect(timeout)
        except sqlite3.OperationalError:
            raise  # busy or locked by another process: not damage
        except sqlite3.DatabaseError:
            # Damaged ("file is not a database"): the entries are the truth, the counts
            # are lost.
            logger.warning("bookkeeping database %s is damaged; starting a new one", self.path)
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(OSError):
                    os.unlink(f"{self.path}{suffix}")
            db = self._connect(timeout)
        try:
            db.execute("begin immediate")
            finished = self._fold(db)
            yield db
            db.execute("commit")
            for path in finished:  # folded for good: only now may they go
                with contextlib.suppress(OSError):
                    os.unlink(path)
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("rollback")
            raise
        finally:
            db.close()

    def _fold(self, db: sqlite3.Connection) -> list[Path]:
        """Apply what the journals hold beyond the recorded offsets; return the journals
        of finished processes, to delete once the transaction is committed."""
        folder = self.folder / _JOURNALS
        try:
            names = sorted(os.listdir(folder))
        except FileNotFoundError:
            return []
        finished = []
        offsets = dict(db.execute("select name, offset from journals"))
        lines: list[str] = []
        for name in names:
            if not name.endswith(".log"):
                continue
            path = folder / name
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    writer_gone = True
                except BlockingIOError:
                    writer_gone = False
                start = offsets.get(name, 0)
                os.lseek(fd, start, os.SEEK_SET)
                chunks = []
                while chunk := os.read(fd, 1 << 20):
                    chunks.append(chunk)
                data = b"".join(chunks)
            finally:
                os.close(fd)
            complete = data[: data.rfind(b"\n") + 1]  # a line being written waits
            lines.extend(complete.decode(errors="replace").splitlines())
            if writer_gone:
                finished.append(path)
                db.execute("delete from journals where name = ?", (name,))
            else:
                db.execute("insert or replace into journals values (?, ?)",
                           (name, start + len(complete)))
        _apply(db, lines)
        return finished

    def fold(self) -> None:
        """Fold the journals now if nobody else is (never waits; never raises)."""
        try:
            with self.transaction(timeout=0):
                pass
        except Exception as exc:
            logger.debug("journals of %s not folded: %s", self.root, exc)

    # --- reading ---------------------------------------------------------------------------

    def stats(self) -> dict[str, dict[str, float]]:
        """Per function (``module/qualname``): the counters of FUNCTION_STATS."""
        with self.transaction() as db:
            result: dict[str, dict[str, float]] = {}
            for row in db.execute("select function, hits, misses, bytes_stored, bytes_loaded,"
                                  " compute_time, time_saved from functions"):
                result[row[0]] = dict(zip(("hits", "misses", "bytes_stored", "bytes_loaded",
                                           "compute_time", "time_saved"), row[1:], strict=True))
            for function, count, nbytes in db.execute(
                "select function, count(*), sum(nbytes) from entries group by function"
            ):
                stats = result.setdefault(function, {})
                stats.update(entries=count, bytes=nbytes)
            for stats in result.values():
                for key in FUNCTION_STATS:
                    stats.setdefault(key, 0)
            return result

    def total_bytes(self) -> int:
        """Bytes of all entries, kept up to date by triggers: O(1), no scan."""
        with self.transaction() as db:
            return db.execute("select nbytes from totals").fetchone()[0]

    def entries(self) -> dict[str, tuple[float, int]]:
        """Entry (relative path) -> (last access, hits)."""
        with self.transaction() as db:
            return {e: (t, h) for e, t, h in
                    db.execute("select entry, last_access, hits from entries")}

    def resync(self, entries: list[tuple[str, str, int, float]],
               prefix: str = "") -> dict[str, tuple[float, int]]:
        """Make the entries under ``prefix`` match a scan of the disk, given as (entry,
        function, nbytes, created); return entry -> (last access, hits) after it."""
        with self.transaction() as db:
            known = {row[0] for row in db.execute(
                "select entry from entries where substr(entry, 1, ?) = ?", (len(prefix), prefix)
            )}
            present = {e[0] for e in entries}
            db.executemany("delete from entries where entry = ?",
                           [(e,) for e in known - present])
            db.executemany(
                "insert into entries (entry, function, nbytes, created, last_access) "
                "values (?, ?, ?, ?, ?) on conflict(entry) do update set nbytes = excluded.nbytes",
                [(e, f, n, c, c) for e, f, n, c in entries],
            )
            return {e: (t, h) for e, t, h in
                    db.execute("select entry, last_access, hits from entries")}


def _apply(db: sqlite3.Connection, lines: list[str]) -> None:
    """Fold events into the tables: aggregated in Python first, so that a million hits of
    a few entries cost a few statements (folding is ~1 us per event, not ~15)."""
    stores: dict[str, tuple[float, str, int]] = {}
    deletes: dict[str, float] = {}
    hits: dict[str, list] = {}
    counters: dict[str, list] = {}
    for line in lines:
        try:
            kind, when, entry, function, nbytes, seconds = line.split("\t")
            when_f, nbytes_i, seconds_f = float(when), int(nbytes), float(seconds)
        except ValueError:
            continue  # a torn or foreign line: skip it, never fail
        # hits, misses, bytes_stored, bytes_loaded, compute_time, time_saved
        count = counters.setdefault(function, [0, 0, 0, 0, 0.0, 0.0])
        if kind == "S":
            if entry not in stores or stores[entry][0] < when_f:
                stores[entry] = (when_f, function, nbytes_i)
            count[2] += nbytes_i
            count[4] += seconds_f
        elif kind == "H":
            seen = hits.setdefault(entry, [function, 0, when_f])
            seen[1] += 1
            seen[2] = max(seen[2], when_f)
            count[0] += 1
            count[3] += nbytes_i
            count[5] += seconds_f
        elif kind == "M":
            count[1] += 1
        elif kind == "D":
            deletes[entry] = max(deletes.get(entry, 0.0), when_f)
    # Journals are folded one after the other, so events of two processes arrive out of
    # order: a hit may come before the store it hit.  Hence upserts and max(); a delete
    # wins over the events of its entry that are not later than it.
    for entry, when in deletes.items():
        if entry not in stores or stores[entry][0] <= when:
            stores.pop(entry, None)
            hits.pop(entry, None)
            db.execute("delete from entries where entry = ?", (entry,))
    db.executemany(
        "insert into entries (entry, function, nbytes, created, last_access) "
        "values (?, ?, ?, ?, ?) on conflict(entry) do update set nbytes = excluded.nbytes,"
        " created = excluded.created, last_access = max(last_access, excluded.last_access)",
        [(e, f, n, when, when) for e, (when, f, n) in stores.items()],
    )
    db.executemany(
        "insert into entries (entry, function, nbytes, created, last_access, hits) "
        "values (?, ?, 0, ?, ?, ?) on conflict(entry) do update set"
        " last_access = max(last_access, excluded.last_access), hits = hits + excluded.hits",
        [(e, f, last, last, n) for e, (f, n, last) in hits.items()],
    )
    db.executemany(
        "insert into functions (function, hits, misses, bytes_stored, bytes_loaded,"
        " compute_time, time_saved) values (?, ?, ?, ?, ?, ?, ?) on conflict(function) do update"
        " set hits = hits + excluded.hits, misses = misses + excluded.misses,"
        " bytes_stored = bytes_stored + excluded.bytes_stored,"
        " bytes_loaded = bytes_loaded + excluded.bytes_loaded,"
        " compute_time = compute_time + excluded.compute_time,"
        " time_saved = time_saved + excluded.time_saved",
        [(f, *c) for f, c in counters.items()],
    )
