"""pandas frames for the storage tests: every column kind arraycache stores without pickle,
hypothesis strategies that generate them, and an exact comparison."""

from __future__ import annotations

import datetime
import io
import pickle
import zoneinfo

import numpy as np
import pandas as pd
from hypothesis import strategies as st

try:
    import pyarrow  # noqa: F401
except ImportError:
    HAS_PYARROW = False
else:
    HAS_PYARROW = True

PARIS = zoneinfo.ZoneInfo("Europe/Paris")
PLUS_2 = datetime.timezone(datetime.timedelta(hours=2))

#: Text with what JSON and UTF-8 make hard: non-ASCII, astral, a lone surrogate, NUL
#: (also at the end, where numpy strips it), control characters, empty strings.
AWKWARD = ["a", "é", "\U0001f600", "\ud800x", "nul\x00", "\x00", "", "\x01\x1f", "\uffff", "tab\t"]


def column(kind: str, n: int, seed: int = 0) -> pd.Series:
    """A column of ``n`` rows of one kind, with missing values where the kind has them."""
    rng = np.random.default_rng(seed)
    gaps = np.arange(n) % 5 == 1
    floats = rng.standard_normal(n)
    if kind == "float64":
        return pd.Series(np.where(gaps, np.nan, floats))
    if kind == "float32":
        return pd.Series(np.where(gaps, -np.inf, floats).astype(np.float32))
    if kind == "int64":
        return pd.Series(rng.integers(-(2**62), 2**62, n))
    if kind == "uint8":
        return pd.Series(rng.integers(0, 256, n, dtype=np.uint8))
    if kind == "bool":
        return pd.Series(floats > 0)
    if kind == "complex128":
        return pd.Series(floats + 1j * floats[::-1])
    if kind in ("datetime64[ns]", "datetime64[s]"):
        values = (rng.integers(0, 2**40, n) * 1000).astype(kind)
        values[gaps] = np.datetime64("NaT")
        return pd.Series(values)
    if kind.startswith("tz-"):
        tz = {"tz-paris": PARIS, "tz-utc": datetime.UTC, "tz-plus2": PLUS_2}[kind]
        values = pd.Series(pd.date_range("2021-03-27", periods=n, freq="37min", tz=tz))
        return values.where(~gaps, pd.NaT)
    if kind == "timedelta64":
        values = rng.integers(-(10**12), 10**12, n).astype("m8[us]")
        values[gaps] = np.timedelta64("NaT")
        return pd.Series(values)
    if kind == "category-str":
        values = np.array(["red", "green", "blue", "é"], dtype=object)[rng.integers(0, 4, n)]
        return pd.Series(pd.Categorical(np.where(gaps, None, values)))
    if kind == "category-int-ordered":
        return pd.Series(pd.Categorical(rng.integers(0, 300, n), categories=range(300),
                                        ordered=True))
    if kind == "object-str":
        values = np.array([AWKWARD[i % len(AWKWARD)] + str(i) for i in range(n)], dtype=object)
        values[np.arange(n) % 7 == 3] = None
        values[np.arange(n) % 7 == 5] = np.nan
        values[np.arange(n) % 11 == 6] = pd.NA
        return pd.Series(values, dtype=object)
    if kind in ("string-nan", "string-NA"):
        na = np.nan if kind == "string-nan" else pd.NA
        values = [None if gap else AWKWARD[i % len(AWKWARD)] * (i % 4) for i, gap in
                  enumerate(gaps)]
        return pd.Series(pd.array(values, dtype=pd.StringDtype("python", na_value=na)))
    if kind in ("arrow-string-nan", "arrow-string-NA"):
        na = np.nan if kind == "arrow-string-nan" else pd.NA
        values = [None if gap else f"s{i}é" for i, gap in enumerate(gaps)]
        return pd.Series(pd.array(values, dtype=pd.StringDtype("pyarrow", na_value=na)))
    if kind in ("Int64", "UInt8", "Float32", "boolean"):
        values = {"Int64": rng.integers(-(2**62), 2**62, n), "UInt8": rng.integers(0, 256, n),
                  "Float32": floats, "boolean": floats > 0}[kind]
        return pd.Series(pd.array(values, dtype=kind)).mask(gaps)
    raise ValueError(kind)


COLUMN_KINDS = [
    "float64", "float32", "int64", "uint8", "bool", "complex128", "datetime64[ns]",
    "datetime64[s]", "tz-paris", "tz-utc", "tz-plus2", "timedelta64", "category-str",
    "category-int-ordered", "object-str", "string-nan", "string-NA", "Int64", "UInt8", "Float32",
    "boolean",
] + (["arrow-string-nan", "arrow-string-NA"] if HAS_PYARROW else [])


class _Unmapped(pickle.Pickler):
    def reducer_override(self, obj: object) -> object:
        if type(obj) is np.memmap:
            return np.array, (obj.view(np.ndarray),)
        return NotImplemented


def unmapped(obj: object) -> object:
    """A copy of ``obj`` whose memmaps are plain arrays: pandas' exact comparisons also
    compare the classes of arrays, and a hit with mmap_mode hands out np.memmap."""
    buffer = io.BytesIO()
    _Unmapped(buffer, protocol=5).dump(obj)
    return pickle.loads(buffer.getvalue())


def assert_same_index(got: pd.Index, expected: pd.Index) -> None:
    assert type(got) is type(expected)
    pd.testing.assert_index_equal(unmapped(got), expected, exact=True, check_exact=True,
                                  check_categorical=True)
    assert got.dtype == expected.dtype
    assert list(got.names) == list(expected.names)
    assert [type(name) for name in got.names] == [type(name) for name in expected.names]
    assert getattr(got, "freq", None) == getattr(expected, "freq", None)


def assert_same_frame(got: object, expected: object) -> None:
    """Same class, dtypes, index, labels (with their types), values with missing values in
    the same places and of the same kind, attrs and flags."""
    assert type(got) is type(expected)
    plain = unmapped(got)
    if isinstance(expected, pd.DataFrame):
        pd.testing.assert_frame_equal(plain, expected, check_exact=True, check_freq=True,
                                      check_flags=True, check_column_type=True,
                                      check_index_type=True, check_categorical=True)
        assert list(got.dtypes) == list(expected.dtypes)
        assert_same_index(got.columns, expected.columns)
        columns = [(got.iloc[:, i], expected.iloc[:, i]) for i in range(expected.shape[1])]
    else:
        pd.testing.assert_series_equal(plain, expected, check_exact=True, check_freq=True,
                                       check_flags=True, check_index_type=True,
                                       check_categorical=True)
        assert got.name == expected.name and type(got.name) is type(expected.name)
        columns = [(got, expected)]
    assert_same_index(got.index, expected.index)
    assert got.attrs == expected.attrs
    assert got.flags == expected.flags
    for got_column, expected_column in columns:
        assert got_column.dtype == expected_column.dtype
        if expected_column.dtype == object:
            # Which missing value (None, nan, pd.NA) and which type each item has.
            for g, e in zip(got_column.tolist(), expected_column.tolist(), strict=True):
                assert type(g) is type(e)
                assert g is e or (type(e) is float and g != g and e != e) or g == e


# --- hypothesis ------------------------------------------------------------------------------

_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=6)
_ARROW_TEXT = st.text(max_size=6)  # Arrow holds valid UTF-8 only: no lone surrogates
_LABELS = st.one_of(st.text(max_size=3), st.integers(-5, 5), st.none(),
                    st.tuples(st.text(max_size=2), st.integers(0, 3)))


def _strings_column(draw: st.DrawFn, n: int, dtype: object) -> object:
    text = _ARROW_TEXT if getattr(dtype, "storage", None) == "pyarrow" else _TEXT
    values = draw(st.lists(st.one_of(text, st.none()), min_size=n, max_size=n))
    if dtype is object:
        nulls = draw(st.lists(st.sampled_from([None, np.nan, pd.NA]), min_size=n, max_size=n))
        out = np.empty(n, dtype=object)
        for i, value in enumerate(values):
            out[i] = nulls[i] if value is None else value
        return out
    return pd.array(values, dtype=dtype)


_GENERATED_KINDS = [
    "float64", "float32", "int64", "int8", "uint16", "bool", "datetime64[ns]", "datetime64[ms]",
    "tz", "timedelta64[us]", "category", "object", "string-nan", "string-NA", "Int32",
    "Float64", "boolean",
] + (["arrow-string"] if HAS_PYARROW else [])


@st.composite
def generated_column(draw: st.DrawFn, n: int) -> object:
    """Values of one column: random bits, NaN, NaT and missing values included."""
    kind = draw(st.sampled_from(_GENERATED_KINDS))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if kind in ("float64", "float32", "int64", "int8", "uint16", "bool", "datetime64[ns]",
                "datetime64[ms]", "timedelta64[us]"):
        dtype = np.dtype(kind)
        raw = rng.bytes(n * dtype.itemsize)
        if kind == "bool":
            return rng.integers(0, 2, n).astype(bool)
        values = np.frombuffer(bytearray(raw), dtype=dtype)
        if dtype.kind in "Mm":  # keep them in pandas' bounds; NaT included
            values = (values.view(np.int64) % (2**52)).view(dtype)
            values[rng.random(n) < 0.2] = dtype.type("NaT")
        return values
    if kind == "tz":
        tz = draw(st.sampled_from([PARIS, datetime.UTC, PLUS_2, zoneinfo.ZoneInfo("Asia/Tokyo")]))
        values = pd.to_datetime(rng.integers(-(2**50), 2**50, n), unit="us", utc=True)
        return pd.Series(values).dt.tz_convert(tz).where(rng.random(n) > 0.2, pd.NaT).array
    if kind == "category":
        categories = draw(st.lists(_TEXT, min_size=1, max_size=5, unique=True))
        codes = rng.integers(-1, len(categories), n)
        dtype = draw(st.sampled_from([object, pd.StringDtype("python", np.nan)]))
        return pd.Categorical.from_codes(codes, categories=pd.Index(categories, dtype=dtype),
                                         ordered=draw(st.booleans()))
    if kind == "object":
        return _strings_column(draw, n, object)
    if kind in ("string-nan", "string-NA"):
        return _strings_column(draw, n, pd.StringDtype(
            "python", na_value=np.nan if kind == "string-nan" else pd.NA))
    if kind == "arrow-string":
        return _strings_column(draw, n, pd.StringDtype("pyarrow", na_value=draw(
            st.sampled_from([np.nan, pd.NA]))))
    values = {"Int32": rng.integers(-(2**31), 2**31, n), "Float64": rng.standard_normal(n),
              "boolean": rng.random(n) > 0.5}[kind]
    return pd.array(values, dtype=kind).copy() if n == 0 else pd.Series(
        pd.array(values, dtype=kind)).mask(rng.random(n) < 0.2).array


@st.composite
def generated_index(draw: st.DrawFn, n: int) -> pd.Index:
    kind = draw(st.sampled_from(["range", "int", "str", "datetime", "multi", "categorical"]))
    name = draw(_LABELS)
    if kind == "range":
        start, step = draw(st.integers(-10, 10)), draw(st.sampled_from([1, 2, -3]))
        return pd.RangeIndex(start, start + step * n, step, name=name)
    if kind == "int":
        return pd.Index(draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=n, max_size=n)),
                        dtype=np.int64, name=name)
    if kind == "str":
        dtype = draw(st.sampled_from([object, pd.StringDtype("python", np.nan)]))
        return pd.Index(draw(st.lists(_TEXT, min_size=n, max_size=n)), dtype=dtype, name=name)
    if kind == "datetime":
        freq = draw(st.sampled_from(["D", "h", "7min", None]))
        if freq is None:
            return pd.DatetimeIndex(pd.to_datetime(
                draw(st.lists(st.integers(0, 2**40), min_size=n, max_size=n)), unit="s"),
                name=name)
        return pd.date_range("2020-01-01", periods=n, freq=freq, name=name,
                             tz=draw(st.sampled_from([None, PARIS])))
    if kind == "categorical":
        return pd.CategoricalIndex(draw(st.lists(st.sampled_from(["x", "y", "z"]), min_size=n,
                                                 max_size=n)), name=name)
    first = draw(st.lists(st.sampled_from(["a", "b"]), min_size=n, max_size=n))
    second = draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    return pd.MultiIndex.from_arrays([first, second], names=[name, draw(_LABELS)])


def _keeping_object_dtype(values: object, index: pd.Index) -> object:
    """Object arrays as a Series of object dtype: the frame constructors would infer
    pandas 3's string dtype from them (Arrow-backed when pyarrow is installed, which
    cannot hold lone surrogates)."""
    if isinstance(values, np.ndarray) and values.dtype == object:
        return pd.Series(values, index=index, dtype=object)
    return values


@st.composite
def frames(draw: st.DrawFn, max_rows: int = 40) -> pd.DataFrame | pd.Series:
    """A DataFrame (columns of several kinds, possibly consolidated into blocks) or a
    Series, with a generated index, column labels of several types, maybe attrs."""
    n = draw(st.integers(0, max_rows))
    index = draw(generated_index(n))
    if draw(st.integers(0, 4)) == 0:
        values = draw(generated_column(n))
        obj = pd.Series(values, index=index, name=draw(_LABELS), copy=True,
                        dtype=getattr(values, "dtype", None))
    else:
        width = draw(st.integers(0, 5))
        labels = draw(st.sampled_from(["str", "int", "mixed"]))
        names = {"str": [f"c{i}" for i in range(width)], "int": list(range(width)),
                 "mixed": [(f"c{i}" if i % 2 else i) for i in range(width)]}[labels]
        data = {name: _keeping_object_dtype(draw(generated_column(n)), index)
                for name in names}
        # The dict constructor consolidates same-dtype columns into 2-d blocks; building
        # column by column keeps one block per column: both layouts are stored.
        if draw(st.booleans()):
            obj = pd.DataFrame(data, index=index)
        else:
            obj = pd.DataFrame(index=index)
            for name, values in data.items():
                obj[name] = values
        obj.columns = pd.Index(names, dtype=object) if labels == "mixed" else obj.columns
    if draw(st.booleans()):
        obj.attrs["note"] = draw(st.text(max_size=4))
    return obj
