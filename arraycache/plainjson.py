"""Plain values and dtypes as JSON that gives them back exactly.

A result made only of None, bool, int, float, str, lists, tuples, dicts, numpy scalars,
arrays and pandas frames (described by frames.py) is stored as tagged JSON in the entry's
attributes (see persistence.py), so loading it never unpickles: a container is
``[tag, ...]`` and a JSON scalar is itself.
Whatever JSON would not give back exactly (type, bits, identity) is refused with
:class:`NotPlain`, and the caller pickles the result instead.
"""

from __future__ import annotations

import math
import struct
import sys
from typing import Any

import numpy as np

__all__ = [
    "NotPlain", "TreeWriter", "decode_tree", "dtype_code", "dtype_from_json",
    "dtype_metadata_to_json", "dtype_to_json", "dtype_with_metadata", "frame_types", "storable",
]


class NotPlain(Exception):
    """The value cannot be written as JSON that gives it back exactly."""


# --- dtypes ----------------------------------------------------------------------------------


def dtype_to_json(dtype: np.dtype) -> Any:
    """``dtype`` as numpy's ``descr`` (without metadata: see dtype_metadata_to_json)."""
    if _has_metadata(dtype):
        # Not numpy's own dropping of it: that fails for fields with titles (numpy 2.4).
        dtype = _without_metadata(dtype)
    return np.lib.format.dtype_to_descr(dtype)


def _has_metadata(dtype: np.dtype) -> bool:
    if dtype.metadata is not None:
        return True
    if dtype.fields is not None:
        return any(_has_metadata(dtype.fields[name][0]) for name in dtype.names)
    return dtype.subdtype is not None and _has_metadata(dtype.subdtype[0])


def _record(dtype: np.dtype, formats: list[np.dtype]) -> np.dtype:
    """Record dtype ``dtype`` with its fields' dtypes replaced by ``formats``."""
    fields = dtype.fields
    return np.dtype({
        "names": list(dtype.names),
        "formats": formats,
        "offsets": [fields[n][1] for n in dtype.names],
        "titles": [fields[n][2] if len(fields[n]) > 2 else None for n in dtype.names],
        "itemsize": dtype.itemsize,
    })


def _without_metadata(dtype: np.dtype) -> np.dtype:
    if dtype.fields is not None:
        return _record(dtype, [_without_metadata(dtype.fields[n][0]) for n in dtype.names])
    if dtype.subdtype is not None:
        base, shape = dtype.subdtype
        return np.dtype((_without_metadata(base), shape))
    return np.dtype(dtype.str) if dtype.metadata is not None else dtype


def dtype_from_json(descr: Any) -> np.dtype:
    """Inverse of :func:`dtype_to_json` (JSON turned the descr's tuples into lists)."""
    if isinstance(descr, str):
        return np.dtype(descr)

    def field(spec: list) -> tuple:
        name, sub, *shape = spec
        name = tuple(name) if isinstance(name, list) else name
        sub = sub if isinstance(sub, str) else [field(f) for f in sub]
        return (name, sub, tuple(shape[0])) if shape else (name, sub)

    return np.lib.format.descr_to_dtype([field(f) for f in descr])


def dtype_code(dtype: np.dtype) -> str:
    """A string that gives back ``dtype`` with its scalar type: ``dtype.str`` names one
    type per kind and size ('<i8' is np.int64, also for np.longlong), the character code
    tells the C types apart."""
    code = dtype.str
    if dtype.fields is None and np.dtype(code).type is not dtype.type:
        code = ("" if dtype.byteorder in "=|" else dtype.byteorder) + dtype.char
    return code


def dtype_metadata_to_json(dtype: np.dtype) -> Any:
    """The ``metadata`` of ``dtype`` and of its fields as JSON, or None when there is none.

    ``descr`` drops it, but it carries meaning (h5py enums, string encodings).  The JSON
    mirrors the dtype: ``{"m": metadata, "f": [[field name, JSON], ...], "b": JSON of a
    subarray's base}``, each key present only where there is metadata.

    Raises
    ------
    NotPlain
        If the metadata holds something that is not plain (the array then stays in the
        pickled skeleton, which keeps any metadata).
    """
    node: dict[str, Any] = {}
    fields = dtype.fields
    if fields is not None:
        nested = [[name, dtype_metadata_to_json(fields[name][0])] for name in dtype.names]
        nested = [pair for pair in nested if pair[1] is not None]
        if nested:
            node["f"] = nested
    elif dtype.subdtype is not None:
        base = dtype_metadata_to_json(dtype.subdtype[0])
        if base is not None:
            node["b"] = base
    if dtype.metadata is not None:
        node["m"] = TreeWriter(no_arrays).encode(dict(dtype.metadata))
    return node or None


def dtype_with_metadata(dtype: np.dtype, node: dict[str, Any]) -> np.dtype:
    """Inverse of :func:`dtype_metadata_to_json`: ``dtype`` with the metadata put back."""
    if "f" in node:
        nested = dict(node["f"])
        fields = dtype.fields
        dtype = _record(dtype, [
            dtype_with_metadata(fields[n][0], nested[n]) if n in nested else fields[n][0]
            for n in dtype.names
        ])
    if "b" in node:
        base, shape = dtype.subdtype
        dtype = np.dtype((dtype_with_metadata(base, node["b"]), shape))
    if "m" in node:
        dtype = np.dtype(dtype, metadata=decode_tree(node["m"], {}))
    return dtype


def storable(arr: Any) -> bool:
    """Whether ``arr`` can be stored as a zarr array with its dtype in JSON (if not, the
    result that holds it is pickled)."""
    if type(arr) not in (np.ndarray, np.memmap) or arr.dtype.hasobject:
        return False
    try:
        dtype_metadata_to_json(arr.dtype)
    except NotPlain:
        return False
    return True


def frame_types() -> tuple[type, ...]:
    """pandas' DataFrame and Series, or () when pandas is not imported (then no result holds
    one, and nothing here imports it)."""
    module = sys.modules.get("pandas")
    try:
        return (module.DataFrame, module.Series) if module is not None else ()
    except AttributeError:  # pandas half imported
        return ()


# --- plain results ---------------------------------------------------------------------------

_PLAIN_SCALARS = (type(None), bool, int, float, str)
#: Ints outside this range are written as hex strings: JSON readers limit integers (Python's
#: own refuses more than 4300 digits).
_JSON_INT_RANGE = (-(1 << 63), (1 << 64) - 1)


class TreeWriter:
    """Encodes plain results as tagged JSON; arrays go to zarr through ``store_array``.

    Anything JSON would not give back exactly raises :class:`NotPlain` (the result is
    then pickled): subclasses of plain types, numpy scalars whose type a dtype string
    does not name, and a list, dict or frame that appears twice (or inside itself),
    whose identity pickle keeps and JSON would split into copies.  pandas DataFrames
    and Series are written by ``frames`` (a ``frames.FrameWriter``), when given.
    """

    def __init__(self, store_array: Any, frames: Any = None) -> None:
        self.store_array = store_array
        self.frames = frames
        self.containers: set[int] = set()

    def encode(self, obj: Any) -> Any:
        """``obj`` as JSON-ready lists and scalars.

        Raises
        ------
        NotPlain
            If JSON would not give ``obj`` back exactly.
        """
        kind = type(obj)
        if kind in _PLAIN_SCALARS:
            if kind is float and not math.isfinite(obj):
                return ["F", struct.pack("<d", obj).hex()]  # with a NaN's sign and payload
            if kind is int and not _JSON_INT_RANGE[0] <= obj <= _JSON_INT_RANGE[1]:
                return ["i", hex(obj)]
            return obj
        if kind is list or kind is dict:
            if id(obj) in self.containers:
                raise NotPlain
            self.containers.add(id(obj))
            if kind is list:
                return ["l", [self.encode(x) for x in obj]]
            return ["d", [[self.encode(k), self.encode(v)] for k, v in obj.items()]]
        if kind is tuple:
            return ["t", [self.encode(x) for x in obj]]
        if kind is np.ndarray or kind is np.memmap:
            if not storable(obj):
                raise NotPlain
            return ["a", self.store_array(obj)]
        if isinstance(obj, np.generic):
            return _encode_numpy_scalar(obj)
        if self.frames is not None and kind in self.frames.types:
            if id(obj) in self.containers:
                raise NotPlain
            self.containers.add(id(obj))
            return ["P", self.frames.encode(obj, self.store_array)]
        raise NotPlain


def _encode_numpy_scalar(obj: np.generic) -> Any:
    kind = type(obj)
    if kind is np.str_:
        return ["u", str(obj)]
    if kind is np.bytes_:
        return ["b", bytes(obj).hex()]  # its dtype's bytes would drop trailing NULs
    dtype = obj.dtype
    if dtype.hasobject or dtype.names is not None or dtype.itemsize == 0:
        raise NotPlain
    code = dtype_code(dtype)
    if np.dtype(code).type is not kind:  # a subclass
        raise NotPlain
    return ["s", code, obj.tobytes().hex()]


def no_arrays(arr: np.ndarray) -> str:
    """A ``store_array`` for TreeWriter where no array may appear."""
    raise NotPlain


def decode_tree(node: Any, arrays: dict[str, np.ndarray]) -> Any:
    """Inverse of :meth:`TreeWriter.encode`; ``arrays`` maps stored names to arrays."""
    if not isinstance(node, list):
        return node
    tag, *rest = node
    if tag == "l":
        return [decode_tree(x, arrays) for x in rest[0]]
    if tag == "t":
        return tuple(decode_tree(x, arrays) for x in rest[0])
    if tag == "d":
        return {decode_tree(k, arrays): decode_tree(v, arrays) for k, v in rest[0]}
    if tag == "a":
        return arrays[rest[0]]
    if tag == "s":
        return np.frombuffer(bytes.fromhex(rest[1]), dtype=rest[0])[0]
    if tag == "F":
        return struct.unpack("<d", bytes.fromhex(rest[0]))[0]
    if tag == "i":
        return int(rest[0], 16)
    if tag == "u":
        return np.str_(rest[0])
    if tag == "b":
        return np.bytes_(bytes.fromhex(rest[0]))
    if tag == "P":
        from .frames import decode  # imports pandas: only for entries that hold a frame

        return decode(rest[0], arrays)
    raise ValueError(f"unknown skeleton tag {tag!r}")
