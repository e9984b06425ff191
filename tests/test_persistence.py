"""Storage of results: exact round-trips, zarr interop, memory maps and compression."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import zarr

import arraycache
from arraycache import persistence
from arraycache.codecs import Compression, parse_compress

rng = np.random.default_rng(42)

ROUND_TRIP_ARRAYS = {
    "float64": rng.random((7, 5)),
    "float32-F": np.asfortranarray(rng.random((6, 4, 3)).astype(np.float32)),
    "float16": rng.random(10).astype(np.float16),
    "int8": rng.integers(-100, 100, 33, dtype=np.int8),
    "uint64": rng.integers(0, 2**63, 9, dtype=np.uint64),
    "big-endian": np.arange(10, dtype=">i4"),
    "bool": rng.random(17) > 0.5,
    "complex128": rng.random(6) + 1j * rng.random(6),
    "datetime64": np.array(["2020-01-01T10:00", "NaT", "1969-07-20T20:17"], dtype="M8[ns]"),
    "timedelta64": np.array([1, -5, 3600], dtype="m8[s]"),
    "structured": np.array([(1, 2.5, b"ab"), (3, -1.0, b"c")],
                           dtype=[("i", "<i4"), ("f", "<f8"), ("s", "S2")]),
    "nested-structured": np.zeros(3, dtype=[("a", "<i4", (2,)), ("b", [("c", "<f4")])]),
    "unicode": np.array(["\u03b1", "beta", ""]),
    "bytes": np.array([b"x", b"yz"]),
    "0-d": np.array(3.25),
    "empty": np.zeros((0, 4)),
    "empty-F": np.asfortranarray(np.zeros((3, 0))),
    "big-2d": rng.random((300, 200)),
    "non-contiguous": rng.random((20, 30))[::2, ::3],
    "negative-strides": np.arange(50.0)[::-1],
}


def assert_same_array(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.dtype == expected.dtype
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
    if expected.ndim > 1 and expected.size:
        # Memory order survives: F stays F; C and non-contiguous come back C.
        f_only = expected.flags.f_contiguous and not expected.flags.c_contiguous
        assert got.flags.f_contiguous == f_only or got.flags.c_contiguous


@pytest.mark.parametrize("compress", [False, 3], ids=["raw", "compressed"])
@pytest.mark.parametrize("name", sorted(ROUND_TRIP_ARRAYS))
def test_array_round_trip_is_exact(location, name, compress):
    original = ROUND_TRIP_ARRAYS[name]
    memory = arraycache.Memory(location, compress=compress, verbose=0)
    calls = []

    @memory.cache
    def produce(key):
        calls.append(key)
        return original

    first = produce(name)
    second = produce(name)
    assert calls == [name]
    assert type(second) is np.ndarray
    assert second.flags.writeable
    assert_same_array(first, original)
    assert_same_array(second, original)
    entry = next(p.parent for p in location.rglob("zarr.json") if (p.parent / "a0").is_dir())
    group = zarr.open_group(entry, mode="r")
    stored = group["a0"][...]
    if original.dtype.fields and any(
        original.dtype[f].fields for f in original.dtype.names
    ):
        return  # nested records are stored as raw bytes for zarr: no dtype to compare
    np.testing.assert_array_equal(stored.view(original.dtype) if stored.dtype.kind == "V"
                                  else stored, original)


def test_object_arrays_and_non_array_results_round_trip(memory):
    values = {
        "objects": np.array([1, "two", None, (3,)], dtype=object),
        "int": 7,
        "big-int": 2**100,
        "floats": (float("nan"), float("inf"), -0.0),
        "numpy-scalars": [np.float32(1.5), np.int64(-3), np.datetime64("2021-01-01")],
        "frame": pd.DataFrame({"x": np.arange(500.0), "y": ["a", "b"] * 250}),
        "series": pd.Series(np.arange(300), name="s"),
        "set": {1, 2, 3},
        "nested": {("a", 1): [np.ones(2000), {"deep": np.arange(3)}]},
    }

    @memory.cache
    def produce(key):
        return values[key]

    for key, value in values.items():
        produce(key)
        got = produce(key)
        if isinstance(value, pd.DataFrame | pd.Series):
            assert got.equals(value)
        elif key == "objects":
            assert got.dtype == object and got.tolist() == value.tolist()
        elif key == "floats":
            assert np.isnan(got[0]) and got[1] == np.inf and str(got[2]) == "-0.0"
        elif key == "nested":
            np.testing.assert_array_equal(got[("a", 1)][0], value[("a", 1)][0])
            np.testing.assert_array_equal(got[("a", 1)][1]["deep"], value[("a", 1)][1]["deep"])
        elif key == "numpy-scalars":
            assert [type(g) for g in got] == [type(v) for v in value]
            assert got == value
        else:
            assert got == value and type(got) is type(value)


def test_plain_results_load_without_unpickling(memory, monkeypatch):
    @memory.cache
    def plain():
        return {"a": np.ones(5000), "b": (1, "x", 2.5, None, True), 3: [np.float64(2)]}

    expected = plain()

    def no_unpickling(*args, **kwargs):
        raise AssertionError("a plain result must not be unpickled")

    monkeypatch.setattr(persistence._ArrayUnpickler, "load", no_unpickling)
    monkeypatch.setattr("pickle.loads", no_unpickling)
    got = plain()
    np.testing.assert_array_equal(got["a"], expected["a"])
    assert got["b"] == expected["b"] and got[3] == [np.float64(2)]


def test_arrays_inside_objects_are_zarr_arrays(memory, location):
    from sklearn.decomposition import PCA

    X = rng.random((400, 20))

    @memory.cache
    def fit(X):
        return PCA(n_components=5).fit(X), X * 2

    model, doubled = fit(X)
    model2, doubled2 = fit(X)
    np.testing.assert_array_equal(model2.components_, model.components_)
    np.testing.assert_array_equal(doubled2, doubled)
    entry = next(p.parent for p in location.rglob("zarr.json") if (p.parent / "skeleton").is_dir())
    group = zarr.open_group(entry, mode="r")
    shapes = sorted(a.shape for name, a in group.arrays() if name != "skeleton")
    assert (400, 20) in shapes


@pytest.mark.parametrize("order", ["C", "F"])
def test_mmap_modes(location, order):
    original = np.asarray(rng.random((50, 40)), order=order)
    memory = arraycache.Memory(location, verbose=0)

    @memory.cache
    def produce():
        return original

    produce()
    readonly = memory.cache(produce.func, mmap_mode="r")()
    assert isinstance(readonly, np.memmap)
    assert not readonly.flags.writeable
    assert readonly.flags[f"{order}_CONTIGUOUS"]
    np.testing.assert_array_equal(readonly, original)
    with pytest.raises(ValueError):
        readonly[0, 0] = 1

    cow = memory.cache(produce.func, mmap_mode="c")()
    assert isinstance(cow, np.memmap) and cow.flags.writeable
    cow[0, 0] = -1.0  # changes the private copy only
    again = memory.cache(produce.func, mmap_mode="r")()
    assert again[0, 0] == original[0, 0]

    shared = memory.cache(produce.func, mmap_mode="r+")()
    assert isinstance(shared, np.memmap) and shared.flags.writeable

    # 'w+' must not recreate (zero) the stored file: it maps like 'r+', as in joblib.
    w_plus = memory.cache(produce.func, mmap_mode="w+")()
    np.testing.assert_array_equal(w_plus, original)


def test_memmap_maps_the_stored_chunk_file(location):
    memory = arraycache.Memory(location, mmap_mode="r", verbose=0)
    produce = memory.cache(lambda n: np.arange(n, dtype=np.float64))
    got = produce(1000)
    assert isinstance(got, np.memmap)  # the first (computing) call already maps
    entry = next(p.parent for p in location.rglob("zarr.json") if (p.parent / "a0").is_dir())
    raw = (entry / "a0" / "c" / "0").read_bytes()
    # One zarr shard: the array's bytes from offset 0, then the shard index.
    assert raw[: got.nbytes] == np.arange(1000, dtype=np.float64).tobytes()
    assert got.filename == str(entry / "a0" / "c" / "0") and got.offset == 0
    stored = zarr.open_array(entry / "a0", mode="r")
    assert stored.shards == (1000,)
    np.testing.assert_array_equal(stored[10:20], np.arange(10.0, 20.0))


def test_raw_shards_let_zarr_read_one_slab(location):
    big = np.asfortranarray(rng.random((50, 30_000)))  # 12 MB: several 4 MiB inner chunks
    produce = arraycache.Memory(location, verbose=0).cache(lambda: big)
    produce()
    entry = next(p.parent for p in location.rglob("zarr.json") if (p.parent / "a0").is_dir())
    stored = zarr.open_array(entry / "a0", mode="r")
    assert stored.chunks[-1] < big.shape[-1]  # inner chunks split the contiguous axis
    np.testing.assert_array_equal(stored[:, 12_345:12_400], big[:, 12_345:12_400])
    mapped = arraycache.Memory(location, mmap_mode="r", verbose=0).cache(produce.func)()
    assert isinstance(mapped, np.memmap) and mapped.flags.f_contiguous
    np.testing.assert_array_equal(mapped, big)
    assert len(list(location.rglob("a0"))) == 1  # the mapped call was a hit


def test_compressed_entries_are_zarr_readable_and_smaller(location):
    smooth = np.cumsum(rng.integers(-3, 4, (4000, 300)), axis=0).astype(np.float64)
    memory = arraycache.Memory(location, compress=("zstd", 5), verbose=0)
    produce = memory.cache(lambda: smooth)
    produce()
    entry = next(p.parent for p in location.rglob("zarr.json") if (p.parent / "a0").is_dir())
    stored = zarr.open_group(entry, mode="r")["a0"]
    np.testing.assert_array_equal(stored[...], smooth)
    np.testing.assert_array_equal(stored[1234:1240, 7], smooth[1234:1240, 7])
    size = sum(p.stat().st_size for p in (entry / "a0").rglob("*") if p.is_file())
    assert size < smooth.nbytes / 3
    np.testing.assert_array_equal(produce(), smooth)


def test_compressed_with_mmap_mode_loads_into_memory_with_a_warning(location):
    memory = arraycache.Memory(location, compress=True, mmap_mode="r", verbose=0)
    produce = memory.cache(lambda: np.arange(100_000.0))
    with pytest.warns(UserWarning, match="cannot be memory-mapped"):
        got = produce()
    assert not isinstance(got, np.memmap)
    np.testing.assert_array_equal(got, np.arange(100_000.0))


@pytest.mark.parametrize(
    "value, expected",
    [(False, None), (0, None), (True, Compression("zstd", 3)), (7, Compression("zstd", 7)),
     ("lz4", Compression("lz4", 3)), (("gzip", 6), Compression("gzip", 6)),
     (("zlib", 1), Compression("zlib", 1))],
)
def test_parse_compress(value, expected):
    assert parse_compress(value) == expected


@pytest.mark.parametrize("codec", ["lz4", "gzip", "zlib", "blosclz", "lz4hc"])
def test_every_codec_round_trips(location, codec):
    data = rng.integers(0, 10, (1000, 70)).astype(np.int32)
    memory = arraycache.Memory(location, compress=(codec, 4), verbose=0)
    produce = memory.cache(lambda: data)
    produce()
    np.testing.assert_array_equal(produce(), data)
    entry = next(p.parent for p in location.rglob("zarr.json") if (p.parent / "a0").is_dir())
    np.testing.assert_array_equal(zarr.open_group(entry, mode="r")["a0"][...], data)


@pytest.mark.parametrize("bad", [("bz3", 3), ("zstd", 12), ("zstd", "high")])
def test_bad_compress_values_are_rejected(location, bad):
    with pytest.raises(ValueError, match=r"compress|level"):
        arraycache.Memory(location, compress=bad)
    with pytest.raises(TypeError):
        arraycache.Memory(location, compress=[1, 2, 3])


def test_entries_read_with_dask_by_slab(location):
    da = pytest.importorskip("dask.array")
    big = rng.random((40_000, 50))  # 16 MB: four 4 MiB slabs
    memory = arraycache.Memory(location, verbose=0)
    memory.cache(lambda: {"features": big, "n": 40_000})()
    entry = next(p.parent for p in location.rglob("zarr.json") if (p.parent / "a0").is_dir())
    lazy = da.from_zarr(str(entry / "a0"))
    assert lazy.numblocks[0] > 1  # one dask chunk per inner chunk, not one 16 MB block
    np.testing.assert_allclose(lazy.sum(axis=0).compute(), big.sum(axis=0))


# --- issue 9: never a wrong value --------------------------------------------------------------

compressed_mmap = pytest.mark.filterwarnings("ignore:.*cannot be memory-mapped:UserWarning")

MODES = [(None, False), (None, 3), ("r", False), ("c", False), ("r+", False), ("r", 3)]


def cached(location, func, mmap_mode=None, compress=False):
    """``func`` cached in a Memory of its own, with a list of the arguments it ran for
    (one per test: the wrapper's code, hence its entries, is the same for every func)."""
    calls = []

    def counted(key):
        calls.append(key)
        return func(key)

    counted.__qualname__ = counted.__name__ = func.__name__
    memory = arraycache.Memory(location, mmap_mode=mmap_mode, compress=compress, verbose=0)
    return memory.cache(counted), calls


def _reusing_ids(n: int):
    """Yield ``n`` new arrays; when the previous one was freed, at the previous one's id.

    Each is allocated until it lands where the last one was (ids of dead objects are
    reused), so a writer that keys arrays by id without keeping them alive is caught.
    """
    previous = None
    for i in range(n):
        candidates = []
        for _ in range(10_000):
            arr = np.full(300, float(i))
            if previous is None or id(arr) == previous:
                break
            candidates.append(arr)
        del candidates
        previous = id(arr)
        yield arr
        del arr


class LazyList(list):
    """A list that pickles its items through an iterator of temporaries."""

    def __reduce__(self):
        return LazyList, (), None, _reusing_ids(len(self))


class LazyDict(dict):
    def __reduce__(self):
        return LazyDict, (), None, None, enumerate(_reusing_ids(len(self)))


@pytest.mark.parametrize("kind", [LazyList, LazyDict])
def test_temporary_arrays_of_a_reduce_iterator_stay_distinct(location, kind):
    produce, calls = cached(location, lambda n: kind(enumerate(range(n))) if kind is LazyDict
                            else kind(range(n)))
    first = produce(6)
    again = produce(6)
    assert calls == [6] and type(again) is kind
    values = list(again.values()) if kind is LazyDict else list(again)
    assert [v.tolist() for v in values] == [[float(i)] * 300 for i in range(6)]
    assert len(first) == 6


@pytest.mark.parametrize("wrap", ["alone", "json", "pickle"])
def test_one_array_twice_in_a_result_loads_as_one_object(location, wrap):
    arr = np.arange(1000.0)
    shared = {"alone": lambda: [arr, arr], "json": lambda: {"x": arr, "y": (arr,)},
              "pickle": lambda: ({1}, arr, arr)}[wrap]
    produce, _ = cached(location, lambda key: shared())
    produce(0)
    got = produce(0)
    a, b = {"alone": (0, 1), "json": ("x", "y"), "pickle": (1, 2)}[wrap]
    first, second = got[a], got[b]
    second = second[0] if wrap == "json" else second
    assert first is second
    np.testing.assert_array_equal(first, arr)


ENUM = np.dtype("i1", metadata={"enum": {"A": 0, "B": 1}})
ENCODED = np.dtype("S8", metadata={"h5py_encoding": "ascii"})


def assert_same_metadata(got: np.dtype, expected: np.dtype) -> None:
    assert got == expected
    assert got.metadata == expected.metadata
    for name in expected.names or ():
        assert_same_metadata(got.fields[name][0], expected.fields[name][0])
    if expected.subdtype is not None:
        assert_same_metadata(got.subdtype[0], expected.subdtype[0])


class NotJSON:
    """Metadata that JSON cannot hold: such arrays go in the pickle, which keeps it."""

    def __eq__(self, other):
        return type(other) is NotJSON

    __hash__ = object.__hash__


@compressed_mmap
@pytest.mark.parametrize("mmap_mode, compress", MODES)
@pytest.mark.parametrize("dtype", [
    ENUM,
    ENCODED,
    np.dtype([("label", ENUM), ("x", "<f8"), ("sub", ENCODED, (2,))], metadata={"v": [1, 2]}),
    np.dtype("<f4", metadata={"unit": "m", "scale": 0.5, "cls": NotJSON()}),
], ids=["enum", "string-encoding", "record-fields", "not-json"])
def test_dtype_metadata_is_stored(location, dtype, mmap_mode, compress):
    arr = np.zeros(500, dtype=dtype)
    results = {"array": arr, "json": {"a": arr, "small": arr[:3].copy()}, "pickle": (arr, {1})}
    produce, calls = cached(location, results.__getitem__, mmap_mode, compress)
    for key in results:
        for _ in range(2):
            got = produce(key)
            stored = got if key == "array" else got["a"] if key == "json" else got[0]
            assert_same_metadata(stored.dtype, dtype)
            assert stored.tobytes() == arr.tobytes()
        if key == "json":
            assert_same_metadata(got["small"].dtype, dtype)
    assert calls == list(results)


def _float_bits(x: float) -> int:
    return int.from_bytes(np.float64(x).tobytes(), "little")


def _float_from_bits(bits: int) -> float:
    return float(np.frombuffer(bits.to_bytes(8, "little"), dtype="<f8")[0])


class MyInt(int):
    pass


class MyStr(str):
    pass


def _json_values():
    shared_list, shared_dict = [1, 2], {"k": "v"}
    loop = ["self"]
    loop.append(loop)
    return {
        "nan-payload": [_float_from_bits(0xFFF8_0000_0000_0123),
                        _float_from_bits(0x7FF0_0000_0000_0001)],
        "zero-inf": (-0.0, 0.0, float("inf"), -float("inf"), 5e-324, 1.7976931348623157e308),
        "big-ints": [2**64, -(2**63) - 1, 2**100, -(10**5000), 2**63 - 1],
        "shared": {"a": shared_list, "b": shared_list, "c": [shared_dict, shared_dict]},
        "self-loop": loop,
        "c-types": [np.longlong(-3), np.ulonglong(7), np.intc(4), np.uintc(5),
                    np.clongdouble(1 + 2j), np.longdouble("0.1"), np.half(1.5), np.bool_(True),
                    np.datetime64("2020-01-02T03", "ns")],
        "strings": ["", np.str_(""), np.bytes_(b""), np.bytes_(b"ab\x00"), "\x00", "\ud800", "é"],
        "subclasses": [MyInt(3), MyStr("s"), True, 1, 1.0],
        "keys": {True: "bool", 2: "int", 2.5: "float", None: "none", (1, "a"): "tuple", "": "str",
                 float("-inf"): "inf", np.int8(9): "np"},
    }


def _longdouble_bits(value: np.longdouble) -> bytes:
    """The bits of a long double that hold its value: x87's 80-bit format sits in 16
    bytes whose other 6 hold whatever memory held when the value was made."""
    used = 10 if np.finfo(np.longdouble).nmant == 63 else np.dtype(np.longdouble).itemsize
    return np.array([value], dtype=np.longdouble).view(np.uint8)[:used].tobytes()


def _assert_exact(got, expected, path="result"):
    assert type(got) is type(expected), path
    if isinstance(expected, float):
        assert _float_bits(got) == _float_bits(expected), path
    elif isinstance(expected, np.longdouble | np.clongdouble):
        assert got.dtype == expected.dtype, path
        for part in ("real", "imag"):
            assert _longdouble_bits(getattr(got, part)) == \
                _longdouble_bits(getattr(expected, part)), path
    elif isinstance(expected, np.generic):
        assert got.dtype == expected.dtype and got.tobytes() == expected.tobytes(), path
    elif isinstance(expected, list | tuple):
        assert len(got) == len(expected), path
        for i, (g, e) in enumerate(zip(got, expected, strict=True)):
            if e is expected:
                assert g is got, f"{path}[{i}]"
            else:
                _assert_exact(g, e, f"{path}[{i}]")
    elif isinstance(expected, dict):
        assert list(got) == list(expected), path
        for (gk, gv), (ek, ev) in zip(got.items(), expected.items(), strict=True):
            _assert_exact(gk, ek, f"{path} key {ek!r}")
            _assert_exact(gv, ev, f"{path}[{ek!r}]")
    else:
        assert got == expected, path


@pytest.mark.parametrize("key", sorted(_json_values()))
def test_plain_results_round_trip_exactly(location, key):
    produce, calls = cached(location, lambda k: _json_values()[k])
    first = produce(key)
    got = produce(key)
    assert calls == [key]
    expected = _json_values()[key]
    _assert_exact(first, expected)
    _assert_exact(got, expected)
    if key == "shared":
        assert got["a"] is got["b"] and got["c"][0] is got["c"][1]


# Records whose items have bytes that no field covers, set to a pattern a field-by-field
# copy would not reproduce.
PADDED = np.dtype({"names": ["a", "b"], "formats": ["u1", "f8"], "offsets": [0, 8],
                   "itemsize": 16})


def _padded(n: int) -> np.ndarray:
    arr = np.zeros(n, dtype=PADDED)
    arr.view(np.uint8)[:] = 0xA5
    arr["a"] = np.arange(n) % 200
    arr["b"] = np.arange(n) / 3
    return arr


def _tree_nodes() -> np.ndarray:
    from sklearn.tree import DecisionTreeClassifier

    X = rng.random((300, 5))
    tree = DecisionTreeClassifier(random_state=0).fit(X, X[:, 0] > 0.4).tree_
    return tree.__getstate__()["nodes"]


def _item_bytes(arr: np.ndarray) -> bytes:
    """All bytes of each item, in C order (a record's tobytes() skips its padding)."""
    return arr.view(np.dtype((np.void, arr.itemsize))).tobytes() if arr.itemsize else b""


AWKWARD_RECORDS = {
    "padded": lambda: _padded(1000),
    "padded-2d-F": lambda: np.asfortranarray(_padded(1200).reshape(40, 30)),
    "padded-strided": lambda: _padded(3000)[::3],
    "padded-0d": lambda: _padded(1)[0:1].reshape(()),
    "sklearn-tree-nodes": _tree_nodes,
    "datetime-field": lambda: np.array([(np.datetime64("2021-03-04T05:06:07", "ns"), 1.5)] * 300,
                                       dtype=[("t", "M8[ns]"), ("x", "f8")]),
    "zero-size-field": lambda: np.ones(300, dtype=[("a", "f8", (0,)), ("b", "i4")]),
    "only-zero-size-field": lambda: np.zeros(300, dtype=[("a", "f8", (0,))]),
}


@compressed_mmap
@pytest.mark.parametrize("mmap_mode, compress", MODES)
@pytest.mark.parametrize("name", sorted(AWKWARD_RECORDS))
def test_records_store_and_hit_byte_for_byte(location, name, mmap_mode, compress):
    original = AWKWARD_RECORDS[name]()
    produce, calls = cached(location, lambda key: {"one": original, "in": [original, 1]}[key],
                            mmap_mode, compress)
    for key in ("one", "in"):
        for _ in range(2):  # a DamagedEntryWarning on the hit would be an error here
            got = produce(key)
            got = got if key == "one" else got[0]
            assert got.dtype == original.dtype and got.shape == original.shape
            # Every byte, padding included: the hit is the bytes that were digested.
            assert _item_bytes(got) == _item_bytes(original)
            if original.ndim > 1 and original.flags.f_contiguous:
                assert got.flags.f_contiguous
    assert calls == ["one", "in"]


def test_verify_passes_for_awkward_records(location):
    produce = arraycache.Memory(location, compress=3, verbose=0).cache(
        lambda: [make() for make in AWKWARD_RECORDS.values()])
    produce()
    (entry,) = [p.parent for p in location.rglob("zarr.json") if (p.parent / "a0").is_dir()]
    meta = produce.store.read_meta(entry)
    assert len(meta["arrays"]) == len(AWKWARD_RECORDS)
    assert persistence.verify(entry, meta) == []


def test_small_arrays_inside_a_pickle_keep_byte_order_padding_and_identity(location):
    # numpy pickles non-contiguous arrays, and datetimes, by a path that drops a
    # non-native byte order and record padding (joblib and plain pickle return '<i2').
    strided = np.arange(8, dtype=">i2")[::2]
    padded = _padded(6)[::2]
    values = [strided, np.array(["2020-01-01", "NaT"], dtype=">M8[D]"), np.zeros((), ">m8[s]"),
              padded, np.asfortranarray(np.arange(6, dtype=">f4").reshape(2, 3)), strided]
    produce, calls = cached(location, lambda key: ({"not json"}, *values))
    produce(0)
    got = produce(0)[1:]
    assert calls == [0]
    for g, e in zip(got, values, strict=True):
        assert g.dtype == e.dtype and g.dtype.str == e.dtype.str and g.shape == e.shape
        assert _item_bytes(g) == _item_bytes(e)
    assert got[0] is got[-1]
    assert got[4].flags.f_contiguous
