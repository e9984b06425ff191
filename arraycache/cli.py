"""``arraycache`` / ``python -m arraycache``: look after a cache location.

    arraycache info LOCATION           entries and sizes per function
    arraycache verify LOCATION         check every byte; exit status 1 if anything is damaged
    arraycache prune LOCATION [...]    remove dead writers' leftovers, then evict to limits
    arraycache clear LOCATION --yes    remove every entry
"""

from __future__ import annotations

import argparse
import datetime
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from .memory import Memory, parse_bytes
from .store import LocalStore

__all__ = ["main"]


def _size(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if nbytes < 1024:
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} GiB"


def _existing_location(text: str) -> Path:
    path = Path(text).expanduser()
    if not (path / "arraycache.json").is_file():
        raise argparse.ArgumentTypeError(f"{text} is not an arraycache location")
    return path


def _info(location: Path) -> int:
    store = LocalStore(location)
    per_function: dict[Path, list] = defaultdict(list)
    for entry in store.entries():
        per_function[entry.path.parent].append(entry)
    total = 0
    for folder in sorted(per_function):
        entries = per_function[folder]
        nbytes = sum(e.nbytes for e in entries)
        total += nbytes
        versions = len({e.code_digest for e in entries})
        name = folder.relative_to(location).as_posix()
        print(f"{name}: {len(entries)} entries, {_size(nbytes)}, {versions} code version(s)")
    print(f"total: {sum(map(len, per_function.values()))} entries, {_size(total)}")
    return 0


def _verify(location: Path) -> int:
    damaged = Memory(location, verbose=0).verify()
    for path in damaged:
        print(f"damaged: {path}")
    print(f"{len(damaged)} damaged entr{'y' if len(damaged) == 1 else 'ies'}")
    return 1 if damaged else 0


def _prune(location: Path, args: argparse.Namespace) -> int:
    store = LocalStore(location)
    removed = store.remove_temporaries(min_age=args.min_age)
    before = list(store.entries())
    age = datetime.timedelta(days=args.age_days) if args.age_days is not None else None
    Memory(location, verbose=0).reduce_size(
        bytes_limit=args.bytes_limit, items_limit=args.items_limit, age_limit=age
    )
    after = list(store.entries())
    freed = sum(e.nbytes for e in before) - sum(e.nbytes for e in after)
    print(f"removed {removed} leftover temporary folder(s) and "
          f"{len(before) - len(after)} entr(ies), {_size(freed)}")
    return 0


def _clear(location: Path, args: argparse.Namespace) -> int:
    if not args.yes:
        print("refusing to clear without --yes", file=sys.stderr)
        return 2
    Memory(location, verbose=0).clear(warn=False)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="arraycache", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in [("info", "entries and sizes per function"),
                       ("verify", "check every entry against its digests")]:
        commands.add_parser(name, help=text).add_argument("location", type=_existing_location)
    prune = commands.add_parser("prune", help="remove leftovers and evict entries to limits")
    prune.add_argument("location", type=_existing_location)
    prune.add_argument("--bytes-limit", type=parse_bytes, help="e.g. 10G")
    prune.add_argument("--items-limit", type=int)
    prune.add_argument("--age-days", type=float, help="evict entries not used for this long")
    prune.add_argument("--min-age", type=float, default=3600.0,
                       help="seconds before a live writer's temporary folder counts as stuck")
    clear = commands.add_parser("clear", help="remove every entry")
    clear.add_argument("location", type=_existing_location)
    clear.add_argument("--yes", action="store_true", help="really clear")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "info":
        return _info(args.location)
    if args.command == "verify":
        return _verify(args.location)
    if args.command == "prune":
        return _prune(args.location, args)
    return _clear(args.location, args)
