"""Object arrays of Python strings as UTF-8 bytes, and back, at C speed.

The strings are stored joined by a separator, a character that none of them contains
(NUL when it is free): ``data`` is ``sep.join(strings)`` in UTF-8 (lone surrogates kept
by ``surrogatepass``), and ``nulls`` (uint8, 0 for a string, else a code of
:data:`NULL_CODES`) marks missing values, which are empty strings in ``data``.
Offsets are not stored: the separator gives the boundaries.

Loading is one ``str.split`` over the decoded bytes: CPython builds every ``str`` in one
C loop.  Building one object per item is the floor of the cost (measured here: 5M short
strings split in about 2/3 of the time pickle takes to unpickle them, and faster than
scattering them into fixed-width UCS4 rows for numpy to convert); only Arrow-backed
columns avoid it.  So a column that repeats its strings (a sample of it has 4 items per
distinct string or more) is stored as its distinct strings plus ``codes``, and filled by
``numpy.take`` on load: one object per distinct string.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np

from .plainjson import NotPlain

__all__ = ["NULL_CODES", "Encoded", "decode", "encode"]

#: Missing values an object column may hold, by their code in ``nulls`` (0: a string).
NULL_CODES = ("None", "nan", "NA", "NaT")
#: Separators tried in turn: control characters, then noncharacters of Unicode.
_SEPARATORS = [chr(c) for c in (*range(0x20), 0x7F, 0xFFFF, 0xFFFE, 0xFDD0)]
_NAN_BITS = struct.pack("<d", math.nan)
#: Items looked at to guess whether a column repeats its strings, and how many times on
#: average it must, for a column to be stored as distinct strings + codes.
_SAMPLE = 4096
_REPEATS = 4


def _null_values() -> tuple:
    import pandas as pd  # only frames hold strings: pandas is loaded already

    return (None, math.nan, pd.NA, pd.NaT)


def _null_code(value: object, values: tuple) -> int:
    if value is None:
        return 1
    if type(value) is float and struct.pack("<d", value) == _NAN_BITS:
        return 2
    for code, known in enumerate(values[2:], 3):
        if value is known:
            return code
    raise NotPlain  # another missing value (np.float64('nan'), a NaN with a payload...)


@dataclass(frozen=True)
class Encoded:
    """An object array of strings, encoded."""

    data: np.ndarray
    """The strings (the distinct ones when ``codes`` is set) joined by ``separator``, as
    UTF-8 bytes (uint8)."""
    separator: str
    """A character that none of the strings contains."""
    nulls: np.ndarray | None
    """Per item, 0 for a string or the code of a missing value; None when none is missing."""
    codes: np.ndarray | None
    """Per item, its index among the distinct strings; None when ``data`` holds every item."""
    count: int
    """Strings in ``data``."""


def encode(flat: np.ndarray) -> Encoded:
    """Encode a 1-d object array of ``str`` and missing values.

    Raises
    ------
    NotPlain
        If an item is neither exactly a ``str`` nor one of the missing values of
        :data:`NULL_CODES` (str subclasses, bytes, numbers...), or if the strings
        between them hold every candidate separator.
    """
    import pandas as pd

    strings = flat.tolist()
    missing = pd.isna(flat)
    nulls = None
    if missing.any():
        values = _null_values()
        nulls = np.zeros(flat.size, dtype=np.uint8)
        for i in np.flatnonzero(missing).tolist():
            nulls[i] = _null_code(strings[i], values)
            strings[i] = ""
    if any(kind is not str for kind in set(map(type, strings))):
        raise NotPlain
    codes = None
    sample = strings[:: max(1, len(strings) // _SAMPLE)]
    if len(sample) >= 64 and len(set(sample)) * _REPEATS <= len(sample):
        # Few distinct strings: store those once, and each item as a code. A load then
        # builds one object per distinct string and fills the column with numpy.take.
        found, distinct = pd.factorize(np.asarray(strings, dtype=object))
        codes = found.astype(np.min_scalar_type(max(len(distinct) - 1, 0)))
        strings = distinct.tolist()
    text = "".join(strings)  # searched in C, not string by string
    separator = next((c for c in _SEPARATORS if c not in text), None)
    if separator is None:
        raise NotPlain
    data = separator.join(strings).encode("utf-8", "surrogatepass")
    return Encoded(np.frombuffer(data, dtype=np.uint8), separator, nulls, codes, len(strings))


def decode(
    data: np.ndarray, separator: str, nulls: np.ndarray | None, codes: np.ndarray | None,
    n: int, count: int,
) -> np.ndarray:
    """Inverse of :func:`encode`: a new 1-d object array of ``n`` items, from ``count``
    strings in ``data``.

    Raises
    ------
    ValueError
        If the parts do not match (a damaged entry); UnicodeDecodeError is one.
    """
    if n == 0 and count == 0:
        return np.empty(0, dtype=object)
    if len(separator) != 1 or (codes is None and count != n):
        raise ValueError("string parts do not match")
    # str() reads the buffer in place: a memory-mapped column is not copied first.
    parts = str(np.ascontiguousarray(data, dtype=np.uint8), "utf-8", "surrogatepass").split(
        separator
    )
    if len(parts) != count:
        raise ValueError(f"string data holds {len(parts)} strings, not {count}")
    out = np.fromiter(parts, dtype=object, count=count)
    if codes is not None:
        if len(codes) != n:
            raise ValueError("string codes do not match the strings")
        out = out.take(codes)  # raises IndexError for a code out of range
    if nulls is not None:
        if len(nulls) != n:
            raise ValueError("string nulls do not match the strings")
        for code, value in enumerate(_null_values(), 1):
            where = np.flatnonzero(nulls == code)
            if where.size:
                filler = np.empty(where.size, dtype=object)
                filler.fill(value)
                out[where] = filler
    return out
