"""Property: every stored result comes back exactly, under every mmap_mode x compress.

Exactly means: the same types (down to np.longlong vs np.int64 and int subclasses),
dtypes with their metadata, shapes, every byte of every array item (NaN payloads and
record padding included), Python floats bit for bit, F-ordered arrays still F-ordered,
shared mutable objects (lists, dicts, arrays, instances, pandas frames) still shared,
and only where they were, and pandas frames with their dtypes, index, labels and values.
Each generated result goes through a real ``Memory(...).cache``'d function: the first
call stores it, the second is the hit being checked.
"""

from __future__ import annotations

import math
import os
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import arraycache
from arraycache import persistence

from .frame_strategies import assert_same_frame, frames

#: Examples per mode; raise it for a deeper search (ARRAYCACHE_PROPERTY_EXAMPLES=2000).
EXAMPLES = int(os.environ.get("ARRAYCACHE_PROPERTY_EXAMPLES", "25"))

MODES = [(mmap_mode, compress) for mmap_mode in (None, "r", "c", "r+") for compress in (False, 3)]

ENUM = np.dtype("i1", metadata={"enum": {"A": 0, "B": 1}})


class NotJSON:
    """Metadata JSON cannot hold (arrays with it are pickled whole)."""

    def __eq__(self, other: object) -> bool:
        return type(other) is NotJSON

    __hash__ = object.__hash__


class Box:
    """An object only pickle can store; it may hold arrays and share them."""

    def __init__(self, content: object) -> None:
        self.content = content


SIMPLE_DTYPES = [
    "?", "i1", "u1", "<i2", ">i2", "<u4", ">i4", "<i8", ">u8", "q", "Q", "i", "I", "<f2",
    ">f4", "<f8", ">f8", "g", "<c8", ">c16", "G", "<M8[ns]", ">M8[D]", "<m8[s]", "M8",
    "<U3", ">U1", "S4", "S1", "V3",
]
RECORD_DTYPES = [
    # padding between and after fields
    np.dtype({"names": ["a", "b"], "formats": ["u1", "<f8"], "offsets": [0, 8], "itemsize": 24}),
    np.dtype([("a", "u1"), ("b", "<f8"), ("c", ">u2")], align=True),
    np.dtype([("a", "<i4"), ("b", ">f8", (2,))]),
    np.dtype([("x", [("y", "u1"), ("z", "<f4")]), ("w", "S2")]),
    np.dtype([("t", "<M8[us]"), ("v", "<f4")]),
    np.dtype([("empty", "<f8", (0,)), ("b", "<i4")]),
    np.dtype([(("a title", "a"), "<i2"), ("b", "u1")]),
]
METADATA_DTYPES = [
    ENUM,
    np.dtype("S6", metadata={"h5py_encoding": "ascii"}),
    np.dtype([("label", ENUM), ("x", "<f8")], metadata={"kind": ["rec", 1]}),
    np.dtype("<f4", metadata={"cls": NotJSON()}),
]
ALL_DTYPES = [np.dtype(d) for d in SIMPLE_DTYPES] + RECORD_DTYPES + METADATA_DTYPES

LAYOUTS = ["C", "F", "strided", "reversed", "transposed", "inner-strided"]


@st.composite
def arrays(draw: st.DrawFn) -> np.ndarray:
    """Arrays of any of the dtypes above, filled with random bytes, in any layout."""
    dtype = draw(st.sampled_from(ALL_DTYPES))
    ndim = draw(st.sampled_from([0, 1, 2, 3]))
    # Big ones (usually over PICKLE_INLINE_NBYTES) are zarr arrays even in a pickled result.
    big = draw(st.booleans())
    low, high = ((0, 0), (100, 400), (10, 25), (5, 9))[ndim] if big else (0, 4)
    shape = tuple(draw(st.integers(low, high)) for _ in range(ndim))
    layout = draw(st.sampled_from(LAYOUTS))
    base_shape = (shape[0] * 2, *shape[1:]) if layout == "strided" and ndim else shape
    if layout == "inner-strided" and ndim >= 2:
        base_shape = (*shape[:-1], shape[-1] * 2)
    seed = draw(st.integers(0, 2**32 - 1))
    count = math.prod(base_shape)
    raw = np.random.default_rng(seed).bytes(count * dtype.itemsize)
    arr = np.frombuffer(bytearray(raw), dtype=dtype, count=count).reshape(base_shape)
    if dtype.itemsize == 0:
        arr = np.zeros(base_shape, dtype=dtype)
    if layout == "F":
        # asfortranarray copies records field by field: copy whole items instead, so the
        # padding bytes are the random ones, not whatever the new buffer held.
        void = np.dtype((np.void, dtype.itemsize)) if dtype.itemsize else None
        arr = np.asfortranarray(arr.view(void)).view(dtype) if void else np.asfortranarray(arr)
    elif layout == "strided" and ndim:
        arr = arr[::2]
    elif layout == "reversed" and ndim:
        arr = arr[::-1]
    elif layout == "transposed":
        arr = arr.T
    elif layout == "inner-strided" and ndim >= 2:
        arr = arr[..., ::2]
    return arr


SCALAR_TYPES = [
    np.bool_, np.byte, np.ubyte, np.short, np.intc, np.uintc, np.int64, np.uint64, np.longlong,
    np.ulonglong, np.half, np.single, np.double, np.longdouble, np.csingle, np.cdouble,
    np.clongdouble,
]


@st.composite
def numpy_scalars(draw: st.DrawFn) -> np.generic:
    kind = draw(st.sampled_from([*SCALAR_TYPES, "M8[ns]", "M8[D]", "m8[ms]", "V3", "U", "S"]))
    if kind == "U":
        return np.str_(draw(st.text(max_size=4)))
    if kind == "S":
        return np.bytes_(draw(st.binary(max_size=4)))
    dtype = np.dtype(kind)
    raw = draw(st.binary(min_size=dtype.itemsize, max_size=dtype.itemsize))
    return np.frombuffer(raw, dtype=dtype)[0]


class MyInt(int):
    pass


class MyStr(str):
    pass


python_floats = st.one_of(
    st.floats(),
    st.integers(0, 2**64 - 1).map(
        lambda bits: float(np.frombuffer(bits.to_bytes(8, "little"), dtype="<f8")[0])
    ),
    st.sampled_from([0.0, -0.0, math.inf, -math.inf, 5e-324]),
)
plain_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-(2**200), 2**200), python_floats,
    st.text(max_size=5),
)
pickle_only = st.one_of(
    st.binary(max_size=4), st.builds(MyInt, st.integers()), st.builds(MyStr, st.text(max_size=3)),
    st.builds(Fraction, st.integers(), st.integers(1, 9)), st.frozensets(st.integers(), max_size=3),
    st.lists(st.one_of(st.integers(), st.text(max_size=2)), max_size=3).map(
        lambda items: np.array([*items, None], dtype=object)
    ),
)
# one_of flattens nested one_ofs and weighs every branch alike: pick the kind first.
_LEAF_KINDS = {"plain": plain_scalars, "numpy": numpy_scalars(), "array": arrays(),
               "pickle": pickle_only, "frame": frames(max_rows=12)}
leaves = st.sampled_from(["plain", "numpy", "array", "array", "pickle", "frame"]).flatmap(
    _LEAF_KINDS.__getitem__
)
keys = st.one_of(
    st.none(), st.booleans(), st.integers(), python_floats, st.text(max_size=3),
    st.tuples(st.integers(), st.text(max_size=2)),
    st.tuples(st.sampled_from(SCALAR_TYPES), st.integers(0, 100)).map(lambda tv: tv[0](tv[1])),
)


def _trees(children: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=3).map(tuple),
        st.dictionaries(keys, children, max_size=4),
        st.builds(Box, children),  # only pickle can store it
    )


def _shareable(obj: object, found: list) -> None:
    """Collect the mutable objects of ``obj`` (each once), depth first."""
    if isinstance(obj, list | dict | np.ndarray | Box | pd.DataFrame | pd.Series):
        if any(obj is f for f in found):
            return
        found.append(obj)
    if isinstance(obj, list | tuple):
        for item in obj:
            _shareable(item, found)
    elif isinstance(obj, dict):
        for item in obj.values():
            _shareable(item, found)
    elif isinstance(obj, Box):
        _shareable(obj.content, found)


@st.composite
def results(draw: st.DrawFn) -> object:
    """A tree of leaves, sometimes with some of its mutable parts referenced again."""
    inner = st.recursive(leaves, _trees, max_leaves=6)
    trees = st.one_of(
        st.lists(inner, min_size=1, max_size=5),
        st.lists(inner, min_size=1, max_size=5).map(tuple),
        st.dictionaries(keys, inner, min_size=1, max_size=5),
        st.builds(Box, st.lists(inner, min_size=1, max_size=3)),
    )
    tree = draw(st.sampled_from([arrays(), trees, trees, trees]).flatmap(lambda s: s))
    found: list = []
    _shareable(tree, found)
    if not found or not draw(st.booleans()):
        return tree
    again = draw(st.lists(st.sampled_from(found), min_size=1, max_size=3))
    if draw(st.booleans()) and isinstance(found[0], list):
        found[0].append(draw(st.sampled_from(found)))  # possibly a list inside itself
    return draw(st.sampled_from([[tree, again], (tree, *again), {"tree": tree, "again": again}]))


# --- the check -----------------------------------------------------------------------------------


def _item_bytes(arr: np.ndarray) -> bytes:
    """Every byte of every item, in C order (a record's tobytes() skips its padding)."""
    return arr.view(np.dtype((np.void, arr.itemsize))).tobytes() if arr.itemsize else b""


def _same_dtype(got: np.dtype, expected: np.dtype, path: str) -> None:
    assert got == expected, path
    assert got.type is expected.type, path  # np.longlong is not np.int64
    assert got.metadata == expected.metadata, f"{path}: metadata"
    for name in expected.names or ():
        _same_dtype(got.fields[name][0], expected.fields[name][0], f"{path}.{name}")
    if expected.subdtype is not None:
        _same_dtype(got.subdtype[0], expected.subdtype[0], f"{path} base")


class Checker:
    """Compares a loaded result with the original, keeping track of shared objects."""

    def __init__(self, mmap_mode: str | None) -> None:
        self.mmap_mode = mmap_mode
        self.pairs: dict[int, object] = {}  # id(original) -> the loaded object
        self.loaded: dict[int, object] = {}  # id(loaded) -> its original
        self.keep: list = []

    def shared(self, got: object, expected: object, path: str) -> bool:
        """Record the pair; True when ``expected`` was already compared."""
        if id(expected) in self.pairs:
            assert self.pairs[id(expected)] is got, f"{path}: a shared object came back as copies"
            return True
        assert id(got) not in self.loaded, f"{path}: distinct objects came back as one"
        self.pairs[id(expected)] = got
        self.loaded[id(got)] = expected
        self.keep += [got, expected]
        return False

    def check(self, got: object, expected: object, path: str = "result") -> None:
        if isinstance(expected, np.ndarray):
            self.array(got, expected, path)
            return
        if isinstance(expected, pd.DataFrame | pd.Series):
            if not self.shared(got, expected, path):
                assert_same_frame(got, expected)
            return
        assert type(got) is type(expected), f"{path}: {type(got)} is not {type(expected)}"
        if isinstance(expected, float):
            assert np.float64(got).tobytes() == np.float64(expected).tobytes(), path
        elif isinstance(expected, np.generic):
            _same_dtype(got.dtype, expected.dtype, path)
            assert got.tobytes() == expected.tobytes(), path
        elif isinstance(expected, list | dict | Box):
            if self.shared(got, expected, path):
                return
            if isinstance(expected, Box):
                self.check(got.content, expected.content, f"{path}.content")
            elif isinstance(expected, list):
                assert len(got) == len(expected), path
                for i, (g, e) in enumerate(zip(got, expected, strict=True)):
                    self.check(g, e, f"{path}[{i}]")
            else:
                assert len(got) == len(expected), path
                for (gk, gv), (ek, ev) in zip(got.items(), expected.items(), strict=True):
                    self.check(gk, ek, f"{path} key {ek!r}")
                    self.check(gv, ev, f"{path}[{ek!r}]")
        elif isinstance(expected, tuple):
            assert len(got) == len(expected), path
            for i, (g, e) in enumerate(zip(got, expected, strict=True)):
                self.check(g, e, f"{path}[{i}]")
        else:
            assert got == expected, path

    def array(self, got: np.ndarray, expected: np.ndarray, path: str) -> None:
        if self.mmap_mode is None:
            assert type(got) is np.ndarray, f"{path}: {type(got)}"
        else:  # memmaps, except for arrays kept inside a pickle and empty ones
            assert type(got) in (np.ndarray, np.memmap), f"{path}: {type(got)}"
        if self.shared(got, expected, path):
            return
        _same_dtype(got.dtype, expected.dtype, path)
        assert got.shape == expected.shape, path
        if expected.dtype.hasobject:
            assert got.tolist() == expected.tolist(), path
            return
        assert _item_bytes(got) == _item_bytes(expected), f"{path}: bytes differ"
        if expected.ndim > 1 and expected.flags.f_contiguous and not expected.flags.c_contiguous:
            assert got.flags.f_contiguous, f"{path}: F order lost"


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of a few hundred bytes: compressed arrays span several chunks (the last one
    padded) and raw shards several inner chunks, without big arrays."""
    monkeypatch.setattr(persistence, "_COMPRESSED_CHUNK_BYTES", 256)


@pytest.mark.usefixtures("small_chunks")
@pytest.mark.filterwarnings("ignore:.*cannot be memory-mapped:UserWarning")
@pytest.mark.parametrize("mmap_mode, compress", MODES)
def test_every_result_round_trips_exactly(tmp_path, mmap_mode, compress):
    memory = arraycache.Memory(tmp_path / "cache", mmap_mode=mmap_mode, compress=compress,
                               verbose=0)
    values: dict[int, object] = {}
    calls: list[int] = []

    @memory.cache
    def produce(key):
        calls.append(key)
        return values[key]

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(result=results())
    def round_trip(result):
        key = len(values)
        values[key] = result
        first = produce(key)
        again = produce(key)
        assert calls[-1] == key and calls.count(key) == 1, "the second call was not a hit"
        if mmap_mode is None:
            assert first is result
        else:
            Checker(mmap_mode).check(first, result)
        Checker(mmap_mode).check(again, result)

    round_trip()
