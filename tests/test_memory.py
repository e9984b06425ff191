"""Memory's joblib surface, function identity, invalidation and bad input."""

from __future__ import annotations

import pickle
import threading

import numpy as np
import pytest

import arraycache
from arraycache import expires_after
from arraycache.memorized import NotMemorizedResult

from .conftest import run_python


def test_hit_after_miss_and_argument_spellings(memory):
    calls = []

    @memory.cache
    def scale(x, factor=2, *, offset=0):
        calls.append(1)
        return np.asarray(x) * factor + offset

    first = scale([1, 2, 3])
    np.testing.assert_array_equal(scale([1, 2, 3]), first)
    np.testing.assert_array_equal(scale([1, 2, 3], 2), first)
    np.testing.assert_array_equal(scale(x=[1, 2, 3], factor=2, offset=0), first)
    assert len(calls) == 1
    scale([1, 2, 3], factor=3)
    scale([1, 2, 4])
    assert len(calls) == 3


def test_var_args_and_var_kwargs_are_part_of_the_key(memory):
    calls = []

    @memory.cache
    def total(*values, **weights):
        calls.append(1)
        return sum(values) + sum(weights.values())

    assert total(1, 2, a=3) == 6
    assert total(1, 2, a=3) == 6
    assert total(1, 2, b=3) == 6
    assert total(2, 1, a=3) == 6
    assert len(calls) == 3


def test_decorator_with_arguments_and_ignore(memory):
    calls = []

    @memory.cache(ignore=["verbose"])
    def work(x, verbose=0):
        calls.append(verbose)
        return x + 1

    assert work(1, verbose=0) == 2
    assert work(1, verbose=5) == 2
    assert calls == [0]
    with pytest.raises(ValueError, match="nope"):
        memory.cache(lambda x: x, ignore=["nope"])


def test_location_none_computes_without_caching():
    memory = arraycache.Memory(None)
    calls = []

    @memory.cache
    def f(x):
        calls.append(x)
        return x * 2

    assert f(2) == 4 and f(2) == 4
    assert calls == [2, 2]
    assert isinstance(f, arraycache.NotMemorizedFunc)
    shelved = f.call_and_shelve(3)
    assert isinstance(shelved, NotMemorizedResult) and shelved.get() == 6
    assert f.check_call_in_cache(3) is False


def test_call_forces_computation_and_returns_metadata(memory):
    calls = []

    @memory.cache
    def f(x):
        calls.append(x)
        return x + 1

    assert f(1) == 2
    output, metadata = f.call(1)
    assert output == 2 and len(calls) == 2
    assert metadata["duration"] >= 0 and "x" in metadata["input_args"]
    assert f(1) == 2 and len(calls) == 2


def test_call_and_shelve_and_memorized_result(memory, location):
    calls = []

    @memory.cache
    def f(n):
        calls.append(n)
        return np.arange(n)

    result = f.call_and_shelve(5)
    assert isinstance(result, arraycache.MemorizedResult)
    np.testing.assert_array_equal(result.get(), np.arange(5))
    # A reference pickles and loads elsewhere.
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(result)).get(), np.arange(5))
    assert f.call_and_shelve(5).get().tolist() == list(range(5))
    assert calls == [5]
    result.clear()
    with pytest.raises(KeyError):
        result.get()
    assert not f.check_call_in_cache(5)


def test_check_call_in_cache_and_clear(memory):
    calls = []

    @memory.cache
    def f(x):
        calls.append(x)
        return x

    assert not f.check_call_in_cache(1)
    f(1)
    assert f.check_call_in_cache(1) and f.check_call_in_cache(x=1)
    assert calls == [1]  # checking does not run the function
    f.clear(warn=False)
    assert not f.check_call_in_cache(1)
    f(1)
    memory.clear(warn=False)
    assert not f.check_call_in_cache(1)
    f(1)
    assert calls == [1, 1, 1]


def test_cache_validation_callback(memory):
    calls = []

    @memory.cache(cache_validation_callback=expires_after(seconds=-1))
    def always_stale(x):
        calls.append(x)
        return x

    always_stale(1)
    always_stale(1)
    assert calls == [1, 1]

    @memory.cache(cache_validation_callback=lambda meta: meta["duration"] >= 0)
    def fresh(x):
        calls.append(x)
        return x

    fresh(2)
    fresh(2)
    assert calls == [1, 1, 2]


def test_verbose_messages_look_like_joblib(location, capsys):
    memory = arraycache.Memory(location, verbose=1)

    @memory.cache
    def announce(x):
        return x

    announce(3)
    out = capsys.readouterr().out
    assert "[Memory] Calling" in out and "announce(x=3)" in out
    assert out.strip().splitlines()[-1].endswith("0.0min")
    announce(3)
    assert capsys.readouterr().out == ""


def test_memory_and_memorized_functions_pickle(memory):
    clone = pickle.loads(pickle.dumps(memory))
    assert clone.location == memory.location
    cached = memory.cache(np.cumsum)
    np.testing.assert_array_equal(cached([1, 2, 3]), [1, 3, 6])
    restored = pickle.loads(pickle.dumps(cached))
    assert restored.check_call_in_cache([1, 2, 3])


def test_memory_eval_and_reduce_size(location):
    memory = arraycache.Memory(location, verbose=0)
    assert memory.eval(np.add, 1, 2) == 3
    assert memory.cache(np.add).check_call_in_cache(1, 2)
    produce = memory.cache(lambda i: np.full(10_000, i, dtype=np.float64))
    for i in range(5):
        produce(i)
    memory.reduce_size(items_limit=2)
    kept = [i for i in range(5) if produce.check_call_in_cache(i)]
    assert kept == [3, 4]  # the least recently used went first
    memory.reduce_size(bytes_limit="1K")
    assert not any(produce.check_call_in_cache(i) for i in range(5))


def test_changed_function_body_is_a_miss_and_old_entries_stay(location):
    code = """
    import arraycache
    memory = arraycache.Memory({loc!r}, verbose=0)
    @memory.cache
    def f(x):
        print("computing", flush=True)
        return x {op} 1
    print(f(10))
    """
    out1 = run_python(code.format(loc=str(location), op="+"), location.parent)
    out2 = run_python(code.format(loc=str(location), op="+"), location.parent)
    out3 = run_python(code.format(loc=str(location), op="*"), location.parent)
    out4 = run_python(code.format(loc=str(location), op="+"), location.parent)
    assert out1 == "computing\n11\n"
    assert out2 == "11\n"  # another process hits (no "computing")
    assert out3 == "computing\n10\n"  # new body: a miss
    assert out4 == "11\n"  # reverting gets the old result back


def test_second_process_hits_array_results(location, tmp_path):
    code = f"""
    import numpy as np, arraycache, sys
    memory = arraycache.Memory({str(location)!r}, mmap_mode="r", verbose=0)
    counter = {str(tmp_path / "counter")!r}
    @memory.cache
    def features(n, seed):
        open(counter, "a").write("x")
        return np.random.default_rng(seed).random((n, 8))
    out = features(1000, seed=3)
    print(type(out).__name__, float(out.sum()))
    """
    first = run_python(code, tmp_path)
    second = run_python(code, tmp_path)
    assert (tmp_path / "counter").read_text() == "x"
    assert first == second
    assert first.startswith("memmap ")
    expected = np.random.default_rng(3).random((1000, 8)).sum()
    assert float(first.split()[1]) == pytest.approx(expected)


def test_lambdas_and_nested_functions(memory):
    def make(offset):
        @memory.cache
        def nested(x):
            return x + offset

        return nested

    square = memory.cache(lambda x: x * x)
    assert square(3) == 9 and square(3) == 9
    assert make(1)(1) == 2
    assert square.check_call_in_cache(3)


def test_functions_in_notebook_cells_survive_restarts_and_run_in_workers(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    location = tmp_path / "cache"
    counter = tmp_path / "counter"
    cells = [
        "import numpy as np, arraycache\n"
        f"memory = arraycache.Memory({str(location)!r}, mmap_mode='r', verbose=0)",
        "@memory.cache\n"
        "def features(n):\n"
        f"    open({str(counter)!r}, 'a').write('x')\n"
        "    return np.arange(n) ** 2",
        "out = features(100)\nprint(type(out).__name__, int(out.sum()))",
        # A function defined in a cell runs in loky worker processes.
        "def cube(x):\n    return x ** 3\n"
        "print(arraycache.Parallel(n_jobs=2)(arraycache.delayed(cube)(i) for i in range(4)))",
    ]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    outputs = []
    for _ in range(2):  # two kernels: a restart in between
        executed = nbclient.NotebookClient(
            nbformat.from_dict(notebook), timeout=120, kernel_name="python3"
        ).execute()
        outputs.append([cell.outputs[0]["text"] for cell in executed.cells[2:]])
    expected = [f"memmap {int((np.arange(100) ** 2).sum())}\n", "[0, 1, 8, 27]\n"]
    assert outputs[0] == outputs[1] == expected
    assert counter.read_text() == "x"


def test_unhashable_argument_names_the_argument(memory):
    @memory.cache
    def consume(data, lock=None):
        return 1

    with pytest.raises(arraycache.UnhashableArgumentError, match=r"'data'.*generator"):
        consume(i for i in range(3))
    with pytest.raises(TypeError, match="'lock'"):
        consume([1], lock=threading.Lock())
    with open(__file__) as handle, pytest.raises(TypeError, match="'data'"):
        consume(handle)
    with pytest.raises(TypeError):
        consume()  # missing argument: the signature's own error


def test_unstorable_result_warns_and_returns_the_value(memory, location):
    lock = threading.Lock()

    @memory.cache
    def make_lock():
        return {"lock": lock, "data": np.ones(10_000)}

    with pytest.warns(arraycache.UnstorableResultWarning, match="could not be cached"):
        result = make_lock()
    assert result["lock"] is lock
    calls = []

    @memory.cache
    def unstorable_counted():
        calls.append(1)
        return threading.Lock()

    with pytest.warns(arraycache.UnstorableResultWarning):
        shelved = unstorable_counted.call_and_shelve()
    assert isinstance(shelved.get(), type(lock)) and calls == [1]  # computed once
    leftovers = [p for p in location.rglob("*") if ".tmp-" in p.name]
    assert leftovers == []
    assert not make_lock.check_call_in_cache()


def test_bad_constructor_arguments(location):
    with pytest.raises(ValueError, match="mmap_mode"):
        arraycache.Memory(location, mmap_mode="rw")
    with pytest.raises(TypeError, match="backend"):
        arraycache.Memory(location, backend="s3-please")
    with pytest.raises(TypeError, match="location"):
        arraycache.Memory(42)


class Scaler:
    def __init__(self, factor):
        self.factor = factor

    def apply(self, x):
        return x * self.factor


def test_bound_methods_include_their_instance_in_the_key(memory):
    double, triple = memory.cache(Scaler(2).apply), memory.cache(Scaler(3).apply)
    assert double(5) == 10
    assert triple(5) == 15  # not double's cached 10
    assert memory.cache(Scaler(2).apply).check_call_in_cache(5)  # an equal instance hits
