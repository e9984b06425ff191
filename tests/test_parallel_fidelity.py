"""Parallel as joblib users know it: backends (multiprocessing, joblib's own), worker
initializers, timeouts, n_jobs, validation and warnings (real processes; joblib as the
reference where the two can be run side by side)."""

from __future__ import annotations

import importlib
import multiprocessing
import os
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import joblib
import numpy as np
import pytest
from joblib import parallel as joblib_parallel
from joblib._parallel_backends import LokyBackend as JoblibLoky
from joblib._parallel_backends import SequentialBackend as JoblibSequential
from joblib._parallel_backends import ThreadingBackend as JoblibThreading
from joblib.externals.loky import get_reusable_executor as joblib_executor

import arraycache
from arraycache.parallel import (
    BackendParameterError,
    LokyBackend,
    Parallel,
    ParallelTimeoutError,
    ThreadingBackend,
    WorkerDiedError,
    cpu_count,
    delayed,
    effective_n_jobs,
    parallel_backend,
    parallel_config,
    register_parallel_backend,
)
from arraycache.parallel._config import BACKENDS
from arraycache.parallel._loky import get_reusable_executor

from .conftest import stop_workers_and_check, worker_processes


def non_loky_children():
    """Child processes other than loky's (multiprocessing pools, managers)."""
    found = []
    for process in worker_processes():
        try:
            if "loky" not in " ".join(process.cmdline()):
                found.append(process)
        except Exception:  # gone meanwhile
            pass
    return found


@pytest.fixture(scope="module", autouse=True)
def _no_leftover_workers():
    """Shut loky's workers (ours and joblib's) down after this module; none may be left."""
    yield
    joblib_executor().shutdown(wait=True, kill_workers=True)
    stop_workers_and_check()


@pytest.fixture
def registered():
    """Register backends for one test; they are removed afterwards."""
    names = []

    def register(name, factory):
        names.append(name)
        register_parallel_backend(name, factory)

    yield register
    for name in names:
        BACKENDS.pop(name, None)


@pytest.fixture
def manager():
    with multiprocessing.Manager() as m:
        yield m


def square(x):
    return x * x


def pid_after(seconds):
    time.sleep(seconds)
    return os.getpid()


def sleep_then(seconds, value):
    time.sleep(seconds)
    return value


def describe(a):
    """What a worker received: its type, and a digest of its values."""
    return type(a).__name__, float(a.sum())


def double(a):
    return a * 2


def fail_on(i, bad):
    if i == bad:
        raise KeyError(f"task {i} is bad")
    return i


def suicide(i):
    if i == 1:
        os.kill(os.getpid(), 9)
    time.sleep(0.05)
    return i


# --- backend="multiprocessing" ---------------------------------------------------------------


def test_multiprocessing_backend_runs_in_other_processes_and_shares_arrays():
    pids = Parallel(2, backend="multiprocessing")(delayed(pid_after)(0.02) for _ in range(6))
    assert os.getpid() not in pids
    a = np.arange(300_000, dtype=np.float64)
    # Big arguments arrive as memmaps, as with loky and as joblib's multiprocessing backend.
    ours = Parallel(2, backend="multiprocessing")(delayed(describe)(a) for _ in range(3))
    theirs = joblib.Parallel(2, backend="multiprocessing")(
        joblib.delayed(describe)(a) for _ in range(3)
    )
    assert ours == theirs == [("memmap", float(a.sum()))] * 3
    # Big results come back through files, mapped in the caller.
    results = Parallel(2, backend="multiprocessing")(delayed(double)(a) for _ in range(2))
    for result in results:
        assert isinstance(result, np.memmap)
        np.testing.assert_array_equal(result, a * 2)
    # The pool lives for the call only: no worker is left behind.
    assert non_loky_children() == []


def test_multiprocessing_context_as_backend_and_in_parallel_config():
    spawn = multiprocessing.get_context("spawn")
    a = np.ones(200_000)
    assert Parallel(2, backend=spawn)(delayed(describe)(a) for _ in range(2)) == [
        ("memmap", 200_000.0)
    ] * 2
    with parallel_config(backend="multiprocessing", n_jobs=2):
        p = Parallel()
        assert p._backend.name == "MultiprocessingBackend"
        assert p(delayed(square)(i) for i in range(5)) == [0, 1, 4, 9, 16]
    with parallel_config(backend=spawn, n_jobs=2):
        assert Parallel()._backend.context is spawn


def test_multiprocessing_managed_pool_is_reused_and_errors_keep_their_type():
    with Parallel(2, backend="multiprocessing", return_as="generator") as parallel:
        first = set(parallel(delayed(pid_after)(0.05) for _ in range(6)))
        second = set(parallel(delayed(pid_after)(0.05) for _ in range(6)))
        assert first == second and os.getpid() not in first
        with pytest.raises(KeyError, match="task 3 is bad"):
            list(parallel(delayed(fail_on)(i, 3) for i in range(8)))
        # Still usable after the error.
        assert list(parallel(delayed(square)(i) for i in range(4))) == [0, 1, 4, 9]


def test_multiprocessing_dead_worker_is_reported_and_timeout_stops_workers():
    with pytest.raises(WorkerDiedError, match="worker process died"):
        Parallel(2, backend="multiprocessing")(delayed(suicide)(i) for i in range(4))
    with pytest.raises(ParallelTimeoutError):
        Parallel(2, backend="multiprocessing", timeout=0.3)(
            delayed(sleep_then)(30, i) for i in range(4)
        )
    # The sleeping workers were killed, not waited for.
    assert non_loky_children() == []
    assert Parallel(2, backend="multiprocessing")(delayed(square)(i) for i in range(3)) == [
        0, 1, 4,
    ]


# --- backends written for joblib -------------------------------------------------------------


class CountingThreads(JoblibThreading):
    """A joblib backend as a third party writes one: a subclass of joblib's class."""

    submitted = 0

    def submit(self, func, callback=None):
        type(self).submitted += 1
        return super().submit(func, callback=callback)


class InlineForJoblib(JoblibSequential):
    pass


def test_joblib_backend_subclasses_run_through_the_adapter(registered, capsys):
    registered("counting-threads", CountingThreads)
    CountingThreads.submitted = 0
    with parallel_config("counting-threads", n_jobs=2):
        out = Parallel(verbose=1)(delayed(pid_after)(0.01) for _ in range(6))
    assert out == [os.getpid()] * 6
    assert CountingThreads.submitted >= 1
    assert "Using backend CountingThreads with 2 concurrent workers." in capsys.readouterr().err
    registered("inline-for-joblib", InlineForJoblib)
    assert Parallel(2, backend="inline-for-joblib")(delayed(square)(i) for i in range(4)) == [
        0, 1, 4, 9,
    ]
    # An instance works too, as in joblib.
    assert Parallel(2, backend=JoblibThreading())(delayed(square)(i) for i in range(3)) == [
        0, 1, 4,
    ]
    with pytest.raises(KeyError, match="task 2 is bad"):
        Parallel(2, backend=CountingThreads())(delayed(fail_on)(i, 2) for i in range(5))


def test_joblibs_loky_backend_runs_with_joblibs_memmapping(registered):
    registered("joblib-loky", JoblibLoky)
    a = np.arange(500_000, dtype=np.float64)
    ours = Parallel(2, backend="joblib-loky")(delayed(describe)(a) for _ in range(3))
    theirs = joblib.Parallel(2, backend="loky")(joblib.delayed(describe)(a) for _ in range(3))
    assert ours == theirs == [("memmap", float(a.sum()))] * 3
    pids = Parallel(2, backend="joblib-loky")(delayed(pid_after)(0.05) for _ in range(4))
    assert os.getpid() not in pids
    with pytest.raises(KeyError, match="task 1 is bad") as info:
        Parallel(2, backend="joblib-loky")(delayed(fail_on)(i, 1) for i in range(4))
    assert "raised in a worker, in task 1" in "".join(info.value.__notes__)


def test_backend_registered_with_joblib_is_found_by_name():
    name = "registered-in-joblib"
    joblib.register_parallel_backend(name, CountingThreads)
    try:
        assert Parallel(2, backend=name)(delayed(square)(i) for i in range(3)) == [0, 1, 4]
    finally:
        joblib_parallel.BACKENDS.pop(name)


@pytest.mark.skipif(
    __import__("importlib").util.find_spec("distributed") is not None,
    reason="dask.distributed is installed",
)
@pytest.mark.parametrize("context", [parallel_config, parallel_backend])
def test_dask_backend_without_distributed_says_what_to_install(context):
    with pytest.raises(ValueError, match=r"pip install 'arraycache\[dask\]'"):
        context("dask")
    with pytest.raises(ValueError, match="Please install dask"):
        Parallel(backend="dask")


@pytest.mark.slow
def test_import_arraycache_neither_imports_joblib_nor_breaks_its_loky(tmp_path):
    script = tmp_path / "order.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            import arraycache
            assert "joblib" not in sys.modules, "arraycache imported joblib"
            import numpy as np
            import joblib
            import arraycache.parallel._loky  # imported again: no effect either

            def describe(a):
                return type(a).__name__

            if __name__ == "__main__":
                a = np.ones(500_000)
                print(joblib.Parallel(2)(joblib.delayed(describe)(a) for _ in range(2)))
                print(arraycache.Parallel(2)(arraycache.delayed(describe)(a) for _ in range(2)))
            """
        )
    )
    # joblib first, then arraycache: joblib's loky must keep its start method.
    other = tmp_path / "joblib_first.py"
    first_lines = (
        'import arraycache\nassert "joblib" not in sys.modules, "arraycache imported joblib"'
    )
    assert first_lines in script.read_text()
    other.write_text(script.read_text().replace(first_lines, "import joblib\nimport arraycache"))
    for path in (script, other):
        proc = subprocess.run(
            [sys.executable, str(path)], capture_output=True, text=True, timeout=120,
            cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == ["['memmap',", "'memmap']"] * 2
        # joblib's resource tracker saw every memmap released: nothing "leaked".
        assert "leaked" not in proc.stderr and "KeyError" not in proc.stderr, proc.stderr


# --- initializer / initargs ------------------------------------------------------------------

_INITIALIZED = []


def remember(value):
    _INITIALIZED.append(value)


def initialized_then_wait(barrier):
    barrier.wait(timeout=60)  # every worker takes one task
    return os.getpid(), list(_INITIALIZED)


def initialized():
    time.sleep(0.01)
    return os.getpid(), list(_INITIALIZED)


@pytest.mark.parametrize("backend", ["loky", "multiprocessing"])
def test_initializer_runs_in_every_worker(backend):
    out = Parallel(2, backend=backend, initializer=remember, initargs=("p",))(
        delayed(initialized)() for _ in range(8)
    )
    assert {values[-1] for _, values in out} == {"p"}
    with parallel_config(backend=backend, n_jobs=2, initializer=remember, initargs=("c",)):
        out = Parallel()(delayed(initialized)() for _ in range(8))
    assert {values[-1] for _, values in out} == {"c"}
    # Not in the caller: tasks ran in workers.
    assert "p" not in _INITIALIZED and "c" not in _INITIALIZED


def test_initializer_in_threads_and_not_inline():
    local = threading.local()

    def mark(value):
        local.value = value

    def read():
        time.sleep(0.01)
        return getattr(local, "value", None)

    assert set(Parallel(2, backend="threading", initializer=mark, initargs=(7,))(
        delayed(read)() for _ in range(6)
    )) == {7}
    # One job runs inline: no worker, no initializer, as in joblib.
    assert Parallel(1, initializer=mark, initargs=(8,))(delayed(read)() for _ in range(2)) == [
        None, None,
    ]


def _distinct_workers(lib, manager, same_args):
    pids = set()
    args = ("same",)
    for i in range(2):
        barrier = manager.Barrier(2)
        if not same_args:
            args = (f"call {i}",)
        out = lib.Parallel(n_jobs=2, backend="loky", initializer=remember, initargs=args)(
            lib.delayed(initialized_then_wait)(barrier) for _ in range(2)
        )
        assert all(values[-1] == args[0] for _, values in out)
        pids |= {pid for pid, _ in out}
    return len(pids)


@pytest.mark.slow
def test_loky_workers_are_reused_only_with_the_same_initializer(manager):
    # joblib's rule: same initializer and arguments, same workers; else new ones.
    assert _distinct_workers(arraycache, manager, same_args=True) == 2
    assert _distinct_workers(arraycache, manager, same_args=False) == 4
    assert _distinct_workers(joblib, manager, same_args=True) == 2
    assert _distinct_workers(joblib, manager, same_args=False) == 4


# --- timeout ---------------------------------------------------------------------------------


def test_timeout_error_is_caught_as_joblib_users_catch_it():
    for catch in (multiprocessing.TimeoutError, TimeoutError):
        with pytest.raises(catch, match=r"did not finish within timeout=0\.3"):
            Parallel(2, backend="threading", timeout=0.3)(
                delayed(sleep_then)(s, s) for s in (1.2, 0.01, 0.01)
            )
    assert issubclass(ParallelTimeoutError, multiprocessing.TimeoutError)


@pytest.mark.slow
def test_timeout_counts_running_time_not_queue_or_worker_start():
    # Fresh workers: starting them (and importing arraycache there) takes a while.  The
    # tasks call a builtin: no module of the task to import in the worker (importing
    # what a batch needs counts as running it).
    get_reusable_executor().shutdown(wait=True, kill_workers=True)
    tasks = [delayed(time.sleep)(0.6) for i in range(6)]
    # Each task runs 0.6 s < 1 s, but most wait longer than that in the queue.
    assert Parallel(2, timeout=1)(tasks) == [None] * 6
    assert Parallel(2, timeout=1, pre_dispatch="all")(tasks) == [None] * 6
    assert Parallel(2, backend="threading", timeout=1, pre_dispatch="all")(tasks) == [None] * 6
    assert Parallel(2, backend="multiprocessing", timeout=1)(tasks) == [None] * 6
    # Many short tasks, batched automatically.
    short = [delayed(sleep_then)(0.005, i) for i in range(400)]
    assert Parallel(2, timeout=2)(short) == list(range(400))
    # joblib completes the queued case too, once its workers are up (it counts from
    # dispatch, so a cold start would fail it).
    joblib.Parallel(2)(joblib.delayed(abs)(i) for i in range(4))
    assert joblib.Parallel(2, timeout=1)(tasks) == [None] * 6


def test_timeout_still_fires_for_a_long_task():
    with pytest.raises(ParallelTimeoutError, match="task 1 did not finish"):
        Parallel(2, timeout=0.5, batch_size=1)(
            delayed(sleep_then)(s, s) for s in (0.01, 20, 0.01, 0.01)
        )
    assert Parallel(2)(delayed(square)(i) for i in range(3)) == [0, 1, 4]


def test_timeout_with_one_job_warns_as_joblib():
    with pytest.warns(UserWarning) as ours:
        Parallel(n_jobs=1, timeout=1)(delayed(square)(i) for i in range(5))
    with pytest.warns(UserWarning) as theirs:
        joblib.Parallel(n_jobs=1, timeout=1)(joblib.delayed(square)(i) for i in range(5))
    assert len(ours) == 1
    assert str(ours[0].message) == str(theirs[0].message)
    assert "'SequentialBackend' does not support timeout" in str(ours[0].message)


# --- n_jobs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("lib", [arraycache, joblib], ids=["arraycache", "joblib"])
def test_n_jobs_is_resolved_when_parallel_is_made(lib):
    with lib.parallel_config(n_jobs=3):
        made_inside = lib.Parallel()
        assert lib.Parallel(n_jobs=None).n_jobs == 3
        with lib.parallel_config(n_jobs=None):
            assert lib.Parallel().n_jobs == 1  # reset to the default
            assert lib.effective_n_jobs(None) == 1
        with lib.parallel_config(verbose=0):
            assert lib.Parallel().n_jobs == 3  # not set: inherited
    assert made_inside.n_jobs == 3
    with lib.parallel_config(backend="loky", n_jobs=2):
        # require='sharedmem' replaces the process backend by threads, and its n_jobs.
        assert lib.Parallel(require="sharedmem").n_jobs == 1
        assert lib.Parallel(n_jobs=3, require="sharedmem").n_jobs == 3
        assert lib.Parallel(prefer="threads").n_jobs == 2
    with lib.parallel_config(backend="threading", n_jobs=2):
        assert lib.Parallel(require="sharedmem").n_jobs == 2


def test_n_jobs_conversion_and_zero():
    assert Parallel(n_jobs="2").n_jobs == 2 == Parallel(n_jobs=2.3).n_jobs
    for bad in ("2.3", "many"):
        with pytest.raises(ValueError, match="n_jobs could not be converted to int"):
            Parallel(n_jobs=bad)
    for zero in (0, 0.5):
        with pytest.raises(ValueError, match="n_jobs == 0 in Parallel has no meaning"):
            Parallel(n_jobs=zero)
    assert Parallel(n_jobs="2")(delayed(square)(i) for i in range(3)) == [0, 1, 4]
    with parallel_config(backend="threading", n_jobs=-1):
        assert effective_n_jobs(None) == cpu_count()


def test_require_sharedmem_under_a_process_backend_runs_threads():
    shared = []
    with parallel_config(backend="loky", n_jobs=2):
        p = Parallel(n_jobs=2, require="sharedmem")
        assert isinstance(p._backend, ThreadingBackend)
        p(delayed(shared.append)(i) for i in range(5))
    assert sorted(shared) == list(range(5))


# --- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize("lib", [arraycache, joblib], ids=["arraycache", "joblib"])
def test_invalid_hints_and_constraints(lib):
    with pytest.raises(ValueError, match="prefer=invalid is not a valid backend hint"):
        lib.Parallel(prefer="invalid")
    with pytest.raises(ValueError, match="require=invalid is not a valid backend constraint"):
        lib.Parallel(require="invalid")
    with pytest.raises(ValueError, match="inconsistent"):
        lib.Parallel(prefer="processes", require="sharedmem")
    for backend in ("loky", "multiprocessing"):
        with pytest.raises(ValueError, match="does not support shared memory"):
            lib.Parallel(backend=backend, require="sharedmem")
    for param in ("prefer", "require"):
        with pytest.raises(ValueError, match=f"{param}=wrong is not a valid"):  # noqa: SIM117
            with lib.parallel_config(**{param: "wrong"}):
                lib.Parallel()
    with pytest.raises(ValueError, match="Invalid backend"):
        lib.Parallel(backend="no-such-backend")


@pytest.mark.parametrize("lib", [arraycache, joblib], ids=["arraycache", "joblib"])
def test_backend_parameters_need_a_backend_that_takes_them(lib):
    with pytest.raises(ValueError, match="only supported when backend is not None"):
        lib.parallel_config(inner_max_num_threads=1)
    with pytest.raises(ValueError, match="only supported when backend is not None"):
        lib.parallel_config(backend_param=1)
    instance = lib.parallel.LokyBackend() if lib is joblib else LokyBackend()
    with pytest.raises(ValueError, match="only supported when backend is a string"):
        lib.parallel_config(backend=instance, backend_param=1)
    threads = lib.parallel.ThreadingBackend() if lib is joblib else ThreadingBackend()
    for backend in ("threading", "multiprocessing", threads):
        with pytest.raises(AssertionError, match=r"does not acc.*inner_max_num_threads"):
            lib.parallel_config(backend, inner_max_num_threads=1)


def test_backend_parameter_error_is_a_value_error_and_loky_takes_the_limit():
    with pytest.raises(BackendParameterError) as info:
        parallel_config("threading", inner_max_num_threads=2)
    assert isinstance(info.value, ValueError)
    with pytest.raises(TypeError, match="unexpected keyword argument 'no_such_option'"):
        parallel_config("loky", no_such_option=1)

    def omp_threads():
        return os.environ.get("OMP_NUM_THREADS")

    with parallel_config("loky", inner_max_num_threads=1):
        assert Parallel(2)(delayed(omp_threads)() for _ in range(2)) == ["1", "1"]


# --- warnings --------------------------------------------------------------------------------


def run_nested(lib, backend):
    if isinstance(lib, str):  # a module does not pickle with plain pickle
        lib = importlib.import_module(lib)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pids = lib.Parallel(n_jobs=2, backend=backend)(
            lib.delayed(pid_after)(0.01) for _ in range(2)
        )
    return [str(w.message) for w in caught], set(pids)


@pytest.mark.parametrize("inner", ["loky", "multiprocessing"])
def test_process_backend_below_threads_runs_inline_with_joblibs_warning(inner):
    (messages, pids), = Parallel(2, backend="threading")(
        delayed(run_nested)(arraycache, inner) for _ in range(1)
    )
    (theirs, _), = joblib.Parallel(2, backend="threading")(
        joblib.delayed(run_nested)(joblib, inner) for _ in range(1)
    )
    assert pids == {os.getpid()}  # inline, in the thread
    assert messages == theirs
    assert messages == [
        f"{inner.title()}-backed parallel loops cannot be nested below threads, setting n_jobs=1"
    ]


def test_no_warning_outside_tasks_and_for_loky_below_loky():
    result = {}

    def background():
        result["out"] = run_nested(arraycache, "loky")

    thread = threading.Thread(target=background)
    thread.start()
    thread.join()
    messages, pids = result["out"]
    assert messages == [] and os.getpid() not in pids
    (messages, _), = Parallel(2)(delayed(run_nested)(arraycache, "loky") for _ in range(1))
    assert messages == []
    (messages, _), = Parallel(2)(
        delayed(run_nested)(arraycache, "multiprocessing") for _ in range(1)
    )
    assert messages == ["Multiprocessing-backed parallel loops cannot be nested, setting n_jobs=1"]


@pytest.mark.parametrize("inner", ["loky", "multiprocessing"])
def test_process_backend_in_a_multiprocessing_worker_runs_inline_with_a_warning(inner):
    (messages, pids), = Parallel(2, backend="multiprocessing")(
        delayed(run_nested)("arraycache", inner) for _ in range(1)
    )
    (theirs, _), = joblib.Parallel(2, backend="multiprocessing")(
        joblib.delayed(run_nested)("joblib", inner) for _ in range(1)
    )
    assert len(pids) == 1 and os.getpid() not in pids  # inline, in the worker
    assert len(messages) == len(theirs) == 1
    assert messages[0].startswith(f"{inner.title()}-backed parallel loops cannot be")
    if inner == "loky":
        assert messages == theirs


# --- dispatch --------------------------------------------------------------------------------


@pytest.mark.parametrize("lib", [arraycache, joblib], ids=["arraycache", "joblib"])
def test_pre_dispatch_pulls_that_many_tasks_before_one_completes(lib):
    release = threading.Event()
    pulled = []

    def tasks():
        for i in range(8):
            pulled.append(i)
            yield lib.delayed(sleep_until)(release, i)

    gen = lib.Parallel(
        n_jobs=2, backend="threading", batch_size=1, pre_dispatch=3, return_as="generator"
    )(tasks())
    try:
        # Dispatch happens in the call, and every task is blocked: nothing completed.
        assert pulled == [0, 1, 2]
    finally:
        release.set()
    assert list(gen) == list(range(8))


def sleep_until(event, value):
    event.wait(30)
    return value


def test_parallel_config_enter_values_and_print_hook():
    with parallel_config(backend="threading", n_jobs=2) as config:
        assert config["backend"] == "threading" and config["n_jobs"] == 2
    with parallel_backend("threading", n_jobs=3) as (backend, n_jobs):
        assert (backend, n_jobs) == ("threading", 3)

    class Recording(Parallel):
        messages = []

        def _print(self, msg):
            self.messages.append(msg)

    Recording(n_jobs=2, verbose=100)([delayed(square)(i) for i in range(1200)])
    done = [m for m in Recording.messages if m.startswith("Done")]
    assert done and done[-1].startswith("Done 1200 out of 1200 |")
    # Counts are padded to the width of the number of tasks, as in joblib.
    assert len({m.index("|") for m in done}) == 1


def test_backend_without_workers_is_refused():
    class NoWorkers(JoblibThreading):
        def configure(self, *args, **kwargs):
            return 0

        def effective_n_jobs(self, n_jobs):
            return 0

    with pytest.raises(RuntimeError, match="NoWorkers has no active worker"):
        Parallel(n_jobs=2, backend=NoWorkers())(delayed(square)(i) for i in range(2))


def test_closing_one_generator_does_not_break_another_live_call():
    Parallel(2)(delayed(square)(i) for i in range(2))  # workers up
    slow = Parallel(2, return_as="generator")(delayed(sleep_then)(0.5, i) for i in range(6))
    quick = Parallel(2, return_as="generator")(delayed(square)(i) for i in range(6))
    # The slow call's running tasks cannot be cancelled; its workers are shared with the
    # quick call, so they are not killed: the tasks finish in the background.
    slow.close()
    assert list(quick) == [i * i for i in range(6)]


def test_workers_shut_down_under_a_call_give_a_clear_error():
    Parallel(2)(delayed(square)(i) for i in range(2))
    gen = Parallel(2, return_as="generator")(delayed(sleep_then)(0.5, i) for i in range(6))
    get_reusable_executor().shutdown(wait=True, kill_workers=True)
    with pytest.raises(RuntimeError, match="were shut down by another part of this program"):
        list(gen)
    assert Parallel(2)(delayed(square)(i) for i in range(3)) == [0, 1, 4]


@pytest.mark.parametrize("lib", [arraycache, joblib], ids=["arraycache", "joblib"])
def test_sharedmem_replacing_a_configured_backend_is_said_at_verbose_10(lib, capsys):
    with lib.parallel_config("loky", n_jobs=2):
        lib.Parallel(require="sharedmem", verbose=10)
        lib.Parallel(require="sharedmem", verbose=9)
    assert capsys.readouterr().out == (
        "Using ThreadingBackend as joblib backend instead of LokyBackend as the latter does "
        "not provide shared memory semantics.\n"
    )


# --- exceptions whose attributes cannot be pickled ---------------------------------------------


class HoldsALock(ValueError):
    """An error that carries something a pipe cannot carry (a lock)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


def _raise_holding_a_lock(x: int) -> None:
    raise HoldsALock(f"task {x} failed")


def _recurse_in_parallel() -> list:
    return arraycache.Parallel(n_jobs=2)(arraycache.delayed(_recurse_in_parallel)() for _ in [0])


def test_unpicklable_worker_exception_keeps_its_type_and_message():
    # What `except HoldsALock` needs: the type and its args (the lock stays behind).
    with pytest.raises(HoldsALock, match="task 3 failed"):
        Parallel(n_jobs=2)(delayed(_raise_holding_a_lock)(x) for x in [3])


@pytest.mark.slow
def test_recursive_parallel_calls_end_in_recursion_error():
    # joblib's thread-bomb test: nested calls run sequentially below the first level,
    # until Python's recursion limit, and the RecursionError reaches the caller.
    with pytest.raises(RecursionError):
        _recurse_in_parallel()


# --- leaving a `with` block while a generator call runs ----------------------------------------


@pytest.mark.parametrize("return_as", ["generator", "generator_unordered"])
def test_with_block_end_aborts_a_running_generator_call(return_as):
    started: list[int] = []
    release = threading.Event()
    # Unblocks the tasks in any case, so that a regression fails instead of hanging.
    failsafe = threading.Timer(30, release.set)
    failsafe.start()

    def task(i):
        started.append(i)
        release.wait()
        return i

    try:
        with Parallel(n_jobs=2, backend="threading", return_as=return_as) as parallel:
            results = parallel(delayed(task)(i) for i in range(10))
            while len(started) < 2:
                time.sleep(0.001)
        # As joblib: the block's end dropped the queued tasks without waiting for them.
        assert not release.is_set()
        release.set()
        with pytest.raises(RuntimeError, match="aborted when its `with` block ended"):
            list(results)
        assert sorted(started) == [0, 1]
    finally:
        failsafe.cancel()
        release.set()
