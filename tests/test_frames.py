"""pandas DataFrames and Series stored without pickle: every column kind, index and label
round-trips exactly under every mmap_mode x compress, hits map numeric blocks without a
copy and never unpickle, and anything else still round-trips through the pickle."""

from __future__ import annotations

import decimal
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr
from hypothesis import HealthCheck, given, settings

import arraycache
from arraycache import persistence
from arraycache.exceptions import DamagedEntryWarning

from .conftest import run_python
from .frame_strategies import (
    COLUMN_KINDS,
    HAS_PYARROW,
    PARIS,
    assert_same_frame,
    column,
    frames,
)

MODES = [(mmap_mode, compress) for mmap_mode in (None, "r", "c") for compress in (False, 3)]
EXAMPLES = int(os.environ.get("ARRAYCACHE_PROPERTY_EXAMPLES", "25"))

pytestmark = pytest.mark.filterwarnings("ignore:.*cannot be memory-mapped:UserWarning")


def cached(location: Path, values: dict, mmap_mode=None, compress=False):
    """A cached function returning ``values[key]``, and the list of keys it computed."""
    calls: list = []
    memory = arraycache.Memory(location, mmap_mode=mmap_mode, compress=compress, verbose=0)

    @memory.cache
    def produce(key):
        calls.append(key)
        return values[key]

    return produce, calls


def entry_meta(location: Path) -> list[dict]:
    """The arraycache metadata of every entry under ``location``."""
    return [json.loads(p.read_text())["attributes"]["arraycache"]
            for p in location.rglob("zarr.json")
            if "arraycache" in json.loads(p.read_text()).get("attributes", {})]


def no_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a frame hit unpickled something")

    monkeypatch.setattr(persistence._ArrayUnpickler, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)


# --- every column kind -------------------------------------------------------------------------


@pytest.mark.parametrize("mmap_mode, compress", MODES)
@pytest.mark.parametrize("kind", COLUMN_KINDS)
def test_every_column_kind_round_trips_exactly(location, monkeypatch, kind, mmap_mode, compress):
    n = 700  # parts over 1 KiB are zarr arrays of their own, smaller ones inline JSON
    values = column(kind, n)
    index = pd.Index(np.arange(n) * 3 - 50, name="row")
    data = values.to_numpy() if values.dtype == object else values.array
    frame = pd.DataFrame({"x": np.arange(n, dtype=np.float64),
                          kind: pd.Series(data, index=index, dtype=values.dtype)}, index=index)
    series = pd.Series(data, index=index, name=("col", 1), dtype=values.dtype, copy=True)
    produce, calls = cached(location, {"frame": frame, "series": series,
                                       "both": {"f": frame, "s": [series]}}, mmap_mode, compress)
    for key in ("frame", "series", "both"):
        produce(key)
    with monkeypatch.context() as patch:
        no_unpickling(patch)
        got = {key: produce(key) for key in ("frame", "series", "both")}
    assert calls == ["frame", "series", "both"]
    assert_same_frame(got["frame"], frame)
    assert_same_frame(got["series"], series)
    assert_same_frame(got["both"]["f"], frame)
    assert_same_frame(got["both"]["s"][0], series)
    metas = entry_meta(location)
    assert len(metas) == 3 and all(m["skeleton"] == "json" for m in metas)
    assert not list(location.rglob("skeleton"))


@pytest.mark.parametrize("mmap_mode, compress", MODES)
def test_indexes_and_labels_round_trip_exactly(location, mmap_mode, compress):
    n = 200
    values = np.arange(n * 3, dtype=np.int64).reshape(n, 3)
    multi_rows = pd.MultiIndex.from_arrays(
        [np.repeat(["a", "é"], n // 2), np.tile(np.arange(n // 2), 2)], names=["letter", 7])
    multi_columns = pd.MultiIndex.from_tuples([("x", 1), ("x", 2), ("y", None)],
                                              names=[None, "level"])
    results = {
        "range": pd.DataFrame(values, index=pd.RangeIndex(5, 5 + 3 * n, 3, name="r"),
                              columns=[0, 1, 2]),
        "int-labels-float-index": pd.DataFrame(
            values, index=pd.Index(np.linspace(0, 1, n), name=1.5), columns=[10, -1, 2**40]),
        "mixed-labels": pd.DataFrame(values, columns=pd.Index(["a", 1, ("t", 2)], dtype=object)),
        "none-and-nan-labels": pd.DataFrame(values, columns=pd.Index([None, np.nan, "z"],
                                                                     dtype=object)),
        "duplicate-labels": pd.DataFrame(values, columns=["a", "a", "b"]),
        # A 2-d array taken without a copy: one F-ordered block, stored and mapped as such.
        "f-ordered-block": pd.DataFrame(values.astype(np.float32), copy=False),
        "str-index": pd.DataFrame(values, index=pd.Index([f"r{i}é" for i in range(n)])),
        "object-index": pd.DataFrame(values, index=pd.Index([f"r{i}" for i in range(n)],
                                                            dtype=object, name="o")),
        "datetime-freq": pd.DataFrame(values, index=pd.date_range("2020-03-28", periods=n,
                                                                  freq="h", tz=PARIS, name="t")),
        "datetime-no-freq": pd.DataFrame(values, index=pd.DatetimeIndex(
            pd.date_range("2020", periods=n, freq="D").to_numpy()[::-1])),
        "timedelta-freq": pd.DataFrame(values, index=pd.timedelta_range(
            "1s", periods=n, freq="250ms")),
        "categorical-index": pd.DataFrame(values, index=pd.CategoricalIndex(
            ["u", "v"] * (n // 2), categories=["v", "u", "w"], ordered=True)),
        "nullable-index": pd.DataFrame(values, index=pd.Index(pd.array(
            [None, *range(n - 1)], dtype="Int16"))),
        "multi": pd.DataFrame(values, index=multi_rows, columns=multi_columns),
        "empty": pd.DataFrame(index=pd.RangeIndex(0), columns=pd.Index([], dtype=object)),
        "no-rows": pd.DataFrame({"a": np.array([], dtype="f4"), "b": pd.Categorical([])}),
        "series-multi": pd.Series(np.arange(n, dtype="u2"), index=multi_rows, name=None),
        "series-tuple-name": pd.Series(["p", "q"], name=("a", 2), dtype=object),
        "attrs-flags": pd.DataFrame(values, columns=list("abc")).set_flags(
            allows_duplicate_labels=False),
    }
    results["attrs-flags"].attrs.update({"unit": "m", "scale": [1.5, None]})
    produce, calls = cached(location, results, mmap_mode, compress)
    for key in results:
        produce(key)
    for key, expected in results.items():
        assert_same_frame(produce(key), expected)
    assert calls == list(results)
    assert all(m["skeleton"] == "json" for m in entry_meta(location))
    (block,) = produce("f-ordered-block")._mgr.blocks
    assert block.values.flags.f_contiguous and not block.values.flags.c_contiguous


@pytest.mark.parametrize("mmap_mode, compress", MODES)
def test_generated_frames_round_trip_exactly(tmp_path, mmap_mode, compress):
    values: dict[int, object] = {}
    produce, calls = cached(tmp_path / "cache", values, mmap_mode, compress)

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(frame=frames())
    def round_trip(frame):
        key = len(values)
        values[key] = frame
        first = produce(key)
        again = produce(key)
        assert calls.count(key) == 1, "the second call was not a hit"
        assert_same_frame(again, frame)
        if mmap_mode is not None:
            assert_same_frame(first, frame)

    round_trip()
    assert all(m["skeleton"] == "json" for m in entry_meta(tmp_path / "cache"))


# --- memory maps, no copies, no pickle ---------------------------------------------------------


def test_a_hit_maps_numeric_blocks_read_only_without_a_copy(location, monkeypatch):
    n = 50_000
    frame = pd.DataFrame({"a": np.arange(n, dtype=np.float64), "b": np.ones(n),
                          "i": np.arange(n), "s": [f"s{i}" for i in range(n)]})
    produce, _ = cached(location, {"f": frame}, mmap_mode="r")
    produce("f")
    no_unpickling(monkeypatch)
    got = produce("f")
    numeric = [b.values for b in got._mgr.blocks if b.dtype.kind in "fi"]
    assert [v.shape for v in numeric] == [(2, n), (1, n)]  # consolidated as stored
    entry = next(location.rglob("a0")).parent
    for values in numeric:
        assert isinstance(values, np.memmap) and not values.flags.writeable
        assert Path(values.filename).is_relative_to(entry)
    column_a = got["a"].to_numpy()
    assert np.shares_memory(column_a, numeric[0])
    with pytest.raises(ValueError, match="read-only"):
        got.loc[0, "a"] = 5.0
    assert produce("f")["a"].iloc[0] == 0.0


def test_copy_on_write_mode_leaves_the_cache_untouched(location):
    frame = pd.DataFrame({"a": np.arange(1000.0), "c": pd.Categorical(["x", "y"] * 500)})
    produce, calls = cached(location, {"f": frame}, mmap_mode="c")
    produce("f")
    got = produce("f")
    got.loc[0, "a"] = -1.0
    got.iloc[1, 1] = "x"
    assert got["a"].iloc[0] == -1.0
    assert_same_frame(produce("f"), frame)
    assert calls == ["f"]


def test_frames_are_zarr_arrays_readable_without_arraycache(location):
    frame = pd.DataFrame({"a": np.arange(5000.0), "b": np.arange(5000.0) * 2,
                          "k": pd.Categorical(["lo", "hi"] * 2500)})
    produce, _ = cached(location, {"f": frame})
    produce("f")
    (meta,) = entry_meta(location)
    block = next(b for b in meta["tree"][1]["blocks"] if b["values"]["kind"] == "ndarray")
    entry = next(location.rglob("a0")).parent
    stored = zarr.open_group(entry, mode="r")[block["values"]["data"][1]][...]
    np.testing.assert_array_equal(stored, frame[["a", "b"]].to_numpy().T)
    assert block["loc"] == [0, 1]


class Holder:
    """An object only pickle can store, holding one frame twice."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self.frame = frame
        self.again = frame


def test_frames_inside_a_pickled_result_are_references(location, monkeypatch):
    n = 20_000
    frame = pd.DataFrame({"s": [f"text{i}" for i in range(n)], "x": np.arange(n)})

    produce, _ = cached(location, {"h": Holder(frame), "twice": (frame, frame, {"f": frame})})
    produce("h")
    produce("twice")
    got = produce("h")
    assert_same_frame(got.frame, frame)
    assert got.again is got.frame
    twice = produce("twice")
    assert twice[0] is twice[1] is twice[2]["f"]
    assert_same_frame(twice[0], frame)
    skeletons = sorted(location.rglob("skeleton/c/0"))
    assert len(skeletons) == 2
    # The strings are in zarr arrays, not in the pickles.
    assert all(p.stat().st_size < 2000 and b"text1999" not in p.read_bytes() for p in skeletons)


def test_unsupported_frames_fall_back_to_the_pickle(location):
    n = 300
    results = {
        "period": pd.DataFrame({"p": pd.period_range("2020-01", periods=n, freq="M")}),
        "interval": pd.Series(pd.interval_range(0, n)),
        "decimals": pd.DataFrame({"d": [decimal.Decimal(i) for i in range(2000)]}),
        "str-subclass": pd.Series(np.array([np.str_("a")] * 2000, dtype=object), dtype=object),
        "str-subclass-string-dtype": pd.Series([np.str_("a")] * 2000,
                                               dtype=pd.StringDtype("python", np.nan)),
        "other-nan": pd.Series(np.array(["a", np.float64("nan")] * 1000, dtype=object),
                               dtype=object),
        "sparse": pd.DataFrame({"s": pd.arrays.SparseArray([0, 1, 0] * n)}),
        "period-index": pd.Series(np.arange(n), index=pd.period_range("2020", periods=n)),
        "timestamp-label": pd.Series([1.0], name=pd.Timestamp("2020-01-01")),
    }
    produce, calls = cached(location, results)
    for key in results:
        produce(key)
    for key, expected in results.items():
        got = produce(key)
        if isinstance(expected, pd.DataFrame):
            pd.testing.assert_frame_equal(got, expected, check_exact=True)
        else:
            pd.testing.assert_series_equal(got, expected, check_exact=True)
    assert calls == list(results)
    assert sorted(m["skeleton"] for m in entry_meta(location)) == ["pickle"] * len(results)


def _string_specs(node: object) -> list[dict]:
    """Every strings part of an entry's JSON tree."""
    if isinstance(node, dict):
        found = [node] if node.get("kind") == "strings" else []
        return found + [s for value in node.values() for s in _string_specs(value)]
    if isinstance(node, list):
        return [s for value in node for s in _string_specs(value)]
    return []


@pytest.mark.parametrize("mmap_mode", [None, "r"])
def test_repeated_strings_are_stored_once_with_codes(location, mmap_mode):
    n = 30_000
    words = np.array(["alpha", "beta", "γάμμα", "\x00", ""], dtype=object)
    repeated = words[np.arange(n) % 5].copy()
    repeated[7::13] = None
    results = {
        "repeated": pd.DataFrame({"w": pd.Series(repeated, dtype=object)}),
        "repeated-str-dtype": pd.Series(pd.array(repeated, dtype=pd.StringDtype("python"))),
        "unique": pd.Series(np.array([f"u{i}" for i in range(n)], dtype=object), dtype=object),
    }
    produce, _ = cached(location, results, mmap_mode)
    for key in results:
        produce(key)
    for key, expected in results.items():
        assert_same_frame(produce(key), expected)
    specs = {m["args"]["key"].strip("'"): [s for s in _string_specs(m["tree"])
                                            if np.prod(s["shape"]) == n]
             for m in entry_meta(location)}  # the column's, not its label's
    assert [("codes" in s, s["count"]) for s in specs["repeated"]] == [(True, 5)]
    assert [("codes" in s, s["count"]) for s in specs["repeated-str-dtype"]] == [(True, 5)]
    assert [("codes" in s, s["count"]) for s in specs["unique"]] == [(False, n)]


def test_strings_holding_the_separators_round_trip(location):
    controls = "".join(chr(c) for c in range(0x20))
    every_candidate = controls + "\x7f\uffff\ufffe\ufdd0"
    results = {
        "controls": pd.Series([controls + str(i) for i in range(3000)], dtype=object),
        "every-separator": pd.Series([every_candidate + str(i) for i in range(3000)],
                                     dtype=object),
    }
    produce, _ = cached(location, results)
    for key in results:
        produce(key)
    for key, expected in results.items():
        assert_same_frame(produce(key), expected)
    kinds = {m["args"]["key"].strip("'"): m["skeleton"] for m in entry_meta(location)}
    assert kinds == {"controls": "json", "every-separator": "pickle"}
    (spec,) = [s for m in entry_meta(location) if m["skeleton"] == "json"
               for s in _string_specs(m["tree"])]
    assert spec["separator"] == "\x7f"


# --- keys, imports, damage ---------------------------------------------------------------------


def test_a_loaded_frame_keys_a_downstream_step_like_the_computed_one(location):
    """step2(step1()): once step1 hits, step2 hits too: the loaded frame has the blocks,
    index and array state of the stored one, so it hashes alike."""
    kinds = ["float64", "int64", "bool", "datetime64[ns]", "tz-paris", "category-str",
             "object-str", "string-nan", "Int64"]
    counts = {"step1": 0, "step2": 0}
    for mmap_mode in (None, "r", None, "r", "c"):
        memory = arraycache.Memory(location, mmap_mode=mmap_mode, verbose=0)

        @memory.cache
        def step1(n):
            counts["step1"] += 1
            frame = pd.DataFrame({kind: column(kind, n) for kind in kinds})
            frame["x2"] = np.arange(n, dtype=np.float64)  # consolidated with "float64"
            return frame.set_index("tz-paris", append=True)

        @memory.cache
        def step2(df):
            counts["step2"] += 1
            return len(df)

        assert step2(step1(3000)) == 3000
    assert counts == {"step1": 1, "step2": 1}


def test_array_hits_do_not_import_pandas(tmp_path):
    out = run_python(
        f"""
        import sys
        import numpy as np
        import arraycache
        memory = arraycache.Memory({str(tmp_path / "cache")!r}, verbose=0)
        f = memory.cache(lambda: {{"a": np.ones(5000), "b": (1, "x")}})
        f()
        f()
        print("pandas" in sys.modules)
        """,
        tmp_path,
    )
    assert out.split() == ["False"]


def test_frame_hits_import_pandas_in_a_new_process(tmp_path):
    code = f"""
        import sys
        import arraycache
        memory = arraycache.Memory({str(tmp_path / "cache")!r}, mmap_mode="r", verbose=0)

        @memory.cache
        def f():
            import pandas as pd
            print("computed")
            return pd.DataFrame({{"s": ["a", None, "é"], "x": [1.0, 2.0, 3.0]}})

        print(f().to_dict("list"))
        """
    first = run_python(code, tmp_path)
    second = run_python(code, tmp_path)
    assert first.startswith("computed")
    assert second.strip() == first.split("\n", 1)[1].strip()


def test_damaged_string_data_is_recomputed(location):
    n = 5000
    frame = pd.DataFrame({"s": pd.Series([f"v{i}" for i in range(n)], dtype=object)})
    for mmap_mode in (None, "r"):
        produce, calls = cached(location / str(mmap_mode), {"f": frame}, mmap_mode=mmap_mode)
        produce("f")
        (data,) = [p for p in (location / str(mmap_mode)).rglob("a*/c/0")]
        raw = bytearray(data.read_bytes())
        raw[raw.index(0)] = ord("x")  # two strings become one: same size, one string short
        data.write_bytes(bytes(raw))
        with pytest.warns(DamagedEntryWarning):
            got = produce("f")
        assert_same_frame(got, frame)
        assert calls == ["f", "f"]
        assert_same_frame(produce("f"), frame)


def _find_part(node: object, kind: str) -> dict:
    """The first part of ``kind`` in an entry's JSON tree."""
    if isinstance(node, dict):
        if node.get("kind") == kind:
            return node
        node = list(node.values())
    if isinstance(node, list):
        for value in node:
            found = _find_part(value, kind)
            if found:
                return found
    return {}


@pytest.mark.parametrize("where", ["categorical", "multiindex"])
def test_codes_out_of_range_are_damage_not_a_crash(location, where):
    """Memory-mapped hits check sizes, not digests: a wrong code must not reach pandas,
    which would read out of bounds with it."""
    n = 4000
    codes = pd.Categorical.from_codes(np.arange(n) % 3, ["a", "b", "c"])
    frame = (pd.DataFrame({"c": codes}) if where == "categorical" else
             pd.DataFrame({"x": np.arange(n)}, index=pd.MultiIndex.from_arrays(
                 [np.arange(n) % 3, np.arange(n)])))
    produce, calls = cached(location, {"f": frame}, mmap_mode="r")
    produce("f")
    (meta,) = entry_meta(location)
    if where == "categorical":
        name = _find_part(meta["tree"][1]["blocks"], "Categorical")["codes"][1]
    else:
        name = meta["tree"][1]["index"]["codes"][0][1]
    path = next(location.rglob(f"{name}/c/0"))
    raw = bytearray(path.read_bytes())
    raw[5] = 100  # level 0 and the categories hold 3 values
    path.write_bytes(bytes(raw))
    with pytest.warns(DamagedEntryWarning, match="out of range"):
        got = produce("f")
    assert_same_frame(got, frame)
    assert calls == ["f", "f"]


@pytest.mark.skipif(not HAS_PYARROW, reason="pyarrow is not installed")
def test_arrow_strings_are_mapped_without_decoding(location):
    n = 10_000
    frame = pd.DataFrame({"s": pd.array([f"s{i}" for i in range(n)],
                                        dtype=pd.StringDtype("pyarrow"))})
    produce, _ = cached(location, {"f": frame}, mmap_mode="r")
    produce("f")
    got = produce("f")
    assert_same_frame(got, frame)
    _, offsets, data = got["s"].array._pa_array.chunk(0).buffers()
    mapped = []  # (start, end) of this process's maps of the entry's files
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[5].startswith(str(location)):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            mapped.append((start, end))
    for buffer in (offsets, data):
        assert any(start <= buffer.address < end for start, end in mapped)


@pytest.mark.skipif(not HAS_PYARROW, reason="pyarrow is not installed")
def test_arrow_offsets_that_leave_the_data_are_damage(location):
    n = 3000
    frame = pd.DataFrame({"s": pd.array([f"s{i}" for i in range(n)],
                                        dtype=pd.StringDtype("pyarrow"))})
    produce, calls = cached(location, {"f": frame}, mmap_mode="r")
    produce("f")
    (meta,) = entry_meta(location)
    name = _find_part(meta["tree"][1]["blocks"], "ArrowStringArray")["offsets"][1]
    path = next(location.rglob(f"{name}/c/0"))
    offsets = np.memmap(path, dtype=np.int64, mode="r+", shape=(n + 1,))
    offsets[10] = 1 << 40
    offsets.flush()
    del offsets
    with pytest.warns(DamagedEntryWarning, match="offsets"):
        got = produce("f")
    assert_same_frame(got, frame)
    assert calls == ["f", "f"]
