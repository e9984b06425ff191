"""``arraycache`` / ``python -m arraycache``: look after a cache location.

    arraycache ls LOCATION [FUNCTION]   functions (entries, size, hits, misses, time saved),
                                        or the entries of one function
    arraycache du LOCATION              sizes per function, total, free space
    arraycache stats LOCATION           hits, misses, bytes and time saved
    arraycache info LOCATION            format, functions, code versions, bookkeeping
    arraycache verify LOCATION          check every byte; exit status 1 if anything is damaged
    arraycache prune LOCATION [...]     remove dead writers' leftovers, evict to limits
    arraycache clear LOCATION [FUNCTION] --yes

Read commands take ``--json`` for scripts.  Exit status 2: bad arguments, or a
location that is not a cache.

``ls``, ``du``, ``verify`` and ``prune`` also take the URL of a location in object
storage (``s3://bucket/prefix``), with fsspec options as ``--storage-option KEY=VALUE``
(VALUE read as JSON when it parses, e.g. ``use_ssl=false``) or from the environment
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``... for s3fs).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path, PurePath
from typing import Any

from . import persistence
from .display import (
    hit_rate,
    human_duration,
    human_size,
    human_time,
    table,
)
from .eviction import evict, latest_code_digests
from .journal import FOLDER as BOOKKEEPING
from .memory import Memory, parse_bytes, verify_entry
from .store import EntryInfo, LocalStore, Store, is_url, open_store

__all__ = ["main"]

_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_LEFTOVER_MARKERS = (".tmp-", ".trash-")
_ARRAY_ARG = re.compile(r"array\(shape=(\([^)]*\)), dtype=([^)]+)\)")
#: Commands that take the URL of a remote location.
_URL_COMMANDS = ("ls", "du", "verify", "prune")


class CommandError(Exception):
    """A problem with what the user asked for: message on stderr, exit status 2."""


# --- arguments -------------------------------------------------------------------------------


def _location(text: str) -> Path | str:
    if is_url(text):
        return text  # checked once the storage options are known (see _open)
    path = Path(text).expanduser()
    if not (path / "arraycache.json").is_file():
        why = "does not exist" if not path.exists() else "has no arraycache.json"
        raise argparse.ArgumentTypeError(f"{text} is not an arraycache location ({why})")
    return path.absolute()


def _storage_option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"cannot read {text!r} as KEY=VALUE")
    try:
        return key.strip(), json.loads(value)
    except ValueError:
        return key.strip(), value


def _open(args: argparse.Namespace) -> Store:
    """The store of the command's location (a remote one is not created)."""
    if not isinstance(args.location, str):
        return LocalStore(args.location)
    if args.command not in _URL_COMMANDS:
        raise CommandError(f"{args.command} works on local folders; "
                           f"{', '.join(_URL_COMMANDS)} take URLs")
    options = dict(getattr(args, "storage_option", None) or [])
    try:
        store = open_store(args.location, options, create=False)
    except (ImportError, ValueError, TypeError) as exc:
        raise CommandError(str(exc)) from None
    if not store.is_cache():
        raise CommandError(f"{args.location} is not an arraycache location "
                           f"(has no arraycache.json)")
    return store


def _age(text: str) -> datetime.timedelta:
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([smhdw])\s*", text.lower())
    if not match:
        raise argparse.ArgumentTypeError(
            f"cannot read {text!r} as an age: give a number and a unit, e.g. 7d, 12h, 30m, 45s, 2w"
        )
    return datetime.timedelta(seconds=float(match[1]) * _AGE_UNITS[match[2]])


def _bytes(text: str) -> int:
    try:
        value = parse_bytes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value is None or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of entries")
    return value


# --- reading a location ----------------------------------------------------------------------


def _function_ids(store: Store) -> list[str]:
    return sorted(f"{d.parent.name}/{d.name}" for d in store.function_dirs())


def function_names(store: Store, ids: Any) -> dict[str, str]:
    """``module/qualname`` folder -> the function's dotted name (from its ``code.json``;
    the folder name when it is missing)."""
    names = {}
    for function_id in ids:
        info = store.code_info(store.function_dir(tuple(function_id.split("/"))))
        try:
            names[function_id] = str(info["function"])  # type: ignore[index]
        except (KeyError, TypeError):
            names[function_id] = function_id
    return names


def _match_function(store: Store, text: str) -> str:
    """The ``module/qualname`` folder that ``text`` names: that folder, the dotted
    ``module.qualname``, or a unique suffix of either (``qualname``, ``Class.method``)."""
    names = function_names(store, _function_ids(store))
    exact = [fid for fid, name in names.items() if text in (fid, name)]
    found = exact or [fid for fid, name in names.items()
                      if fid.endswith("/" + text) or name.endswith("." + text)]
    if len(found) == 1:
        return found[0]
    if not found:
        known = ", ".join(names) or "none"
        raise CommandError(f"no function {text!r} in {store.location} (functions: {known})")
    raise CommandError(f"{text!r} matches several functions: {', '.join(sorted(found))}; "
                       f"give more of the name")


def _counters(store: Store) -> dict[str, dict[str, float]]:
    """Per-function counters from the bookkeeping (empty when it is unavailable)."""
    try:
        return store.summary.stats()
    except Exception:
        return {}


def _per_function(entries: list[EntryInfo]) -> dict[str, list[EntryInfo]]:
    grouped: dict[str, list[EntryInfo]] = defaultdict(list)
    for entry in entries:
        grouped[entry.function].append(entry)
    return dict(sorted(grouped.items()))


def _is_stale(entry: EntryInfo, latest: dict[PurePath, str]) -> bool:
    # Without a code.json (cleared while a process still held the function) nothing is
    # known to be stale: keep the entry.
    current = latest.get(entry.path.parent)
    return current is not None and entry.code_digest != current


def _plural(count: int, word: str) -> str:
    if count == 1:
        return f"1 {word}"
    if word.endswith("y"):
        return f"{count} {word[:-1]}ies"
    return f"{count} {word}es" if word.endswith("s") else f"{count} {word}s"


# --- read commands ---------------------------------------------------------------------------


def _ls(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    store = _open(args)
    if args.function is not None:
        return _ls_function(store, _match_function(store, args.function))
    grouped = _per_function(list(store.entries()))
    counters = _counters(store)
    names = function_names(store, grouped)
    functions = {}
    for fid, entries in grouped.items():
        c = counters.get(fid, {})
        functions[fid] = {
            "name": names[fid], "entries": len(entries), "bytes": sum(e.nbytes for e in entries),
            **{k: c.get(k, 0) for k in ("hits", "misses", "compute_time", "time_saved")},
        }
    rows = [[fid, f["entries"], human_size(f["bytes"]), f["hits"], f["misses"],
             hit_rate(f["hits"], f["misses"]), human_duration(f["time_saved"])]
            for fid, f in functions.items()]
    total = {k: sum(f[k] for f in functions.values())
             for k in ("entries", "bytes", "hits", "misses", "time_saved")}
    rows.append(["total", total["entries"], human_size(total["bytes"]), total["hits"],
                 total["misses"], hit_rate(total["hits"], total["misses"]),
                 human_duration(total["time_saved"])])
    text = table(["function", "entries", "size", "hits", "misses", "hit rate", "time saved"],
                 rows)
    return {"location": store.location, "functions": functions}, text


def _ls_function(store: Store, fid: str) -> tuple[dict[str, Any], str]:
    infos = list(store.entries(tuple(fid.split("/"))))
    infos.sort(key=lambda e: e.last_access, reverse=True)
    latest = latest_code_digests(store)
    entries = []
    for info in infos:
        try:
            arguments = (store.read_meta(info.path) or {}).get("args") or {}
        except (ValueError, KeyError, OSError):
            arguments = {}
        entries.append({
            "key": info.path.name, "bytes": info.nbytes, "created": info.created,
            "last_access": info.last_access, "hits": info.hits, "compute_time": info.duration,
            "code": info.code_digest, "stale": _is_stale(info, latest), "args": arguments,
        })

    def short(arguments: dict[str, str]) -> str:
        text = ", ".join(f"{k}={v}" for k, v in arguments.items())
        text = _ARRAY_ARG.sub(r"\2\1", text)  # array(shape=(3, 4), dtype=f8) -> f8(3, 4)
        return text if len(text) <= 50 else text[:47] + "..."

    rows = [[e["key"][:12], human_size(e["bytes"]), human_time(e["created"]),
             human_time(e["last_access"]), e["hits"], human_duration(e["compute_time"]),
             "old" if e["stale"] else "current", short(e["args"])] for e in entries]
    text = table(["key", "size", "created", "last access", "hits", "compute time", "code",
                  "arguments"], rows, align="lrllrrll")
    name = function_names(store, [fid])[fid]
    text = f"{name}: {_plural(len(entries), 'entry')}, " \
           f"{human_size(sum(e['bytes'] for e in entries))}\n{text}"
    return {"location": store.location, "function": fid, "name": name,
            "entries": entries}, text


def _du(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    store = _open(args)
    grouped = _per_function(list(store.entries()))
    functions = {fid: {"entries": len(es), "bytes": sum(e.nbytes for e in es)}
                 for fid, es in grouped.items()}
    entries_bytes = sum(f["bytes"] for f in functions.values())
    total, free = store.usage()
    other = max(0, total - entries_bytes)
    data = {"location": store.location, "functions": functions,
            "entries": sum(f["entries"] for f in functions.values()), "bytes": entries_bytes,
            "other_bytes": other, "free_bytes": free}
    rows = [[fid, f["entries"], human_size(f["bytes"])] for fid, f in functions.items()]
    rows.append(["total", data["entries"], human_size(entries_bytes)])
    text = table(["function", "entries", "size"], rows)
    if free is None:  # object storage: this machine's bookkeeping is not in the bucket
        text += (f"\nother objects (code versions, leftovers): {human_size(other)}"
                 f"\nfree space: not known for object storage")
    else:
        text += (f"\nother files (bookkeeping, code versions, leftovers): {human_size(other)}"
                 f"\nfree space on the file system: {human_size(free)}")
    return data, text


def _stats(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    _open(args)  # a URL: an error naming the commands that take one
    stats = Memory(args.location, verbose=0).stats()
    lines = [
        f"location      {stats['location']}",
        f"calls         {stats['hits'] + stats['misses']}: {_plural(stats['hits'], 'hit')}, "
        f"{_plural(stats['misses'], 'miss')} ({hit_rate(stats['hits'], stats['misses'])} hits)",
        f"entries       {stats['entries']} ({human_size(stats['bytes'])})",
        f"stored        {human_size(stats['bytes_stored'])}",
        f"loaded        {human_size(stats['bytes_loaded'])}",
        f"compute time  {human_duration(stats['compute_time'])}",
        f"time saved    {human_duration(stats['time_saved'])}",
    ]
    rows = [[fid, s["hits"], s["misses"], hit_rate(s["hits"], s["misses"]), s["entries"],
             human_size(s["bytes"]), human_size(s["bytes_stored"]), human_size(s["bytes_loaded"]),
             human_duration(s["compute_time"]), human_duration(s["time_saved"])]
            for fid, s in sorted(stats["functions"].items())]
    if rows:
        lines += ["", table(["function", "hits", "misses", "hit rate", "entries", "size",
                             "stored", "loaded", "compute time", "time saved"], rows)]
    return stats, "\n".join(lines)


def _info(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    store = _open(args)
    assert isinstance(store, LocalStore)
    try:
        version = json.loads((store.root / "arraycache.json").read_text()).get("format_version")
    except (OSError, ValueError, AttributeError):
        version = None
    grouped = _per_function(list(store.entries()))
    latest = latest_code_digests(store)
    names = function_names(store, grouped)
    functions = {}
    for fid, entries in grouped.items():
        stale = [e for e in entries if _is_stale(e, latest)]
        try:
            seen = len(json.loads((store.root / fid / "code.json").read_text())["digests"])
        except (OSError, ValueError, KeyError, TypeError):
            seen = None
        functions[fid] = {
            "name": names[fid], "entries": len(entries), "bytes": sum(e.nbytes for e in entries),
            "code_versions_seen": seen,
            "code_versions_stored": len({e.code_digest for e in entries}),
            "stale_entries": len(stale), "stale_bytes": sum(e.nbytes for e in stale),
        }
    leftovers = sum(1 for fdir in store.function_dirs() for child in _children_names(fdir)
                    if any(marker in child for marker in _LEFTOVER_MARKERS))
    data = {
        "location": str(store.root), "format_version": version,
        "entries": sum(f["entries"] for f in functions.values()),
        "bytes": sum(f["bytes"] for f in functions.values()),
        "functions": functions, "leftovers": leftovers, "bookkeeping": _bookkeeping(store),
    }
    book = data["bookkeeping"]
    state = (f"{book['state']}, database {human_size(book['database_bytes'])}, "
             f"{_plural(book['journals'], 'journal')} to fold")
    lines = [
        f"location        {data['location']}",
        f"format version  {version}",
        f"entries         {data['entries']} ({human_size(data['bytes'])}) "
        f"in {_plural(len(functions), 'function')}",
        f"leftovers       {_plural(leftovers, 'temporary folder')} (removed by prune)",
        f"bookkeeping     {state}",
    ]
    rows = [[fid, f["entries"], human_size(f["bytes"]), f["code_versions_stored"],
             "-" if f["code_versions_seen"] is None else f["code_versions_seen"],
             f"{f['stale_entries']} ({human_size(f['stale_bytes'])})" if f["stale_entries"]
             else "0"]
            for fid, f in functions.items()]
    if rows:
        lines += ["", table(["function", "entries", "size", "code versions",
                             "seen", "old-code entries"], rows)]
    return data, "\n".join(lines)


def _children_names(folder: Path) -> list[str]:
    try:
        return os.listdir(folder)
    except OSError:
        return []


def _bookkeeping(store: LocalStore) -> dict[str, Any]:
    folder = store.root / BOOKKEEPING
    journals = [n for n in _children_names(folder / "journal") if n.endswith(".log")]
    try:
        database = (folder / "summary.sqlite").stat().st_size
    except OSError:
        database = 0
    try:
        tracked = store.summary.total_bytes()
        state = "ok"
    except Exception as exc:
        tracked, state = None, f"unavailable ({type(exc).__name__}: {exc})"
    return {"state": state, "path": str(folder), "database_bytes": database,
            "journals": len(journals), "tracked_bytes": tracked}


def _verify(args: argparse.Namespace) -> tuple[dict[str, Any], str, int]:
    store = _open(args)
    checked, damaged, paths = 0, [], []
    for info in store.entries():
        try:
            meta = store.read_meta(info.path)
            if meta is None and (not store.in_place or not Path(info.path).exists()):
                continue  # evicted or cleared by another process while we looked
            problems = verify_entry(store, info.path, meta) if meta else ["no metadata"]
        except (ValueError, KeyError, OSError, persistence.EntryDamaged) as exc:
            problems = [str(exc)]
        checked += 1
        if problems:
            damaged.append({"entry": store.url(info.path), "function": info.function,
                            "bytes": info.nbytes, "problems": problems})
            paths.append(info.path)
    left = len(damaged)
    if args.repair:
        for item, path in zip(damaged, paths, strict=True):
            try:
                store.delete(path)
                left -= 1
            except OSError as exc:  # e.g. a read-only location: the entry stays damaged
                item["problems"].append(f"cannot remove it: {exc}")
    lines = [f"damaged: {d['entry']}: {'; '.join(d['problems'])}" for d in damaged]
    outcome = ""
    if args.repair and damaged:
        outcome = f", {len(damaged) - left} removed (recomputed at their next call)"
    lines.append(f"checked {_plural(checked, 'entry')}: {len(damaged)} damaged{outcome}")
    data = {"location": store.location, "checked": checked, "damaged": damaged,
            "repaired": bool(damaged) and left == 0}
    return data, "\n".join(lines), 1 if left else 0


# --- commands that change the cache ----------------------------------------------------------


def _prune(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    store = _open(args)
    leftovers = store.remove_temporaries(min_age=args.min_age)
    evicted: list[tuple[EntryInfo, bool]] = []
    if args.stale:
        # Listed before the code versions are read: an entry of a version recorded after
        # that read would look stale (code.json is written before an entry is published).
        entries = list(store.entries())
        latest = latest_code_digests(store)
        evicted += [(e, True) for e in entries if _is_stale(e, latest) and store.delete(e.path)]
    if args.bytes_limit is not None or args.items_limit is not None or args.age is not None:
        evicted += [(e, False) for e in evict(store, args.bytes_limit, args.items_limit,
                                              args.age)]
    remaining = list(store.entries())
    freed = sum(e.nbytes for e, _ in evicted)
    data = {
        "location": store.location, "leftovers_removed": leftovers,
        "evicted": [{"entry": store.url(e.path), "function": e.function, "bytes": e.nbytes,
                     "stale": stale} for e, stale in evicted],
        "evicted_bytes": freed, "entries": len(remaining),
        "bytes": sum(e.nbytes for e in remaining),
    }
    text = (f"removed {_plural(leftovers, 'leftover temporary folder')} and evicted "
            f"{_plural(len(evicted), 'entry')} ({human_size(freed)}); "
            f"{_plural(len(remaining), 'entry')} left ({human_size(data['bytes'])})")
    return data, text


def _clear(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    store = _open(args)
    fid = None if args.function is None else _match_function(store, args.function)
    what = "every function" if fid is None else fid
    if not args.yes:
        raise CommandError(f"refusing to clear {what} in {store.root} without --yes")
    folder = None if fid is None else tuple(fid.split("/"))
    entries = list(store.entries(folder))
    store.clear(folder)
    freed = sum(e.nbytes for e in entries)
    return ({"location": str(store.root), "function": fid, "removed": len(entries),
             "bytes": freed},
            f"removed {_plural(len(entries), 'entry')} ({human_size(freed)}) of {what}")


# --- parser and main -------------------------------------------------------------------------

_COMMANDS = {
    "ls": (_ls, "functions with their entries, size, hits, misses and time saved; "
                "with FUNCTION, its entries"),
    "du": (_du, "size per function, total, and free space on the file system"),
    "stats": (_stats, "hits, misses, bytes stored and loaded, compute time saved"),
    "info": (_info, "format version, entries, code versions per function, bookkeeping"),
    "verify": (_verify, "check every byte of every entry; exit status 1 if any is damaged"),
    "prune": (_prune, "remove dead writers' leftovers, then evict entries to limits"),
    "clear": (_clear, "delete every entry, or those of one function"),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="arraycache", description="Look after an arraycache location.",
        epilog="Read commands (ls, du, stats, info, verify) print JSON with --json. "
               "Exit status 2: bad arguments or a folder that is not a cache.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub = {name: commands.add_parser(name, help=text, description=text[0].upper() + text[1:])
           for name, (_, text) in _COMMANDS.items()}
    for name, command in sub.items():
        command.add_argument("location", type=_location, metavar="LOCATION",
                             help="the cache folder (Memory's location)" +
                             (", or its URL (s3://bucket/prefix)" if name in _URL_COMMANDS
                              else ""))
        if name in _URL_COMMANDS:
            command.add_argument("--storage-option", type=_storage_option, action="append",
                                 metavar="KEY=VALUE",
                                 help="an fsspec option for a URL location, e.g. "
                                      "endpoint_url=http://localhost:9000 (repeatable)")
        if name in ("ls", "clear"):
            command.add_argument("function", nargs="?", metavar="FUNCTION",
                                 help="module/qualname, module.qualname or a unique end of it "
                                      "(e.g. the function's name)")
        if name != "clear":
            command.add_argument("--json", action="store_true", help="print JSON for scripts")
    sub["verify"].add_argument("--repair", action="store_true",
                               help="delete damaged entries (their next call recomputes them)")
    prune = sub["prune"]
    prune.add_argument("--bytes-limit", type=_bytes, metavar="SIZE",
                       help="largest total size, e.g. 10G, 500M")
    prune.add_argument("--items-limit", type=_count, metavar="N", help="largest number of entries")
    prune.add_argument("--age", type=_age,
                       help="evict entries not used for this long, e.g. 7d, 12h, 30m")
    prune.add_argument("--stale", action="store_true",
                       help="evict entries made by older versions of their function's code")
    prune.add_argument("--min-age", type=float, default=3600.0, metavar="SECONDS",
                       help="age after which a live writer's temporary folder counts as "
                            "stuck (default 3600); dead writers' folders go at once")
    sub["clear"].add_argument("--yes", action="store_true", help="really delete")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line on ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    command = _COMMANDS[args.command][0]
    try:
        result = command(args)
    except CommandError as exc:
        print(f"arraycache {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. clear or prune on a read-only location
        print(f"arraycache {args.command}: error: {exc}", file=sys.stderr)
        return 1
    data, text, status = result if len(result) == 3 else (*result, 0)
    try:
        print(json.dumps(data, indent=2) if getattr(args, "json", False) else text)
        sys.stdout.flush()
    except BrokenPipeError:  # `arraycache ls ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return status
