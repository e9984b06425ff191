"""Object arrays of Python strings as UTF-8 bytes, and back, at C speed.

The strings are stored joined by a separator, a character that none of them contains
(NUL when it is free): ``data`` is ``sep.join(strings)`` in UTF-8 (lone surrogates kept
by ``surrogatepass``), and ``nulls`` (uint8, 0 for a string, else a code of
:data:`NULL_CODES`) marks missing values, which are empty strings in ``data``.

Loading is then one ``str.split`` over the decoded bytes: CPython builds every ``str`` in
one C loop.  Building them is the floor of the cost (measured here: 5M short strings
split in about the time pickle takes to unpickle them, and faster than scattering them
into fixed-width UCS4 rows for numpy to convert); only Arrow-backed columns avoid it.
Offsets are not stored: the separator gives the boundaries.
"""

from __future__ import annotations

import math
import struct

import numpy as np

from .plainjson import NotPlain

__all__ = ["NULL_CODES", "decode", "encode"]

#: Missing values an object column may hold, by their code in ``nulls`` (0: a string).
NULL_CODES = ("None", "nan", "NA", "NaT")
#: Separators tried in turn: control characters, then noncharacters of Unicode.
_SEPARATORS = [chr(c) for c in (*range(0x20), 0x7F, 0xFFFF, 0xFFFE, 0xFDD0)]
_NAN_BITS = struct.pack("<d", math.nan)


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


def encode(flat: np.ndarray) -> tuple[np.ndarray, str, np.ndarray | None]:
    """Encode a 1-d object array of ``str`` and missing values.

    Returns ``(data, separator, nulls)``: the UTF-8 bytes as uint8, the character that
    separates the strings in them, and the codes of missing values (None if none).

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
    text = "".join(strings)  # searched in C, not string by string
    separator = next((c for c in _SEPARATORS if c not in text), None)
    if separator is None:
        raise NotPlain
    data = separator.join(strings).encode("utf-8", "surrogatepass")
    return np.frombuffer(data, dtype=np.uint8), separator, nulls


def decode(data: np.ndarray, separator: str, nulls: np.ndarray | None, n: int) -> np.ndarray:
    """Inverse of :func:`encode`: a new 1-d object array of ``n`` items.

    Raises
    ------
    ValueError
        If the data does not hold ``n`` strings (a damaged entry); UnicodeDecodeError is one.
    """
    if n == 0:
        return np.empty(0, dtype=object)
    if len(separator) != 1:
        raise ValueError(f"bad string separator {separator!r}")
    # str() reads the buffer in place: a memory-mapped column is not copied first.
    parts = str(np.ascontiguousarray(data, dtype=np.uint8), "utf-8", "surrogatepass").split(
        separator
    )
    if len(parts) != n:
        raise ValueError(f"string data holds {len(parts)} strings, not {n}")
    out = np.fromiter(parts, dtype=object, count=n)
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
