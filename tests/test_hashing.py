"""Tests of arraycache.hashing: deterministic digests, and reuse of stored digests."""

from __future__ import annotations

import collections
import gc
import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xxhash

import arraycache
from arraycache import Memory, hashing
from arraycache.hashing import BLOCK_SIZE, array_digest, block_digests, remember_digest

hash = arraycache.hash  # the function under test


# --- helpers ---------------------------------------------------------------------------------


def run_script(path: Path, seed: str, *args: str) -> str:
    env = {**os.environ, "PYTHONHASHSEED": seed}
    proc = subprocess.run(
        [sys.executable, str(path), *args], cwd=path.parent, capture_output=True, text=True,
        timeout=120, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


class _Forbidden(AssertionError):
    pass


def forbid_content_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any hashing of array bytes by arraycache.hashing fail loudly."""

    def refuse(*args, **kwargs):
        raise _Forbidden("array bytes were hashed")

    monkeypatch.setattr(hashing, "block_digests", refuse)
    monkeypatch.setattr(hashing, "_digest", refuse)


def count_hashed_bytes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the size of every block digested by arraycache.hashing (and persistence)."""
    sizes: list[int] = []
    real = hashing._digest

    def counting(block):
        sizes.append(memoryview(block).nbytes)
        return real(block)

    monkeypatch.setattr(hashing, "_digest", counting)
    return sizes


def reference_blocks(arr: np.ndarray, order: str = "C") -> list[bytes]:
    """Block digests computed independently of hashing._blocks: from a full copy."""
    data = arr.tobytes(order=order)
    starts = range(0, len(data), BLOCK_SIZE)
    return [xxhash.xxh3_128_digest(data[i : i + BLOCK_SIZE]) for i in starts]


# --- 1. determinism across processes ---------------------------------------------------------

OBJECTS_MODULE = '''
import collections

import numpy as np
import pandas as pd
from sklearn.linear_model import LinearRegression
from sklearn.preprocessing import StandardScaler


class Point:
    def __init__(self, x, y, tags):
        self.x, self.y, self.tags = x, y, tags


def build():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3))
    y = X @ [1.0, -2.0, 0.5] + 0.1
    base = np.arange(24, dtype=np.float64).reshape(4, 6)
    return {
        "nested": {
            1: "one", "two": [2, 2.5, None, b"b"], (3, "t"): {"z", "y", "x"},
            None: ({"k": frozenset({"a", "b", "c"})}, [{"q": 1, 7: "seven"}]),
            2.5: {("a", 1), ("b", 2), 3, "mixed"},
        },
        "strings": {f"s{i}": {f"v{j}" for j in range(i % 7)} for i in range(60)},
        "string_set": {f"member-{i}" for i in range(100)},
        "arrays": [
            base, np.asfortranarray(base), base[:, ::-2], base[::-1], np.array(3.5),
            np.zeros((0, 4)), np.arange(10, dtype=">i4"), np.arange(10, dtype=np.int8),
            np.arange(10, dtype=np.uint64), np.linspace(0, 1, 7, dtype=np.float16),
            np.arange(5) + 1j, np.array([True, False]),
            np.arange(4).astype("datetime64[D]"), np.arange(4).astype("timedelta64[ms]"),
            np.array(["a", "bc", "def"]), np.array([b"x", b"yz"]),
            np.array([(1, 2.0, "a")], dtype=[("i", "<i4"), ("f", ">f8"), ("s", "U2")]),
            np.array([1, "a", None, {"d": {1, 2}}], dtype=object),
        ],
        "scalars": [
            np.float32(1.5), np.int16(-3), np.uint8(7), np.bool_(True), np.complex64(1 - 2j),
            np.datetime64("2020-01-02T03:04"), np.str_("abc"), np.bytes_(b"abc"),
        ],
        "frame": pd.DataFrame(
            {"a": [1, 2, 3], "b": [0.5, 1.5, 2.5], "c": ["x", "y", "z"]}, index=[10, 20, 30]
        ),
        "series": pd.Series([1.0, 2.0, np.nan], index=["u", "v", "w"], name="s"),
        "scaler": StandardScaler().fit(X),
        "regression": LinearRegression().fit(X, y),
        "point": Point(1, 2.5, {"red", "green", "blue"}),
        "ordered": collections.OrderedDict([("b", 1), ("a", 2)]),
        "counter": collections.Counter("hello world"),
    }
'''

SCRIPT = '''
import json
import sys

import arraycache
from det_objects import build

OFFSET = 10
square_plus = lambda x, k=2: x**k + OFFSET  # noqa: E731


def make_adder(n):
    return lambda x: x + n


objects = build()
objects["lambda"] = square_plus
objects["closure"] = make_adder(3)
objects["membership"] = lambda x: x in {"alpha", "beta", "gamma", "delta", "epsilon"}
objects["lambda_in_list"] = [square_plus, make_adder(4)]
digests = {name: arraycache.hash(obj) for name, obj in objects.items()}
digests["arrays_each"] = [arraycache.hash(a) for a in objects["arrays"]]
print(json.dumps(digests))
'''


@pytest.fixture
def det_scripts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "det_objects.py").write_text(textwrap.dedent(OBJECTS_MODULE))
    script = tmp_path / "det_script.py"
    script.write_text(textwrap.dedent(SCRIPT))
    monkeypatch.syspath_prepend(str(tmp_path))
    return script


def test_hash_is_the_same_in_other_processes_and_hash_seeds(det_scripts: Path) -> None:
    first = json.loads(run_script(det_scripts, "0"))
    second = json.loads(run_script(det_scripts, "4242"))
    assert first == second
    # The digests are not trivially equal to each other.
    singles = [v for v in first.values() if isinstance(v, str)]
    assert len(set(singles)) == len(singles)
    assert len(set(first["arrays_each"])) == len(first["arrays_each"])
    assert first["closure"] != first["lambda"]

    # And the same in this process, for everything not defined in the script.
    import det_objects

    here = det_objects.build()
    for name, obj in here.items():
        assert hash(obj) == first[name], name
    assert [hash(a) for a in here["arrays"]] == first["arrays_each"]


# --- 1. equal values, equal digests; different values, different digests ---------------------

DTYPES = [
    np.bool_, np.int8, np.uint16, "<i4", ">i4", np.int64, np.float16, np.float32, ">f8",
    np.complex128, np.longdouble, "datetime64[ns]", "timedelta64[s]", "U3", "S2",
    [("a", "<i4"), ("b", "f8"), ("c", "U1")],
]


def _sample(dtype, shape=(6, 5)) -> np.ndarray:
    return (np.arange(np.prod(shape)) % 7).astype(dtype).reshape(shape)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_equal_arrays_of_any_dtype_and_layout_hash_equal(dtype) -> None:
    a = _sample(dtype)
    digest = hash(a)
    assert isinstance(digest, str)
    assert len(digest) == 32
    int(digest, 16)
    assert hash(a.copy()) == digest
    assert hash(np.array(a, copy=True)) == digest
    assert hash([a]) == hash([a.copy()])
    for view in (a[:, ::2], a[::-1], a[::-1, ::-1], a[1:4, 2:], a.T[::2]):
        assert not view.flags.c_contiguous
        assert hash(view) == hash(view.copy()), view.strides
    f = np.asfortranarray(a)
    assert hash(f) == hash(np.asfortranarray(a.copy()))
    assert hash(f) != digest  # same values, other memory order
    assert hash(a[2, 3]) == hash(a[2, 3].copy())  # numpy scalar
    zero_d = np.array(a[1, 1])
    assert zero_d.ndim == 0
    assert hash(zero_d) == hash(zero_d.copy())
    assert hash(zero_d) != hash(a[1, 1:2])  # shape () vs (1,)
    empty = a[:0]
    assert hash(empty) == hash(np.empty((0, 5), dtype=a.dtype))
    assert hash(empty) != hash(a[:, :0])
    changed = a.copy()
    changed[3, 4] = a[0, 0]
    assert changed[3, 4] != a[3, 4]
    assert hash(changed) != digest


def test_object_arrays() -> None:
    a = np.array([1, "a", None, {"k": [1, 2]}, (3, 4)], dtype=object)
    b = np.array([1, "a", None, {"k": [1, 2]}, (3, 4)], dtype=object)
    assert hash(a) == hash(b)
    assert hash(a[::-1]) == hash(a[::-1].copy())
    b[3]["k"].append(3)
    assert hash(a) != hash(b)
    grid = np.empty((2, 3), dtype=object)
    grid[:] = [["a", "b", "c"], ["d", "e", "f"]]
    assert hash(grid) != hash(np.asfortranarray(grid))
    assert hash(grid) != hash(grid.reshape(3, 2))


def test_memmap_hashes_like_the_array(tmp_path: Path) -> None:
    a = np.random.default_rng(1).normal(size=(300, 70))
    for order in ("C", "F"):
        path = tmp_path / f"data_{order}.bin"
        w = np.memmap(path, dtype=a.dtype, mode="w+", shape=a.shape, order=order)
        w[:] = a
        w.flush()
        del w
        for mode in ("r", "c", "r+"):
            m = np.memmap(path, dtype=a.dtype, mode=mode, shape=a.shape, order=order)
            expected = np.array(a, order=order)
            assert hash(m) == hash(expected)
            assert hash(m[::3]) == hash(a[::3])
            assert hash({"x": m}) == hash({"x": expected})
            del m


def test_one_changed_element_changes_the_digest() -> None:
    n = 3 * BLOCK_SIZE // 8 + 1000  # 3 blocks and a bit
    a = np.arange(n, dtype=np.float64)
    digest = hash(a)
    boundary = BLOCK_SIZE // 8  # first element of the second block
    for index in (0, boundary - 1, boundary, 2 * boundary, n // 2, n - 1):
        b = a.copy()
        b[index] = -1.0
        assert hash(b) != digest, index
        assert hash(b[::-1]) != hash(a[::-1]), index
    # An element that straddles a block boundary: 12-byte items.
    rec = np.zeros(BLOCK_SIZE // 12 + 100, dtype=[("x", "<i4"), ("y", "<i4"), ("z", "<i4")])
    straddling = BLOCK_SIZE // 12  # bytes [BLOCK_SIZE - 4, BLOCK_SIZE + 8)
    assert straddling * 12 < BLOCK_SIZE < (straddling + 1) * 12
    digest = hash(rec)
    for field in ("x", "y", "z"):
        changed = rec.copy()
        changed[straddling][field] = 1
        assert hash(changed) != digest, field


def test_dtype_shape_and_order_are_part_of_the_digest() -> None:
    assert hash(np.arange(6, dtype=np.int64)) != hash(np.arange(6, dtype=np.float64))
    # Same bytes, different dtype.
    assert hash(np.zeros(6, dtype=np.int64)) != hash(np.zeros(6, dtype=np.float64))
    assert hash(np.zeros(6, dtype="<i4")) != hash(np.zeros(6, dtype=">i4"))
    assert hash(np.arange(6, dtype="<i4")) != hash(np.arange(6, dtype=">i4"))
    a = np.arange(6, dtype="<i4")
    assert hash(a) != hash(a.view(">i4"))
    assert hash(a) != hash(a.view(np.float32))
    assert hash(np.zeros(2, "M8[s]")) != hash(np.zeros(2, "M8[ms]"))
    # Same bytes, different shape.
    shapes = [(12,), (3, 4), (4, 3), (2, 6), (1, 12), (2, 2, 3)]
    b = np.arange(12.0)
    assert len({hash(b.reshape(s)) for s in shapes}) == len(shapes)
    # Same values, other memory order.
    c = b.reshape(3, 4)
    assert hash(c) != hash(np.asfortranarray(c))
    assert hash(c.T) != hash(np.ascontiguousarray(c.T))
    assert hash(c.T) == hash(np.asfortranarray(c.T))


def test_big_non_contiguous_arrays_hash_like_their_contiguous_copy() -> None:
    a = np.random.default_rng(2).random((1250, 2048))  # 20 MB, 5 blocks
    b3 = np.random.default_rng(3).random((2, 1024, 1024))  # 16 MB, rows of 8 MB
    wide = np.random.default_rng(4).random((3, 1_250_000))  # 30 MB, rows of 10 MB
    views = {
        "a[:, ::2]": a[:, ::2],
        "a[::-1]": a[::-1],
        "a[::-1, ::-3]": a[::-1, ::-3],
        "a.T[1:]": a.T[1:],
        "b3.transpose(0, 2, 1)": b3.transpose(0, 2, 1),  # rows are F-contiguous
        "b3[:, ::-1]": b3[:, ::-1],
        "wide[::2]": wide[::2],  # C-contiguous rows not a multiple of BLOCK_SIZE
        "wide[:, ::-1]": wide[:, ::-1],
    }
    for name, view in views.items():
        assert not (view.flags.c_contiguous or view.flags.f_contiguous), name
        copy = np.ascontiguousarray(view)
        expected = reference_blocks(copy)
        assert len(expected) > 1, name
        assert block_digests(view) == expected, name
        assert block_digests(copy) == expected, name
        assert hash(view) == hash(copy), name
    f = np.asfortranarray(a)
    assert block_digests(f) == reference_blocks(a, order="F")
    assert hash(f) == hash(np.asfortranarray(a[::-1][::-1]))


def test_containers_ignore_dict_and_set_order_but_not_values() -> None:
    d1 = {"b": 1, "a": [1, 2, {3, 4}], 3: "x", (1, "t"): None, None: 2.5}
    d2 = {None: 2.5, (1, "t"): None, 3: "x", "a": [1, 2, {4, 3}], "b": 1}
    assert list(d1) != list(d2)
    assert hash(d1) == hash(d2)
    s1 = {f"k{i}" for i in range(50)}
    s2 = set(sorted(s1, reverse=True))
    assert hash(s1) == hash(s2)
    assert hash(frozenset(s1)) == hash(frozenset(s2))
    assert hash({1, "a", (2, "b")}) == hash({(2, "b"), "a", 1})
    assert hash(collections.defaultdict(int, a=1, b=2)) == hash(
        collections.defaultdict(int, b=2, a=1)
    )
    assert hash(collections.Counter("abracadabra")) == hash(
        collections.Counter(sorted("abracadabra"))
    )
    # OrderedDict order is part of its value.
    assert hash(collections.OrderedDict(a=1, b=2)) != hash(collections.OrderedDict(b=2, a=1))
    different = [
        {"b": 1}, {"b": 2}, {"c": 1}, {1: "b"}, {1.0: "b"}, {True: "b"}, [1, 2], (1, 2),
        [2, 1], {1, 2}, frozenset({1, 2}), {1, 2, 3}, "12", b"12", 12, 12.0, None, [], (), {},
        set(), [[]], [()], collections.OrderedDict(b=1),
    ]
    digests = [hash(x) for x in different]
    assert len(set(digests)) == len(digests)


def test_sharing_does_not_change_the_digest() -> None:
    s1 = "a string long enough not to be interned " * 3
    s2 = "".join(["a string long enough not to be interned "] * 3)
    assert s1 == s2
    assert s1 is not s2
    assert hash([s1, s1]) == hash([s1, s2])
    a = np.arange(1000.0)
    assert hash([a, a]) == hash([a, a.copy()])
    assert hash({"x": a, "y": a}) == hash({"x": a.copy(), "y": a.copy()})
    p = Point(s1, s1)
    q = Point(s1, s2)
    assert hash(p) == hash(q)
    assert hash([p, p]) == hash([p, Point(s1, s1)])


class Point:
    def __init__(self, x, y) -> None:
        self.x = x
        self.y = y

    def __eq__(self, other) -> bool:
        return type(other) is Point and (self.x, self.y) == (other.x, other.y)

    __hash__ = None


class Slotted:
    __slots__ = ("a", "b")

    def __init__(self, a, b) -> None:
        self.a = a
        self.b = b


def test_user_objects() -> None:
    p = Point(1, {"k": [1, 2]})
    q = Point(1, {"k": [1, 2]})
    assert hash(p) == hash(q)
    r = Point(0, 0)
    r.y = {"k": [1, 2]}
    r.x = 1  # other attribute insertion order
    assert hash(r) == hash(p)
    assert hash(Point(1, {"k": [1, 3]})) != hash(p)
    assert hash(Point(2, {"k": [1, 2]})) != hash(p)
    assert hash(Slotted(1, "x")) == hash(Slotted(1, "x"))
    assert hash(Slotted(1, "x")) != hash(Slotted(1, "y"))
    assert hash(Slotted(1, "x")) != hash(Point(1, "x"))
    # Objects holding arrays: by content.
    big = np.random.default_rng(5).random(3 * BLOCK_SIZE // 8)
    assert hash(Point(big, 1)) == hash(Point(big.copy(), 1))
    changed = big.copy()
    changed[-1] += 1
    assert hash(Point(big, 1)) != hash(Point(changed, 1))


def test_self_referential_objects() -> None:
    def make(value):
        node = Point(value, None)
        node.y = [node]
        return node

    assert hash(make(1)) == hash(make(1))
    assert hash(make(1)) != hash(make(2))
    loop = []
    loop.append(loop)
    with pytest.raises(ValueError):
        hash(loop)


def test_functions() -> None:
    def make_adder(n):
        return lambda x: x + n

    def make_defaults(n):
        return lambda x, k=n: x + k

    assert hash(make_adder(1)) == hash(make_adder(1))
    assert hash(make_adder(1)) != hash(make_adder(2))
    assert hash(make_defaults(1)) == hash(make_defaults(1))
    assert hash(make_defaults(1)) != hash(make_defaults(2))
    assert hash(lambda x: x + 1) != hash(lambda x: x + 2)
    assert hash(lambda x: x in {"a", "b", "c"}) == hash(lambda x: x in {"a", "b", "c"})

    def outer():
        def fact(n):
            return 1 if n <= 1 else n * fact(n - 1)

        return fact

    assert hash(outer()) == hash(outer())  # a closure that holds itself
    assert hash(np.sum) == hash(np.sum)
    assert hash(np.sum) != hash(np.mean)
    assert hash(run_script) != hash(_sample)


def test_numpy_scalars() -> None:
    values = [
        np.float64(1.0), np.float32(1.0), np.int64(1), np.int32(1), np.uint8(1), np.bool_(True),
        np.complex128(1), np.datetime64(1, "D"), np.datetime64(1, "s"), np.str_("1"),
        np.bytes_(b"1"), 1, 1.0, True,
    ]
    digests = [hash(v) for v in values]
    assert len(set(digests)) == len(digests)
    assert hash(np.float64(2.5)) == hash(np.array([2.5])[0])
    assert hash(np.float32(2.5)) != hash(np.float32(3.5))
    assert hash(np.dtype("f8")) == hash(np.dtype("<f8"))
    assert hash(np.dtype("<f8")) != hash(np.dtype(">f8"))


def test_pandas_objects() -> None:
    df = pd.DataFrame({"a": np.arange(5), "b": np.linspace(0, 1, 5), "c": list("vwxyz")})
    assert hash(df) == hash(df.copy())
    assert hash(df) == hash(pd.DataFrame({"a": np.arange(5), "b": np.linspace(0, 1, 5),
                                          "c": list("vwxyz")}))
    changed = df.copy()
    changed.loc[2, "b"] = -1.0
    assert hash(changed) != hash(df)
    assert hash(df.rename(columns={"c": "d"})) != hash(df)
    assert hash(df.set_axis(range(1, 6))) != hash(df)
    assert hash(df["b"]) == hash(df["b"].copy())
    assert hash(df["b"]) != hash(df["b"].rename("other"))
    assert hash(df["b"]) != hash(df["b"].astype(np.float32))
    big = pd.Series(np.random.default_rng(6).random(3 * BLOCK_SIZE // 8))
    assert hash(big) == hash(big.copy())
    modified = big.copy()
    modified.iloc[BLOCK_SIZE // 8] += 1
    assert hash(modified) != hash(big)


@pytest.mark.parametrize(
    "make",
    [
        lambda f: (x for x in range(3)),
        lambda f: threading.Lock(),
        lambda f: f,
        lambda f: {"nested": [1, threading.Lock()]},
    ],
    ids=["generator", "lock", "file", "nested-lock"],
)
def test_unhashable_objects_raise_type_error_naming_the_type(make, tmp_path: Path) -> None:
    with open(tmp_path / "f.txt", "w") as f:
        obj = make(f)
        culprit = obj["nested"][1] if isinstance(obj, dict) else obj
        with pytest.raises(TypeError, match=type(culprit).__name__):
            hash(obj)


def test_hash_accepts_joblib_arguments() -> None:
    a = np.arange(10)
    assert len(hash(a, hash_name="md5")) == 32  # more in test_memory_compat.py
    assert hash(a, coerce_mmap=False) == hash(a)  # an ndarray is not a memmap


# --- 2. reuse of stored digests --------------------------------------------------------------


def make_array(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1000))


def make_fortran(n: int) -> np.ndarray:
    return np.asfortranarray(np.arange(n * 1000.0).reshape(n, 1000))


def test_memmap_loaded_read_only_reuses_its_stored_digest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = make_array(2500, 0)  # 20 MB
    content = hash(original)
    content_tail = hash(original[1:])
    content_nested = hash([original, {"k": original.copy()}])
    cached = Memory(tmp_path / "cache", mmap_mode="r").cache(make_array)
    first = cached(2500, 0)  # computed, stored, returned as stored
    m = cached(2500, 0)  # a hit
    for loaded in (first, m):
        assert isinstance(loaded, np.memmap)
        assert loaded.mode == "r"
        assert not loaded.flags.writeable
    np.testing.assert_array_equal(m, original)

    with monkeypatch.context() as patch:
        forbid_content_hashing(patch)
        assert hash(m) == content
        assert hash(first) == content
        for whole in (m[...], m[:], np.asarray(m), m.view(np.ndarray), m.view(np.memmap)):
            assert hash(whole) == content
        assert hash([m, {"k": m}]) == content_nested
        # A partial view must be read.
        with pytest.raises(_Forbidden):
            hash(m[1:])
        with pytest.raises(_Forbidden):
            hash(m.reshape(1000, 2500))
        with pytest.raises(_Forbidden):
            hash(m.T)
    # The stored digest is the content digest of the original array.
    assert array_digest(np.array(m)) == content
    sizes = count_hashed_bytes(monkeypatch)
    assert hash(m[1:]) == content_tail
    assert sum(sizes) == original[1:].nbytes


def test_containers_of_loaded_memmaps_reuse_digests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = make_array(600, 1)
    expected = hash([original, {"k": original}, (1, original[::-1].copy())])
    m = Memory(tmp_path / "cache", mmap_mode="r").cache(make_array)(600, 1)
    reversed_copy = original[::-1].copy()
    with monkeypatch.context() as patch:
        forbid_content_hashing(patch)
        with pytest.raises(_Forbidden):
            hash([m, {"k": m}, (1, reversed_copy)])
    sizes = count_hashed_bytes(monkeypatch)
    assert hash([m, {"k": m}, (1, reversed_copy)]) == expected
    assert sum(sizes) == reversed_copy.nbytes  # m itself was not read


def test_fortran_ordered_result_reuses_its_digest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = make_fortran(700)
    content = hash(original)
    assert content != hash(np.ascontiguousarray(original))
    m = Memory(tmp_path / "cache", mmap_mode="r").cache(make_fortran)(700)
    assert m.flags.f_contiguous
    assert array_digest(np.array(m, order="K")) == content
    forbid_content_hashing(monkeypatch)
    assert hash(m) == content
    assert hash(m.T.T) == content


def test_writable_and_copy_on_write_arrays_are_hashed_by_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = make_array(1000, 2)
    content = hash(original)
    location = tmp_path / "cache"
    r = Memory(location, mmap_mode="r").cache(make_array)(1000, 2)
    c = Memory(location, mmap_mode="c").cache(make_array)(1000, 2)
    assert isinstance(c, np.memmap)
    assert c.mode == "c"
    assert c.flags.writeable
    sizes = count_hashed_bytes(monkeypatch)
    assert hash(c) == content
    assert sum(sizes) == original.nbytes
    c[500, 3] += 1.0  # in memory only
    assert hash(c) != content
    assert hash(c) == hash(np.array(c))
    assert hash(r) == content  # the file did not change
    # A writable copy of a loaded array is read, and follows its changes.
    sizes.clear()
    w = np.array(r)
    assert hash(w) == content
    assert sum(sizes) == original.nbytes
    w[-1, -1] = 0.5
    assert hash(w) != content
    # A read-only array nobody registered is read too.
    sizes.clear()
    ro = original.copy()
    ro.flags.writeable = False
    assert hash(ro) == content
    assert sum(sizes) == original.nbytes


def test_remember_digest_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    a = np.arange(100.0)
    with pytest.raises(ValueError):
        remember_digest(a, "0" * 32)
    frozen = a.copy()
    frozen.flags.writeable = False
    remember_digest(frozen, "f" * 32)
    assert hash(frozen) == "f" * 32  # taken on trust: no read
    assert hash(frozen[...]) == "f" * 32
    assert hash(frozen[1:]) == hash(a[1:])
    # Views of another dtype or shape over the same memory are not the same array.
    assert hash(frozen.view(np.int64)) == hash(a.view(np.int64))
    assert hash(frozen.reshape(10, 10)) == hash(a.reshape(10, 10))
    # The registry forgets arrays that are gone.
    key = id(frozen)
    assert key in hashing._known_digests
    del frozen
    gc.collect()
    assert key not in hashing._known_digests


CACHE_MODULE = '''
import numpy as np


def produce(n, seed):
    return np.random.default_rng(seed).random((n, 1000))
'''

FILL_SCRIPT = '''
import sys

import arraycache
from ac_cache_funcs import produce

location, n, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
arraycache.Memory(location, verbose=0).cache(produce)(n, seed)
print(arraycache.hash(produce(n, seed)))
'''


def test_digest_stored_by_another_process_is_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "ac_cache_funcs.py").write_text(textwrap.dedent(CACHE_MODULE))
    script = tmp_path / "fill.py"
    script.write_text(textwrap.dedent(FILL_SCRIPT))
    location = tmp_path / "cache"
    child_digest = run_script(script, "random", str(location), "2000", "7").strip()
    assert len(child_digest) == 32

    monkeypatch.syspath_prepend(str(tmp_path))
    import ac_cache_funcs

    cached = Memory(location, mmap_mode="r").cache(ac_cache_funcs.produce)
    assert cached.check_call_in_cache(2000, 7)
    with monkeypatch.context() as patch:
        forbid_content_hashing(patch)
        m = cached(2000, 7)  # a hit: loading does not read the data either
        assert isinstance(m, np.memmap)
        assert m.mode == "r"
        assert hash(m) == child_digest
    assert hash(np.array(m)) == child_digest
    assert hash(ac_cache_funcs.produce(2000, 7)) == child_digest


# --- 3. Memory chains: step2(step1(x)) ---------------------------------------------------------

CALLS: collections.Counter = collections.Counter()


def step1(n: int) -> np.ndarray:
    CALLS["step1"] += 1
    return np.random.default_rng(n).random((n, 1000))


def step2(a: np.ndarray) -> np.ndarray:
    CALLS["step2"] += 1
    return a.sum(axis=0)


def test_chained_cached_steps_do_not_rehash_the_intermediate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = 2500  # step1 returns 20 MB
    nbytes = n * 1000 * 8
    memory = Memory(tmp_path / "cache", mmap_mode="r")
    s1, s2 = memory.cache(step1), memory.cache(step2)
    CALLS.clear()
    sizes = count_hashed_bytes(monkeypatch)

    out = s2(s1(n))
    assert CALLS == {"step1": 1, "step2": 1}
    # Storing step1's result reads it once; step2's key reuses that digest.
    assert nbytes <= sum(sizes) < nbytes + BLOCK_SIZE

    sizes.clear()
    intermediate = s1(n)
    again = s2(intermediate)
    assert CALLS == {"step1": 1, "step2": 1}  # both hits
    assert isinstance(intermediate, np.memmap)
    assert intermediate.mode == "r"
    np.testing.assert_array_equal(again, out)
    assert sum(sizes) < BLOCK_SIZE  # O(1) in the size of step1's output
    assert len(sizes) <= 2

    # The key is the content: a recomputed in-memory intermediate hits the same entry.
    sizes.clear()
    np.testing.assert_array_equal(s2(step1(n)), out)
    assert CALLS == {"step1": 2, "step2": 1}
    assert sum(sizes) >= nbytes


def _local_class(name):
    class Local:
        def __init__(self, value):
            self.value = value

    class Other:
        def __init__(self, value):
            self.value = value

    return Local if name == "Local" else Other


def test_local_classes_and_their_instances_hash_by_name_and_state():
    local, other = _local_class("Local"), _local_class("Other")
    assert hash(local) == hash(_local_class("Local"))
    assert hash(local) != hash(other)
    assert hash(local(1)) == hash(_local_class("Local")(1))
    assert hash(local(1)) != hash(local(2))
    assert hash(local(1)) != hash(other(1))


@pytest.mark.parametrize("n_rows", [64, 70])
def test_strided_views_hashed_in_aligned_slabs_match_their_copy(n_rows):
    # Rows of 256 KiB: 16 rows make one 4 MiB block, so slabs are copied and hashed in
    # threads; with 70 rows the last slab is partial.
    base = np.random.default_rng(n_rows).random((n_rows, 2**16))
    view = base[:, ::2]
    assert hashing._aligned_slab_rows(view) == 16
    copy = np.ascontiguousarray(view)
    raw = copy.tobytes()
    starts = range(0, len(raw), BLOCK_SIZE)
    expected = [hashing.block_digest(raw[i : i + BLOCK_SIZE]) for i in starts]
    assert block_digests(view) == expected
    assert hash(view) == hash(copy)
    changed = base.copy()
    changed[-1, -2] += 1.0
    assert hash(changed[:, ::2]) != hash(view)
