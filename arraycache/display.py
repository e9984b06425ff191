"""How a cache looks to people: sizes, durations and aligned tables (for the command
line), and the notebook (HTML) and one-line reprs of Memory, memorized functions and
stored results.

The one-line reprs read nothing from disk: they show up in tracebacks, logs and the
repr of a scikit-learn ``Pipeline(memory=...)``.  The HTML reprs read the location's
bookkeeping (O(functions), no scan of the entries) and never raise: a location that
cannot be read says so in the HTML.
"""

from __future__ import annotations

import contextlib
import datetime
import html
import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .journal import FUNCTION_STATS, Summary
from .plainjson import dtype_from_json
from .store import LocalStore, Store, is_url

if TYPE_CHECKING:
    from .memorized import MemorizedFunc, MemorizedResult
    from .memory import Memory

__all__ = [
    "describe_arrays",
    "folder_nbytes",
    "func_html",
    "func_repr",
    "function_names",
    "hit_rate",
    "human_duration",
    "human_size",
    "human_time",
    "memory_html",
    "memory_repr",
    "result_html",
    "result_repr",
    "table",
]

#: Functions listed in the HTML of a Memory (the largest first).
TOP_FUNCTIONS = 5
#: Arrays named in the description of one stored result.
_ARRAYS_SHOWN = 4

# --- text ----------------------------------------------------------------------------------


def human_size(nbytes: float) -> str:
    """``nbytes`` in binary units, as ``10.5 MiB`` (the units ``bytes_limit`` reads)."""
    if nbytes < 1024:
        return f"{nbytes:.0f} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        nbytes /= 1024
        if nbytes < 1024 or unit == "TiB":
            break
    return f"{nbytes:.1f} {unit}"


def human_duration(seconds: float) -> str:
    """A duration as ``0 s``, ``12 ms``, ``3.4 s``, ``5m 02s``, ``2h 05m`` or ``3d 04h``."""
    if seconds <= 0:
        return "0 s"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms" if seconds >= 0.0005 else "<1 ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s"


def human_time(timestamp: float) -> str:
    """Seconds since the epoch as local ``YYYY-MM-DD HH:MM:SS`` (``-`` when unknown)."""
    if not timestamp:
        return "-"
    return datetime.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def hit_rate(hits: float, misses: float) -> str:
    """Hits over calls, as ``75%`` (``-`` before any call)."""
    calls = hits + misses
    return f"{100 * hits / calls:.0f}%" if calls else "-"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], align: str = "") -> str:
    """Rows as aligned columns under ``headers``; ``align`` gives 'l' or 'r' per column
    (the first column left, the others right by default)."""
    rows = [[str(cell) for cell in row] for row in rows]
    align = align or "l" + "r" * (len(headers) - 1)
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if a == "l" else c.rjust(w)
                         for c, w, a in zip(cells, widths, align, strict=True)).rstrip()

    return "\n".join(line(r) for r in [list(headers), *rows])


# --- reading a location ---------------------------------------------------------------------


def folder_nbytes(folder: Path) -> int:
    """Bytes of the files under ``folder`` (0 if it is gone)."""
    total = 0
    for dirpath, _, names in os.walk(folder):
        for name in names:
            with contextlib.suppress(FileNotFoundError):  # removed while we counted
                total += os.stat(os.path.join(dirpath, name)).st_size
    return total


def function_names(root: Path | str, ids: Iterable[str]) -> dict[str, str]:
    """``module/qualname`` folder -> the function's dotted name (from its ``code.json``;
    the folder name when it is missing).  Folder names are made file-system safe, so
    ``f.<locals>.g`` is only spelled exactly in ``code.json``."""
    if not isinstance(root, Path):
        return {function_id: function_id for function_id in ids}  # a URL: no local folder
    names = {}
    for function_id in ids:
        try:
            names[function_id] = str(json.loads((root / function_id / "code.json").read_text())
                                     ["function"])
        except (OSError, ValueError, KeyError, TypeError):
            names[function_id] = function_id
    return names


def describe_arrays(meta: dict[str, Any]) -> str:
    """A short description of the arrays of one entry, e.g.
    ``2 arrays, 40.8 KiB: float64 (5000,), float32 (10, 20)``."""
    specs = list(meta.get("arrays", {}).values())
    kind = {"array": "one array", "json": "a container", "pickle": "a pickled object"}.get(
        meta.get("skeleton"), "a result")
    if not specs:
        return f"{kind}, no arrays" if kind != "one array" else kind
    nbytes = sum(int(spec.get("nbytes") or 0) for spec in specs)
    shown = []
    for spec in specs[:_ARRAYS_SHOWN]:
        try:
            dtype = str(dtype_from_json(spec["dtype"]))
        except (KeyError, TypeError, ValueError):
            dtype = "?"
        shape = tuple(spec.get("shape") or ())
        codec = " compressed" if spec.get("codec") else ""
        shown.append(f"{dtype} {shape}{codec}")
    if len(specs) > _ARRAYS_SHOWN:
        shown.append(f"and {len(specs) - _ARRAYS_SHOWN} more")
    count = "1 array" if len(specs) == 1 else f"{len(specs)} arrays"
    prefix = "" if kind == "one array" else f"{kind} of "
    return f"{prefix}{count}, {human_size(nbytes)}: {', '.join(shown)}"


def _location_stats(
    location: str, store: Callable[[], Store | None]
) -> tuple[Path | str, dict[str, dict[str, float]] | None, str]:
    """(root or URL, per-function counters or None, why None); ``store`` opens the
    location's store (for a URL: its statistics are kept on this machine)."""
    try:
        if is_url(location):
            opened = store()
            return location, opened.stats() if opened is not None else {}, ""
        root = Path(location).expanduser().absolute()
        if not (root / "arraycache.json").is_file():
            return root, {}, ""  # nothing stored yet: do not create the folder to say so
        return root, Summary(root).stats(), ""
    except Exception as exc:  # advisory: the display never fails
        return location, None, f"statistics unavailable ({type(exc).__name__}: {exc})"


def _totals(functions: dict[str, dict[str, float]]) -> dict[str, float]:
    return {key: sum(f.get(key, 0) for f in functions.values()) for key in FUNCTION_STATS}


# --- reprs -----------------------------------------------------------------------------------


def memory_repr(memory: Memory) -> str:
    """One line, no disk access: ``Memory(location='/path')``."""
    return f"Memory(location={memory.location!r})"


def func_repr(func: MemorizedFunc) -> str:
    """One line, no disk access: ``MemorizedFunc(func=module.name, location='/path')``."""
    return f"MemorizedFunc(func={func.info.name}, location={func.location!r})"


def result_repr(result: MemorizedResult) -> str:
    """One line, no disk access, as joblib's."""
    return (f"MemorizedResult(location={result.location!r}, func={result.func_name!r}, "
            f"args_id={result.args_id!r})")


class _Markup(str):
    """HTML that is already escaped (the other values of a table are escaped)."""


def _cell(value: object) -> str:
    return value if isinstance(value, _Markup) else html.escape(str(value))


def _html(title: str, subtitle: str, pairs: Sequence[tuple[str, object]],
          extra: str = "") -> str:
    rows = "".join(f"<tr><th>{_cell(k)}</th><td>{_cell(v)}</td></tr>" for k, v in pairs)
    return (f"<div class='arraycache'><strong>{_cell(title)}</strong> "
            f"<code>{_cell(subtitle)}</code><table>{rows}</table>{extra}</div>")


def _size_cell(nbytes: float) -> _Markup:
    # The exact count in the tooltip, the readable one in the cell.
    return _Markup(f"<span title='{int(nbytes)} bytes'>{human_size(nbytes)}</span>")


def memory_html(memory: Memory) -> str:
    """Location, size, entries, hit rate, time saved and the largest functions."""
    if memory.location is None:
        return _html("Memory", "location=None", [("caching", "off: functions just run")])
    root, functions, problem = _location_stats(memory.location, memory._store)
    if functions is None:
        return _html("Memory", str(root), [("state", problem)])
    t = _totals(functions)
    stored = sum(1 for f in functions.values() if f["entries"])
    pairs: list[tuple[str, object]] = [
        ("size", _size_cell(t["bytes"])),
        ("entries", f"{int(t['entries'])} ({stored} function{'s' * (stored != 1)})"),
        ("hits", f"{int(t['hits'])} of {int(t['hits'] + t['misses'])} calls "
                 f"({hit_rate(t['hits'], t['misses'])})"),
        ("time saved", human_duration(t["time_saved"])),
    ]
    if memory.bytes_limit is not None:
        pairs.insert(1, ("bytes_limit", memory.bytes_limit))
    top = sorted(functions.items(), key=lambda kv: (-kv[1]["bytes"], -kv[1]["time_saved"], kv[0]))
    names = function_names(root, [fid for fid, _ in top[:TOP_FUNCTIONS]])
    rows = "".join(
        "<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in (
            names[fid], int(s["entries"]), _size_cell(s["bytes"]), int(s["hits"]),
            int(s["misses"]), human_duration(s["time_saved"]))) + "</tr>"
        for fid, s in top[:TOP_FUNCTIONS]
    )
    extra = ""
    if rows:
        more = len(top) - TOP_FUNCTIONS
        caption = f"<caption>largest functions ({more} more)</caption>" if more > 0 else ""
        extra = ("<table>" + caption + "<tr><th>function</th><th>entries</th><th>size</th>"
                 "<th>hits</th><th>misses</th><th>time saved</th></tr>" + rows + "</table>")
    return _html("Memory", str(root), pairs, extra)


def func_html(func: MemorizedFunc) -> str:
    """Function name, location, entries, size, hits and misses, time saved."""
    root, functions, problem = _location_stats(func.location, lambda: func.store)
    if functions is None:
        return _html("MemorizedFunc", func.info.name, [("state", problem)])
    s = functions.get(func.func_id) or dict.fromkeys(FUNCTION_STATS, 0)
    return _html("MemorizedFunc", func.info.name, [
        ("location", root),
        ("entries", int(s["entries"])),
        ("size", _size_cell(s["bytes"])),
        ("hits", int(s["hits"])),
        ("misses", int(s["misses"])),
        ("hit rate", hit_rate(s["hits"], s["misses"])),
        ("time saved", human_duration(s["time_saved"])),
    ])


def result_html(result: MemorizedResult) -> str:
    """Function, entry, size, creation time, compute time and the stored arrays."""
    pairs: list[tuple[str, object]] = [
        ("location", result.location), ("entry", _Markup(f"<code>{_cell(result.args_id)}</code>")),
    ]
    try:
        # A store is only made for an entry that exists: it would create the location.
        meta = LocalStore(result.location).read_meta(result.entry) if result.entry.is_dir() \
            else None
        problem = "cleared (no stored result)"
    except (ValueError, KeyError, OSError) as exc:
        meta, problem = None, f"unreadable ({exc})"
    if meta is None:
        return _html("MemorizedResult", result.func_name, [*pairs, ("state", problem)])
    arguments = ", ".join(f"{k}={v}" for k, v in (meta.get("args") or {}).items())
    if len(arguments) > 80:
        arguments = arguments[:77] + "..."
    return _html("MemorizedResult", result.func_name, [
        *pairs,
        ("arguments", arguments),
        ("size", _size_cell(folder_nbytes(result.entry))),
        ("created", human_time(float(meta.get("created") or 0))),
        ("compute time", human_duration(float(meta.get("duration") or 0))),
        ("content", describe_arrays(meta)),
    ])
