"""Memory storage of pandas frames: store (miss) and load (hit) of a 5-million-row DataFrame.

The frame has a float64, an int64, a string and a categorical column (the string column
has pandas' default dtype: ``str``, Python-backed without pyarrow, Arrow-backed with it;
one million distinct values, like ids). As in storage.py the cached function returns a
module-level frame looked up by a short key, so a miss costs "store" and a hit "load";
``frame-hit-mmap-numeric`` is the same frame without its string column, which shows what
the strings alone cost: Python strings are built one object each on every load.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .common import BIG, Workload, timed, warm_memory

ROWS = 5_000_000
#: Bytes per row of the numeric columns (8 + 8 + 1) plus ~15 of string: the "size" shown.
ROW_BYTES = 32

_DATA: dict[str, object] = {}


def produce(key: str) -> object:
    """The cached function: returns the frame registered under ``key``."""
    return _DATA[key]


def _frame(rows: int, strings: bool = True):
    import pandas as pd

    rng = np.random.default_rng(0)
    columns = {
        "f": rng.random(rows),
        "i": rng.integers(0, 1000, rows),
        "c": pd.Categorical.from_codes(rng.integers(0, 3, rows), ["red", "green", "blue"]),
    }
    if strings:
        ids = rng.integers(0, 1_000_000, rows)
        columns["s"] = pd.array(np.char.add("item", ids.astype(str)).astype(object), dtype="str")
    return pd.DataFrame(columns)


def _cached(lib, tmp: Path, **memory_kwargs):
    import pandas as pd

    memory = lib.Memory(str(tmp / "cache"), verbose=0, **memory_kwargs)
    func = memory.cache(produce)
    _DATA["tiny"] = pd.DataFrame({"s": ["a", "b"], "x": [1.0, 2.0]})
    func("tiny")
    func("tiny")  # lazy imports of both paths are not timed
    return func


def _is_mapped(frame) -> float:
    return float(any(isinstance(b.values, np.memmap) for b in frame._mgr.blocks))


def _hit(lib, size: int, tmp: Path, mmap_mode: str | None, strings: bool = True) -> dict:
    rows = size // ROW_BYTES
    _DATA[BIG] = _frame(rows, strings)
    func = _cached(lib, tmp, mmap_mode=mmap_mode)
    func(BIG)
    expected_dtypes = list(_DATA.pop(BIG).dtypes)
    warm_memory(size)
    seconds, result = timed(lambda: func(BIG))  # a miss would raise: _DATA has no BIG now
    assert list(result.dtypes) == expected_dtypes and len(result) == rows
    out = {"time": seconds}
    if mmap_mode is not None:
        out["is_memmap"] = _is_mapped(result)
    del result
    out["best_of_5_s"] = min(timed(lambda: func(BIG))[0] for _ in range(5))
    return out


def frame_hit_mmap(lib, size: int, tmp: Path) -> dict:
    return _hit(lib, size, tmp, "r")


def frame_hit_mmap_numeric(lib, size: int, tmp: Path) -> dict:
    return _hit(lib, size, tmp, "r", strings=False)


def frame_hit_nommap(lib, size: int, tmp: Path) -> dict:
    return _hit(lib, size, tmp, None)


def frame_store(lib, size: int, tmp: Path) -> dict:
    _DATA[BIG] = _frame(size // ROW_BYTES)
    func = _cached(lib, tmp)
    warm_memory(size)
    seconds, _ = timed(lambda: func(BIG))
    return {"time": seconds}


_SIZE = ROWS * ROW_BYTES
WORKLOADS = [
    Workload("frame-store", frame_store, "storage", fixed_size=_SIZE,
             notes="miss: 5M-row frame, float/int/str/category columns"),
    Workload("frame-hit-mmap", frame_hit_mmap, "storage", fixed_size=_SIZE,
             notes="hit with mmap_mode='r' of the same frame"),
    Workload("frame-hit-mmap-numeric", frame_hit_mmap_numeric, "storage", fixed_size=_SIZE,
             notes="same without the string column"),
    Workload("frame-hit-nommap", frame_hit_nommap, "storage", fixed_size=_SIZE,
             notes="hit loading into memory"),
]
