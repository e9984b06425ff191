"""pandas DataFrames and Series as arrays plus a JSON description, loaded without pickle.

A frame is written the way pandas holds it, block by block: a block of numeric, bool or
datetime columns is one 2-d array whose row ``r`` is one column (so a hit maps it with
``mmap_mode`` and hands the map to pandas as the block, with no copy, and the loaded
frame has the same blocks, hence the same :func:`arraycache.hash`, as the one stored);
an extension column is its parts: a categorical's codes and categories, a nullable
column's values and mask, a string column's UTF-8 bytes (see strings.py; Arrow-backed
ones as Arrow's offsets, bytes and validity bits, which load without a copy).
The index and the column labels are rebuilt by the functions pandas itself unpickles
them with, from the same arguments.  The description (``spec``) names each part:
``["a", name]`` for an array of the entry, ``["x", dtype, shape, order, hex]`` for a
small one kept in the JSON.

Anything else (a column of other Python objects, interval, period, sparse or
``ArrowDtype`` columns, subclasses, time zones that do not round-trip) raises
:class:`~arraycache.plainjson.NotPlain` while encoding, and the caller pickles the frame
as before.  This module imports pandas; persistence imports it only when a result holds
a frame (on dump) or its metadata says it does (on load).
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from . import strings
from .plainjson import (
    NotPlain,
    TreeWriter,
    decode_tree,
    dtype_code,
    frame_types,
    no_arrays,
    storable,
)

__all__ = ["INLINE_NBYTES", "FrameWriter", "decode"]

#: Parts smaller than this go into the JSON as hex rather than into a zarr array of their
#: own (a zarr array costs a folder, ~1 ms to write and tens of microseconds to open).
INLINE_NBYTES = 1024
#: Object arrays of other plain values (labels such as 0, 'a' and (1, 'b') together) are
#: written as JSON items up to this many; longer ones are pickled.
JSON_ITEMS = 1000

StoreArray = Callable[[np.ndarray], str]


class _Part:
    """A numpy array of a plan, stored when the plan is written."""

    __slots__ = ("arr",)

    def __init__(self, arr: np.ndarray) -> None:
        self.arr = arr


class FrameWriter:
    """Encodes the frames of one result; a frame is planned once, written on demand.

    ``encode`` may run twice per frame (a dry run with a ``store_array`` that writes
    nothing, then the real one): the plan, which holds the encoded strings, is kept.
    """

    def __init__(self) -> None:
        self.types = frame_types()
        # id -> (the frame, kept alive so that its id stays its own; its plan or None)
        self.plans: dict[int, tuple[Any, dict | None]] = {}

    def encode(self, obj: Any, store_array: StoreArray) -> dict[str, Any]:
        """The JSON description of DataFrame or Series ``obj``; its arrays go to
        ``store_array``, which returns the name of the stored array.

        Raises
        ------
        NotPlain
            If the frame holds something that would not come back exactly.
        """
        known = self.plans.get(id(obj))
        if known is None:
            try:
                plan = _plan(obj)
            except Exception:  # NotPlain, or unfamiliar pandas internals: pickled, as before
                plan = None
            known = self.plans[id(obj)] = (obj, plan)
        if known[1] is None:
            raise NotPlain
        return _write(known[1], store_array)


def _write(node: Any, store_array: StoreArray) -> Any:
    if isinstance(node, _Part):
        arr = node.arr
        if arr.nbytes < INLINE_NBYTES and arr.dtype.metadata is None:
            f_order = arr.ndim > 1 and arr.flags.f_contiguous and not arr.flags.c_contiguous
            data = np.ascontiguousarray(arr.T if f_order else arr)
            return ["x", dtype_code(arr.dtype), list(arr.shape), "F" if f_order else "C",
                    data.tobytes().hex()]
        return ["a", store_array(arr)]
    if isinstance(node, dict):
        return {key: _write(value, store_array) for key, value in node.items()}
    if isinstance(node, list):
        return [_write(value, store_array) for value in node]
    return node


def _array(node: list, arrays: dict[str, np.ndarray]) -> np.ndarray:
    if node[0] == "a":
        return arrays[node[1]]
    _, code, shape, order, data = node
    flat = np.frombuffer(bytearray.fromhex(data), dtype=np.dtype(code))
    return flat.reshape(shape[::-1]).T if order == "F" else flat.reshape(shape)


def _part(arr: np.ndarray) -> _Part:
    if not storable(arr):  # object arrays are handled before; dtype metadata that is not JSON
        raise NotPlain
    return _Part(arr)


def _label(value: Any) -> Any:
    return TreeWriter(no_arrays).encode(value)


# --- plans -------------------------------------------------------------------------------------


def _plan(obj: Any) -> dict[str, Any]:
    kind = type(obj)
    if kind is pd.DataFrame:
        mgr = obj._mgr
        if type(mgr).__name__ != "BlockManager":
            raise NotPlain
        blocks = [
            {"loc": block.mgr_locs.as_array.tolist(), "values": _values(block.values)}
            for block in mgr.blocks
        ]
        spec = {"type": "DataFrame", "columns": _index(mgr.axes[0]),
                "index": _index(mgr.axes[1]), "blocks": blocks}
    elif kind is pd.Series:
        spec = {"type": "Series", "index": _index(obj.index), "name": _label(obj.name),
                "values": _values(obj._values)}
    else:
        raise NotPlain
    if list(obj._metadata) != list(kind._metadata):
        raise NotPlain  # metadata added on the instance: pickle keeps it
    if obj.attrs:
        spec["attrs"] = TreeWriter(no_arrays).encode(dict(obj.attrs))
    if not obj.flags.allows_duplicate_labels:
        spec["allows_duplicate_labels"] = False
    return spec


def _values(values: Any) -> dict[str, Any]:
    """Plan of a block's or a Series' values: an ndarray (1-d or 2-d) or an extension array."""
    spec = _array_values(values)
    state = _incidental_state(values)
    if state:
        spec["state"] = state
    return spec


#: Cached properties of extension arrays that are cheap to fill again (see _settle).
_REFILLED = frozenset({"unit", "dtype"})


def _incidental_state(values: Any) -> dict[str, Any]:
    """What an extension array holds beside its values: its property cache and read-only
    flag.  Pickle keeps them, and :func:`arraycache.hash` of a frame sees them (it hashes
    pandas objects through their pickled state), so a loaded frame gets them back: then it
    hashes as the stored one did, and a cached step that takes it hits."""
    attributes = getattr(values, "__dict__", None)
    if not attributes:
        return {}
    state: dict[str, Any] = {}
    if "_cache" in attributes:
        state["cache"] = sorted(str(key) for key in attributes["_cache"])
    if type(attributes.get("_readonly")) is bool:
        state["readonly"] = attributes["_readonly"]
    return state


def _settle(values: Any, state: dict[str, Any]) -> None:
    """Give loaded ``values`` the incidental state of the stored ones (best effort: a miss
    here changes a hash, never a value)."""
    attributes = getattr(values, "__dict__", None)
    if attributes is None:
        return
    wanted = set(state.get("cache", ()))
    cache = attributes.get("_cache")
    if cache is not None:
        for key in [key for key in cache if key not in wanted]:
            del cache[key]
        if not cache and "cache" not in state:
            del attributes["_cache"]
    for key in sorted(wanted & _REFILLED):
        getattr(values, key)
    if "readonly" in state:
        attributes["_readonly"] = state["readonly"]


def _array_values(values: Any) -> dict[str, Any]:
    kind = type(values)
    if kind is np.ndarray or kind is np.memmap:
        if values.dtype.hasobject:
            return _objects(values)
        return {"kind": "ndarray", "data": _part(values)}
    arrays = pd.arrays
    if kind is pd.Categorical:
        dtype = values.dtype
        return {"kind": "Categorical", "codes": _part(values.codes),
                "categories": _index(dtype.categories), "ordered": bool(dtype.ordered)}
    if kind in (arrays.DatetimeArray, arrays.TimedeltaArray):
        if getattr(values, "freq", None) is not None:  # pandas 2 keeps a freq on arrays
            raise NotPlain
        spec = {"kind": kind.__name__, "data": _part(values._ndarray)}
        if isinstance(values.dtype, pd.DatetimeTZDtype):
            spec["tz"] = _tz(values.dtype.tz)
        return spec
    if kind in (arrays.IntegerArray, arrays.FloatingArray, arrays.BooleanArray):
        return {"kind": kind.__name__, "data": _part(values._data), "mask": _part(values._mask)}
    if kind is arrays.StringArray and values.dtype.storage == "python":
        return {"kind": "StringArray", "na": _na_name(values.dtype.na_value),
                "strings": _objects(values._ndarray)}
    if kind is getattr(arrays, "ArrowStringArray", None) and isinstance(values.dtype,
                                                                         pd.StringDtype):
        return _arrow_strings(values)
    raise NotPlain


def _na_name(value: Any) -> str:
    if value is pd.NA:
        return "NA"
    if isinstance(value, float) and value != value:
        return "nan"
    raise NotPlain


def _objects(values: np.ndarray) -> dict[str, Any]:
    """An object ndarray: strings and missing values, else a few plain items as JSON."""
    flat = values.reshape(-1)
    try:
        encoded = strings.encode(flat)
    except NotPlain:
        if flat.size > JSON_ITEMS:
            raise
        return {"kind": "items", "shape": list(values.shape),
                "items": TreeWriter(no_arrays).encode(flat.tolist())}
    spec = {"kind": "strings", "shape": list(values.shape), "data": _Part(encoded.data),
            "separator": encoded.separator, "count": encoded.count}
    if encoded.nulls is not None:
        spec["nulls"] = _Part(encoded.nulls)
    if encoded.codes is not None:
        spec["codes"] = _Part(encoded.codes)
    return spec


def _arrow_strings(values: Any) -> dict[str, Any]:
    chunked = values._pa_array
    arr = chunked.combine_chunks() if chunked.num_chunks != 1 else chunked.chunk(0)
    if str(arr.type) != "large_string":
        raise NotPlain
    n = len(arr)
    _, offsets_buffer, data_buffer = arr.buffers()
    offsets = np.zeros(1, dtype=np.int64)
    if offsets_buffer is not None and n:
        offsets = np.frombuffer(offsets_buffer, dtype=np.int64)[arr.offset : arr.offset + n + 1]
    data = np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer is not None else None
    data = data[offsets[0] : offsets[-1]] if data is not None else np.zeros(0, np.uint8)
    spec = {"kind": "ArrowStringArray", "na": _na_name(values.dtype.na_value), "length": n,
            "offsets": _Part(offsets - offsets[0]), "data": _Part(np.ascontiguousarray(data))}
    if arr.null_count:
        valid = arr.is_valid().to_numpy(zero_copy_only=False)
        spec["validity"] = _Part(np.packbits(valid, bitorder="little"))
    return spec


def _tz(tz: Any) -> list:
    """A time zone as JSON, if the JSON gives back an equal object of the same type."""
    if type(tz).__module__ == "zoneinfo" and getattr(tz, "key", None) is not None:
        spec = ["zoneinfo", tz.key]
    elif type(tz) is datetime.timezone:
        offset = tz.utcoffset(None)
        spec = ["fixed", offset.days * 86400 + offset.seconds, offset.microseconds,
                tz.tzname(None)]
    else:
        raise NotPlain  # pytz, dateutil... stay pickled
    back = _tz_from(spec)
    if type(back) is not type(tz) or back != tz or repr(back) != repr(tz):
        raise NotPlain
    return spec


def _tz_from(spec: list) -> Any:
    if spec[0] == "zoneinfo":
        import zoneinfo

        return zoneinfo.ZoneInfo(spec[1])
    _, seconds, micros, name = spec
    offset = datetime.timedelta(seconds=seconds, microseconds=micros)
    if offset == datetime.timedelta(0) and name == "UTC":
        return datetime.UTC
    plain = datetime.timezone(offset)
    return plain if plain.tzname(None) == name else datetime.timezone(offset, name)


_INDEX_BUILDERS = {
    "_new_Index": "pandas.core.indexes.base",
    "_new_DatetimeIndex": "pandas.core.indexes.datetimes",
    "_new_TimedeltaIndex": "pandas.core.indexes.timedeltas",
}
_INDEX_CLASSES = ("Index", "RangeIndex", "MultiIndex", "CategoricalIndex", "DatetimeIndex",
                  "TimedeltaIndex")


def _index(index: Any) -> dict[str, Any]:
    """Plan of an Index: the arguments pandas' own unpickling rebuilds it from."""
    builder, args, *state = index.__reduce__()
    cls, d = args
    if (
        builder.__name__ not in _INDEX_BUILDERS
        or builder.__module__ != _INDEX_BUILDERS[builder.__name__]
        or cls.__name__ not in _INDEX_CLASSES
        or getattr(pd, cls.__name__) is not cls
        or any(s is not None for s in state)
    ):
        raise NotPlain
    spec: dict[str, Any] = {"builder": builder.__name__, "cls": cls.__name__}
    for key, value in d.items():
        if key == "data":
            spec["data"] = _values(value)
        elif key == "name":
            spec["name"] = _label(value)
        elif key == "names":
            spec["names"] = _label(list(value))
        elif key == "freq":
            spec["freq"] = _freq(value)
        elif key == "levels":
            spec["levels"] = [_index(level) for level in value]
        elif key == "codes":
            spec["codes"] = [_part(np.asarray(codes)) for codes in value]
        elif key in ("start", "stop", "step", "sortorder") and (value is None
                                                                or type(value) is int):
            spec[key] = value
        else:
            raise NotPlain
    return spec


def _freq(freq: Any) -> str | None:
    if freq is None:
        return None
    from pandas.tseries.frequencies import to_offset

    text = freq.freqstr
    back = to_offset(text)
    if type(back) is not type(freq) or back != freq:
        raise NotPlain
    return text


# --- loading -----------------------------------------------------------------------------------


def decode(spec: dict[str, Any], arrays: dict[str, np.ndarray]) -> Any:
    """Rebuild the DataFrame or Series that ``spec`` describes from the entry's ``arrays``."""
    kind = spec["type"]
    if kind == "DataFrame":
        from pandas.api.internals import create_dataframe_from_blocks

        blocks = [(_values_from(block["values"], arrays), np.asarray(block["loc"], dtype=np.intp))
                  for block in spec["blocks"]]
        obj = create_dataframe_from_blocks(blocks, index=_index_from(spec["index"], arrays),
                                           columns=_index_from(spec["columns"], arrays))
        for block, block_spec in zip(obj._mgr.blocks, spec["blocks"], strict=True):
            if "state" in block_spec["values"]:
                _settle(block.values, block_spec["values"]["state"])
    elif kind == "Series":
        values = _values_from(spec["values"], arrays)
        obj = pd.Series(values, index=_index_from(spec["index"], arrays), dtype=values.dtype,
                        name=decode_tree(spec["name"], {}), copy=False)
        if "state" in spec["values"]:
            _settle(obj._mgr.blocks[0].values, spec["values"]["state"])
    else:
        raise ValueError(f"unknown frame type {kind!r}")
    if "attrs" in spec:
        obj.attrs = decode_tree(spec["attrs"], {})
    if not spec.get("allows_duplicate_labels", True):
        obj.flags.allows_duplicate_labels = False
    return obj


def _values_from(spec: dict[str, Any], arrays: dict[str, np.ndarray]) -> Any:
    kind = spec["kind"]
    if kind == "ndarray":
        return _array(spec["data"], arrays)
    if kind == "strings":
        shape = tuple(spec["shape"])
        flat = strings.decode(
            _array(spec["data"], arrays), spec["separator"],
            _array(spec["nulls"], arrays) if "nulls" in spec else None,
            _array(spec["codes"], arrays) if "codes" in spec else None,
            math.prod(shape), spec["count"],
        )
        return flat.reshape(shape)
    if kind == "items":
        items = decode_tree(spec["items"], {})
        flat = np.empty(len(items), dtype=object)
        for i, item in enumerate(items):  # not np.array(items): tuples would become rows
            flat[i] = item
        return flat.reshape(spec["shape"])
    arrays_module = pd.arrays
    if kind == "Categorical":
        dtype = pd.CategoricalDtype(_index_from(spec["categories"], arrays), spec["ordered"])
        codes = _checked_codes(_array(spec["codes"], arrays), len(dtype.categories))
        return pd.Categorical.from_codes(codes, dtype=dtype, validate=False)
    if kind in ("DatetimeArray", "TimedeltaArray"):
        data = _array(spec["data"], arrays)
        dtype = data.dtype
        if "tz" in spec:
            dtype = pd.DatetimeTZDtype(np.datetime_data(data.dtype)[0], _tz_from(spec["tz"]))
        # What unpickling does too (no copy, no validation of stored values).
        return getattr(arrays_module, kind)._simple_new(data, dtype=dtype)
    if kind in ("IntegerArray", "FloatingArray", "BooleanArray"):
        return getattr(arrays_module, kind)(_array(spec["data"], arrays),
                                            _array(spec["mask"], arrays), copy=False)
    if kind == "StringArray":
        dtype = pd.StringDtype("python", na_value=pd.NA if spec["na"] == "NA" else np.nan)
        return arrays_module.StringArray._simple_new(_values_from(spec["strings"], arrays), dtype)
    if kind == "ArrowStringArray":
        return _arrow_strings_from(spec, arrays)
    raise ValueError(f"unknown column kind {kind!r}")


def _checked_codes(codes: np.ndarray, n: int) -> np.ndarray:
    """``codes`` if each is -1 or an index below ``n``: pandas does not check codes that
    its unpickling gives it, and reads memory out of bounds for wrong ones, which a memory-
    mapped hit (sizes checked, not digests) or an entry written by someone else could hold.
    Costs 0.3 ms per 5M int8 codes."""
    if codes.dtype.kind not in "iu":
        raise ValueError(f"codes of dtype {codes.dtype}")
    if codes.size and (codes.min() < -1 or codes.max() >= n):
        raise ValueError("codes out of range")
    return codes


def _arrow_strings_from(spec: dict[str, Any], arrays: dict[str, np.ndarray]) -> Any:
    import pyarrow as pa

    n = spec["length"]
    offsets = _array(spec["offsets"], arrays)
    data = _array(spec["data"], arrays)
    # Arrow reads data[offsets[i]:offsets[i + 1]] unchecked: offsets that leave the data
    # (see _checked_codes) are refused; ~10 ms per 5M rows, in slabs to bound the scratch.
    if offsets.dtype != np.int64 or offsets.shape != (n + 1,) or offsets[0] != 0 or (
        offsets[-1] != data.size
    ):
        raise ValueError("string offsets do not match the string data")
    for start in range(0, n, 1 << 20):
        piece = offsets[start : start + (1 << 20) + 1]
        if not (piece[1:] >= piece[:-1]).all():
            raise ValueError("string offsets decrease")
    validity = None
    if "validity" in spec:
        bits = _array(spec["validity"], arrays)
        if bits.size * 8 < n:
            raise ValueError("string validity bits are too few")
        validity = pa.py_buffer(bits)
    # null_count -1: Arrow counts the missing bits itself when it needs the count.
    arr = pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data),
                                           validity, -1)
    arr.validate()
    dtype = pd.StringDtype("pyarrow", na_value=pd.NA if spec["na"] == "NA" else np.nan)
    return pd.arrays.ArrowStringArray(pa.chunked_array([arr]), dtype=dtype)


def _index_from(spec: dict[str, Any], arrays: dict[str, np.ndarray]) -> Any:
    import importlib

    name = spec["builder"]
    if spec["cls"] not in _INDEX_CLASSES or name not in _INDEX_BUILDERS:
        raise ValueError(f"unknown index {spec['cls']!r} built by {name!r}")
    builder = getattr(importlib.import_module(_INDEX_BUILDERS[name]), name)
    cls = getattr(pd, spec["cls"])
    d: dict[str, Any] = {}
    for key, value in spec.items():
        if key in ("builder", "cls"):
            continue
        if key == "data":
            d["data"] = _values_from(value, arrays)
        elif key in ("name", "names"):
            d[key] = decode_tree(value, {})
        elif key == "freq":
            from pandas.tseries.frequencies import to_offset

            d["freq"] = None if value is None else to_offset(value)
        elif key == "levels":
            d["levels"] = [_index_from(level, arrays) for level in value]
        elif key == "codes":
            d["codes"] = [_array(codes, arrays) for codes in value]
        else:
            d[key] = value
    if "codes" in d:  # a MultiIndex, built without checks (see _checked_codes)
        if len(d["codes"]) != len(d.get("levels", ())):
            raise ValueError("a MultiIndex with codes for missing levels")
        for codes, level in zip(d["codes"], d["levels"], strict=True):
            _checked_codes(codes, len(level))
    return builder(cls, d)
