"""The cache key is a promise: two calls a function could tell apart never share an entry.

One regression test per false hit found by the adversarial review (issue 9), plus
what the fixes must not break (hits that should still happen).
"""

from __future__ import annotations

import functools
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

import arraycache
from arraycache import hash as ac_hash
from tests.conftest import run_python


def counted(memory: arraycache.Memory, func):
    """``memory.cache(func)`` and a list that grows by one at each real computation."""
    calls: list = []

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        calls.append(args)
        return func(*args, **kwargs)

    return memory.cache(wrapper), calls


# --- 3. a remembered digest holds for one exact layout ---------------------------------------


@pytest.fixture
def mmap_memory(location: Path) -> arraycache.Memory:
    return arraycache.Memory(location, mmap_mode="r", verbose=0)


def test_reshaped_hit_in_place_is_hashed_by_its_new_layout(mmap_memory) -> None:
    load = mmap_memory.cache(lambda n: np.arange(n, dtype=float))
    col_sums = mmap_memory.cache(lambda x: np.asarray(x).sum(axis=0))
    x = load(12)
    assert isinstance(x, np.memmap)
    assert col_sums(x) == 66.0
    x.shape = (3, 4)
    np.testing.assert_array_equal(col_sums(x), np.arange(12.0).reshape(3, 4).sum(axis=0))


def test_retyped_hit_in_place_is_hashed_by_its_new_dtype(mmap_memory) -> None:
    load = mmap_memory.cache(lambda n: np.arange(n, dtype=np.int64))
    describe = mmap_memory.cache(lambda x: (str(x.dtype), x.size))
    x = load(8)
    assert describe(x) == ("int64", 8)
    x.dtype = np.int32  # same bytes, twice as many items
    assert describe(x) == ("int32", 16)


def test_restrided_hit_in_place_is_hashed_by_its_new_strides(mmap_memory) -> None:
    load = mmap_memory.cache(lambda n: np.arange(n, dtype=float).reshape(4, 4))
    first_row = mmap_memory.cache(lambda x: np.array(x[0]))
    x = load(16)
    np.testing.assert_array_equal(first_row(x), [0, 1, 2, 3])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # numpy 2.4 deprecates it
        x.strides = (8, 32)  # now the transpose
    np.testing.assert_array_equal(first_row(x), [0, 4, 8, 12])


def test_reshaped_array_of_a_shelved_result_and_of_a_dict_result(mmap_memory) -> None:
    load = mmap_memory.cache(lambda n: {"x": np.arange(n, dtype=float)})
    col_sums = mmap_memory.cache(lambda x: np.asarray(x).sum(axis=0))
    shelved = load.call_and_shelve(12).get()["x"]
    assert col_sums(shelved) == 66.0
    shelved.shape = (3, 4)
    assert col_sums(shelved).shape == (4,)
    in_dict = load(12)["x"]
    assert col_sums(in_dict) == 66.0
    in_dict.shape = (2, 6)
    assert col_sums(in_dict).shape == (6,)


def test_whole_views_of_a_hit_keep_their_stored_digest(mmap_memory) -> None:
    """What the layout rule must not break: O(1) hashing of unchanged hits and views."""
    load = mmap_memory.cache(lambda n: np.arange(n, dtype=float))
    x = load(1000)
    from arraycache.hashing import stored_digest

    assert stored_digest(x) is not None
    assert stored_digest(x[:]) == stored_digest(x)
    assert stored_digest(np.asarray(x)) == stored_digest(x)
    assert stored_digest(x[1:]) is None  # a part: hashed by content
    assert ac_hash(x) == ac_hash(np.arange(1000, dtype=float))


PARALLEL_SCRIPT = """
import numpy as np
import arraycache
from arraycache import Parallel, delayed

memory = arraycache.Memory({cache!r}, mmap_mode="r", verbose=0)

@memory.cache
def load(n):
    return np.arange(n, dtype=float)

@memory.cache
def col_sums(x):
    with open({log!r}, "a") as f:
        f.write("c")
    return np.asarray(x).sum(axis=0)

def reshaped_sums(x, shape):
    x.shape = shape  # in place, on the worker's map of the cached array
    return col_sums(x).tolist()

if __name__ == "__main__":
    x = load(300_000)  # above max_nbytes: sent to workers as a file reference
    out = Parallel(n_jobs=2, max_nbytes="1M")(
        delayed(reshaped_sums)(x, shape) for shape in [(300_000,), (3, 100_000), (300_000,)]
    )
    out += [col_sums(i) for i in [1, 2, 3]]
    out += Parallel(n_jobs=2)(delayed(col_sums)(i) for i in [1, 2, 3])
    print(np.ndim(out[0]), len(out[1]), [float(v) for v in out[3:]])
"""


@pytest.mark.slow
def test_workers_key_like_the_caller_and_respect_layouts(tmp_path: Path) -> None:
    """A script-defined cached function called in workers hits the caller's entries
    (the worker cannot read its source), and a reshaped view of a hit sent to a
    worker is hashed by its own layout."""
    log = tmp_path / "calls.log"
    script = PARALLEL_SCRIPT.format(cache=str(tmp_path / "cache"), log=str(log))
    (tmp_path / "parallel_script.py").write_text(script)
    out = run_python("import runpy; runpy.run_path('parallel_script.py', "
                     "run_name='__main__')", tmp_path)
    assert out.split(maxsplit=2)[:2] == ["0", "100000"]
    assert "[1.0, 2.0, 3.0, 1.0, 2.0, 3.0]" in out
    # (300000,) and (3, 100000) once each, then 1, 2, 3 once each: 5 computations.
    assert log.read_text() == "c" * 5
    from tests.conftest import stop_workers_and_check

    stop_workers_and_check()


# --- 4, 5. functions: partials, signatures ---------------------------------------------------


def _combine(a, b):
    return a * 10 + b


def test_partials_with_different_bound_arguments_do_not_share_entries(memory) -> None:
    two = memory.cache(functools.partial(_combine, 2))
    three = memory.cache(functools.partial(_combine, 3))
    keyword = memory.cache(functools.partial(_combine, b=4))
    assert two(1) == 21
    assert three(1) == 31
    assert keyword(5) == 54
    assert two.check_call_in_cache(1) and three.check_call_in_cache(1)


def test_functions_with_equal_bytecode_and_other_signatures_hash_apart() -> None:
    assert ac_hash(lambda a, b: a - b) != ac_hash(lambda b, a: b - a)
    assert ac_hash(lambda *a: len(a)) != ac_hash(lambda a: len(a))
    assert ac_hash(lambda a, *, b: a) != ac_hash(lambda a, b: a)
    assert ac_hash(lambda a, /, b: a) != ac_hash(lambda a, b: a)
    assert ac_hash(lambda a, b: a - b) == ac_hash(lambda a, b: a - b)


def test_function_arguments_called_by_keyword(memory) -> None:
    apply = memory.cache(lambda f: f(a=10, b=1))
    assert apply(lambda a, b: a - b) == 9
    assert apply(lambda b, a: b - a) == -9


def test_exec_defined_cached_functions_with_renamed_parameters(memory) -> None:
    namespace: dict = {}
    exec("def f(a, b):\n    return a - b", namespace)
    first = memory.cache(namespace["f"])
    assert first(a=5, b=1) == 4
    exec("def f(b, a):\n    return b - a", namespace)
    second = memory.cache(namespace["f"])
    assert second(a=5, b=1) == -4


# --- 6, 8. arrays whose class or dtype metadata changes what a function sees ------------------


def test_ndarray_subclasses_hash_apart_from_plain_arrays() -> None:
    plain = np.array([[1, 2], [3, 4]])
    assert ac_hash(np.asmatrix(plain)) != ac_hash(plain)
    records = np.array([(1, 2.0)], dtype=[("a", "i4"), ("b", "f8")])
    assert ac_hash(records.view(np.recarray)) != ac_hash(records)
    assert ac_hash(np.memmap) != ac_hash(np.ndarray)


def test_matrix_argument_is_a_miss_against_the_plain_array(memory) -> None:
    square = memory.cache(lambda x: x * x)
    plain = np.array([[1, 2], [3, 4]])
    np.testing.assert_array_equal(square(plain), [[1, 4], [9, 16]])
    np.testing.assert_array_equal(square(np.asmatrix(plain)), [[7, 10], [15, 22]])


def test_masked_arrays_hash_by_data_mask_and_fill_value() -> None:
    data = np.arange(3, dtype="u1")
    first = np.ma.masked_array(data, mask=[0, 1, 0])
    assert ac_hash(first) != ac_hash(np.ma.masked_array(data, mask=[1, 0, 0]))
    assert ac_hash(first) != ac_hash(data)
    assert ac_hash(first) != ac_hash(np.ma.masked_array(data, mask=[0, 1, 0], fill_value=7))
    assert ac_hash(first) == ac_hash(np.ma.masked_array(data.copy(), mask=[0, 1, 0]))


def test_masked_argument_changes_the_result(memory) -> None:
    total = memory.cache(lambda x: int(x.sum()))
    data = np.arange(4, dtype="u1")
    assert total(np.ma.masked_array(data, mask=[0, 0, 0, 1])) == 3
    assert total(np.ma.masked_array(data, mask=[1, 0, 0, 0])) == 6
    assert total(data) == 6


def test_dtype_metadata_is_part_of_the_digest() -> None:
    enum = np.dtype("i1", metadata={"enum": {"A": 0, "B": 1}})
    other = np.dtype("i1", metadata={"enum": {"A": 1, "B": 0}})
    assert ac_hash(np.zeros(3, enum)) != ac_hash(np.zeros(3, "i1"))
    assert ac_hash(np.zeros(3, enum)) != ac_hash(np.zeros(3, other))
    nested = np.dtype([("a", enum), ("b", "f8")])
    assert ac_hash(np.zeros(2, nested)) != ac_hash(np.zeros(2, [("a", "i1"), ("b", "f8")]))
    # Insertion order of a metadata dict is not part of the value.
    same = np.dtype("i1", metadata={"enum": {"B": 1, "A": 0}})
    assert ac_hash(np.zeros(3, enum)) == ac_hash(np.zeros(3, same))


# --- hash() on values joblib code passes -----------------------------------------------------


def test_sets_and_dicts_of_unorderable_values_hash() -> None:
    from decimal import Decimal

    assert ac_hash({Decimal("NaN"), 1}) == ac_hash({1, Decimal("NaN")})
    assert ac_hash({Decimal("NaN"): 1, 2: 3}) != ac_hash({Decimal("NaN"): 1, 2: 4})
    nan = float("nan")
    assert ac_hash({nan, 1.0, 0.5}) == ac_hash({0.5, 1.0, nan})


# --- 1. code changed in place ----------------------------------------------------------------


def test_code_swapped_in_place_is_a_miss(memory) -> None:
    def f(x):
        return x + 1

    def g(x):
        return x + 2

    cached = memory.cache(f)
    assert cached(1) == 2
    f.__code__ = g.__code__
    assert cached(1) == 3
    f.__code__ = (lambda x: x + 1).__code__
    assert cached.check_call_in_cache(1)


@pytest.mark.slow
def test_ipython_autoreload_of_an_edited_module_is_a_miss(tmp_path: Path) -> None:
    module = tmp_path / "autoreloaded.py"
    module.write_text("def compute(x):\n    return x + 1\n")
    out = run_python(
        f"""
        import os, sys, time
        sys.path.insert(0, {str(tmp_path)!r})
        from IPython.core.interactiveshell import InteractiveShell
        shell = InteractiveShell.instance()
        shell.run_line_magic("load_ext", "autoreload")
        shell.run_line_magic("autoreload", "2")
        shell.run_cell("import arraycache, autoreloaded")
        shell.run_cell("memory = arraycache.Memory({str(tmp_path / 'cache')!r}, verbose=0)")
        shell.run_cell("cached = memory.cache(autoreloaded.compute)")
        shell.run_cell("first = cached(1)")
        with open({str(module)!r}, "w") as f:
            f.write("def compute(x):\\n    return x + 100\\n")
        later = time.time() + 5
        os.utime({str(module)!r}, (later, later))
        shell.run_cell("second = cached(1)")  # autoreload runs before the cell
        print(shell.user_ns["first"], shell.user_ns["second"])
        """,
        tmp_path,
    )
    assert out.split() == ["2", "101"]


# --- 2. scripts are told apart by their path -------------------------------------------------

SCRIPT = """
import sys
import arraycache
memory = arraycache.Memory({cache!r}, verbose=0)
DATA = {data}  # a mutable global: not part of the code digest

@memory.cache
def total(n):
    return sum(DATA) * n

print(total(1), total.check_call_in_cache(1))
"""


def test_copies_of_a_script_do_not_share_entries(tmp_path: Path) -> None:
    cache = str(tmp_path / "cache")
    (tmp_path / "exp1.py").write_text(SCRIPT.format(cache=cache, data=[1, 2]))
    (tmp_path / "exp2.py").write_text(SCRIPT.format(cache=cache, data=[30, 40]))
    assert run_python("import runpy; runpy.run_path('exp1.py', run_name='__main__')",
                      tmp_path).split() == ["3", "True"]
    assert run_python("import runpy; runpy.run_path('exp2.py', run_name='__main__')",
                      tmp_path).split() == ["70", "True"]
    # The same script in a new process hits its own entry.
    assert run_python("import runpy; runpy.run_path('exp1.py', run_name='__main__')",
                      tmp_path).split() == ["3", "True"]
    folders = sorted(p.name for p in (tmp_path / "cache").iterdir()
                     if p.is_dir() and not p.name.startswith("."))
    assert len(folders) == 2 and all("exp" in f for f in folders), folders


# --- 10, 12. the user code a cached function calls -------------------------------------------

LIBRARY = '''
import numpy as np
SCALE = {scale}

def helper(x):
    return x * SCALE + {offset}

class Normaliser:
    def apply(self, x):
        return self.center(x) / {divisor}

    def center(self, x):
        return x - 1
'''

USER = """
import sys
sys.path.insert(0, {path!r})
import arraycache, mylib
memory = arraycache.Memory({cache!r}, verbose=0)

def step(x):
    return mylib.helper(x) + mylib.Normaliser().apply(x)

@memory.cache
def features(x):
    with open({log!r}, "a") as f:
        f.write("c")
    return step(x)

print(features(10))
"""


@pytest.mark.slow
def test_editing_a_helper_is_a_miss_and_reverting_it_hits_again(tmp_path: Path) -> None:
    log = tmp_path / "calls.log"
    user = USER.format(path=str(tmp_path), cache=str(tmp_path / "cache"), log=str(log))

    def run(scale: int, offset: int, divisor: int) -> float:
        (tmp_path / "mylib.py").write_text(LIBRARY.format(scale=scale, offset=offset,
                                                          divisor=divisor))
        return float(run_python(user, tmp_path))

    def computations() -> int:
        return len(log.read_text()) if log.exists() else 0

    assert run(2, 0, 1) == 29  # 10*2 + 0 + (10-1)/1
    assert run(2, 0, 1) == 29 and computations() == 1  # a hit
    assert run(2, 5, 1) == 34 and computations() == 2  # helper body edited
    assert run(3, 0, 1) == 39 and computations() == 3  # module constant edited
    assert run(2, 0, 3) == 23 and computations() == 4  # a method of a class edited
    assert run(2, 0, 1) == 29 and computations() == 4  # all reverted: the first entry


def test_rebinding_a_helper_or_constant_is_a_miss(memory) -> None:
    namespace: dict = {"memory": memory}
    exec(textwrap.dedent("""
        OFFSET = 1
        def helper(x):
            return x + OFFSET
        @memory.cache
        def f(x):
            return helper(x) * 2
    """), namespace)
    f = namespace["f"]
    assert f(1) == 4
    namespace["OFFSET"] = 2
    assert f(1) == 6
    exec("def helper(x):\n    return x - OFFSET", namespace)
    assert f(1) == -2
    namespace["OFFSET"] = 1
    exec("def helper(x):\n    return x + OFFSET", namespace)
    assert f.check_call_in_cache(1)


def test_closure_values_of_a_cached_function_are_in_its_key(memory) -> None:
    def make(k):
        @memory.cache
        def scaled(x):
            return x * k

        return scaled

    assert make(2)(5) == 10
    assert make(3)(5) == 15
    assert make(2).check_call_in_cache(5)


def test_code_digest_lists_what_it_covers() -> None:
    from arraycache.codedigest import CodeVersion

    def inner(x):
        return x

    def outer(x):
        return inner(x) + len(str(x)) + int(np.sum(x))

    names = CodeVersion(outer).functions
    assert any(n.endswith("outer") for n in names)
    assert any(n.endswith("inner") for n in names)
    assert not any(n.startswith(("numpy", "builtins")) for n in names)


def test_unhashable_closure_value_is_reported_not_fatal(memory) -> None:
    import threading

    lock = threading.Lock()

    def locked(x):
        with lock:
            return x + 1

    cached = memory.cache(locked)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cached(1) == 2
        assert cached(1) == 2
    assert any("lock" in str(w.message) for w in caught)


# --- clearing is a miss, not damage ----------------------------------------------------------


def test_entry_cleared_between_lookup_and_load_is_a_quiet_miss(memory, monkeypatch) -> None:
    from arraycache import persistence

    cached = memory.cache(lambda n: np.arange(n) * 2)
    np.testing.assert_array_equal(cached(5), np.arange(5) * 2)
    real_load = persistence.load

    def load_after_clear(*args, **kwargs):
        memory.clear(warn=False)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(persistence, "load", load_after_clear)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(cached(5), np.arange(5) * 2)


def test_record_padding_is_not_part_of_the_key(memory) -> None:
    """Padding holds garbage that numpy does not copy: equal records must hit."""
    padded = np.dtype({"names": ["a", "b"], "formats": ["u1", "<f8"], "offsets": [0, 8],
                       "itemsize": 16})
    first = np.zeros(4, padded)
    first.view(np.uint8)[1::16] = 0xAB  # garbage in the padding
    second = np.zeros(4, padded)
    assert first.tobytes() != second.tobytes()
    assert ac_hash(first) == ac_hash(second) == ac_hash(first.copy())
    assert ac_hash(first[::2]) == ac_hash(second[::2])
    second["a"][0] = 1
    assert ac_hash(first) != ac_hash(second)
    calls = []
    total = memory.cache(lambda x: calls.append(1) or int(x["a"].sum()))
    assert total(first) == 0 and total(np.zeros(4, padded)) == 0
    assert len(calls) == 1


def test_c_types_of_one_size_hash_apart() -> None:
    assert ac_hash(np.longlong(3)) != ac_hash(np.int64(3))
    assert ac_hash(np.zeros(3, np.longlong)) != ac_hash(np.zeros(3, np.int64))
    assert ac_hash(np.zeros(3, np.int64)) == ac_hash(np.zeros(3, "<i8"))


def test_titled_fields_with_metadata_hash() -> None:
    titled = np.dtype({"names": ["a"], "formats": [np.dtype("i1", metadata={"k": 1})],
                       "titles": ["title"]})
    assert ac_hash(np.zeros(2, titled)) != ac_hash(np.ones(2, titled))


WRAPPED_IN_WORKER = """
import arraycache

def load(n):
    with open({log!r}, "a") as f:
        f.write("c")
    return n * 2

def in_worker(n):
    return arraycache.Memory({cache!r}, verbose=0).cache(load)(n)

if __name__ == "__main__":
    cached = arraycache.Memory({cache!r}, verbose=0).cache(load)
    print([cached(n) for n in (1, 2)],
          arraycache.Parallel(n_jobs=2)(arraycache.delayed(in_worker)(n) for n in (1, 2, 1)))
"""


@pytest.mark.slow
def test_function_of_a_script_cached_inside_workers_hits_the_callers_entries(tmp_path) -> None:
    """cloudpickle rebuilds a script's functions in workers without their file name: the
    workers learn the script from the process that started them."""
    log = tmp_path / "calls.log"
    (tmp_path / "wrapped.py").write_text(
        WRAPPED_IN_WORKER.format(cache=str(tmp_path / "cache"), log=str(log)))
    out = run_python("import runpy; runpy.run_path('wrapped.py', run_name='__main__')",
                     tmp_path)
    assert out.strip() == "[2, 4] [2, 4, 2]"
    assert log.read_text() == "cc"
    from tests.conftest import stop_workers_and_check

    stop_workers_and_check()
