"""Many processes and threads on one cache: one entry, no stampede, no blocking.

Processes are real interpreters started on scripts that import the same ``jobs``
module (see ``JOBS_SOURCE`` in test_faults.py), so they cache the same functions.
Calls of a cached function are counted in a file, one character per call, across
all processes.  Processes start together on a ``go`` file, not on sleeps.
"""

from __future__ import annotations

import os
import signal
import textwrap
import threading
import time

import numpy as np
import pytest

import arraycache

from .test_faults import Lab, entries, leftovers, only_entry


@pytest.fixture
def lab(tmp_path):
    lab = Lab(tmp_path)
    try:
        yield lab
    finally:
        lab.close()


def start_together(lab: Lab, count: int, code: str, **env: str) -> list:
    """Start ``count`` processes that run ``code`` at the same moment; return them."""
    procs = [
        lab.spawn(f'jobs.signal("ready-{i}")\njobs.wait_for("go")\n' + textwrap.dedent(code),
                  f"worker{i}", **env)
        for i in range(count)
    ]
    for i in range(count):
        lab.wait_for(f"ready-{i}")
    lab.go()
    return procs


def overlap(intervals: list[tuple[float, float]]) -> float:
    """How long all the intervals ran at the same time (negative: they did not)."""
    return min(end for _, end in intervals) - max(start for start, _ in intervals)


def read_intervals(lab: Lab, tags) -> list[tuple[float, float]]:
    return [tuple(map(float, (lab.signals / f"interval-{t}").read_text().split())) for t in tags]


CALL_SLOW = """
f = jobs.memory({options}).cache(jobs.slow_array)
jobs.check_slow_array(f(200_000, {seconds}), 200_000)
"""


def test_processes_racing_on_one_entry_without_locks_leave_one_valid_entry(lab):
    # lock_timeout=None opts out of waiting: all four compute at the same time (the
    # function returns only once all four are in it) and all four publish; one rename
    # wins, the others are dropped.
    procs = start_together(lab, 4, """
        f = jobs.memory(lock_timeout=None).cache(jobs.rendezvous)
        jobs.check_slow_array(f(200_000, 4), 200_000)
    """)
    for proc in procs:
        lab.finish(proc)
    assert lab.calls == "xxxx"
    only_entry(lab.cache)
    assert leftovers(lab.cache) == []
    lab.run("""
        f = jobs.memory().cache(jobs.rendezvous)
        jobs.check_slow_array(f(200_000, 4), 200_000)
    """, "later")
    assert lab.calls == "xxxx"  # a hit on the surviving entry


@pytest.mark.slow
def test_stampede_eight_processes_compute_a_slow_entry_once(lab):
    t0 = time.monotonic()
    procs = start_together(lab, 8, CALL_SLOW.format(options="", seconds=1.5))
    for proc in procs:
        lab.finish(proc)
    assert lab.calls == "x", "processes that missed computed instead of waiting"
    only_entry(lab.cache)
    assert leftovers(lab.cache) == []  # the lock is released
    assert time.monotonic() - t0 < 30


@pytest.mark.slow
def test_stampede_parallel_workers_compute_a_slow_entry_once(lab):
    lab.run("""
        f = jobs.memory().cache(jobs.slow_array)
        tasks = (arraycache.delayed(f)(100_000, 1.5) for _ in range(8))
        for out in arraycache.Parallel(n_jobs=4)(tasks):
            jobs.check_slow_array(out, 100_000)
    """, "parallel")
    assert lab.calls == "x"
    only_entry(lab.cache)
    assert leftovers(lab.cache) == []


@pytest.mark.parametrize(("lock_timeout", "expected_calls"), [(600.0, 1), (None, 4)])
def test_threads_calling_one_entry(location, lock_timeout, expected_calls):
    memory = arraycache.Memory(location, verbose=0, lock_timeout=lock_timeout)
    calls = []
    barrier = threading.Barrier(4)

    inside = threading.Barrier(4)

    @memory.cache
    def slow(n):
        calls.append(n)
        if lock_timeout is None:
            inside.wait(timeout=30)  # all four compute at the same time
        else:
            time.sleep(0.5)  # the others wait for this one's result
        return np.arange(n, dtype=np.float64) * 3

    results, errors = [None] * 4, []

    def worker(i):
        try:
            barrier.wait(timeout=30)
            results[i] = slow(100_000)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    for out in results:
        np.testing.assert_array_equal(out, np.arange(100_000, dtype=np.float64) * 3)
    assert len(calls) == expected_calls
    only_entry(location)
    assert leftovers(location) == []
    slow(100_000)
    assert len(calls) == expected_calls


def test_processes_with_different_arguments_do_not_block_each_other(lab):
    # Each call returns only once the other one has started: if either call blocked
    # the other, the first would time out waiting and the second would not overlap.
    procs = [
        lab.spawn(f"""
            jobs.signal("ready-{tag}")
            jobs.wait_for("go")
            assert jobs.memory().cache(jobs.meet)("{tag}", "{other}") == "{tag}"
        """, f"worker-{tag}")
        for tag, other in (("a", "b"), ("b", "a"))
    ]
    lab.wait_for("ready-a")
    lab.wait_for("ready-b")
    lab.go()
    for proc in procs:
        lab.finish(proc)
    assert lab.calls == "xx"
    assert overlap(read_intervals(lab, "ab")) > 0
    assert len(entries(lab.cache)) == 2
    assert leftovers(lab.cache) == []


def test_threads_with_different_arguments_do_not_block_each_other(location):
    memory = arraycache.Memory(location, verbose=0)
    intervals, errors = {}, []
    inside = threading.Barrier(4)

    @memory.cache
    def timed(tag):
        start = time.time()
        inside.wait(timeout=20)  # broken (an error) unless all four run at once
        intervals[tag] = (start, time.time())
        return np.full(10_000, ord(tag))

    def worker(tag):
        try:
            np.testing.assert_array_equal(timed(tag), np.full(10_000, ord(tag)))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(tag,)) for tag in "abcd"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert sorted(intervals) == list("abcd")
    assert overlap(list(intervals.values())) > 0
    assert len(entries(location)) == 4
    assert leftovers(location) == []


CALL_HELD = """
jobs.signal("calling-{name}")
f = jobs.memory({options}).cache(jobs.held_array)
jobs.check_slow_array(f(50_000), 50_000)
"""


def test_lock_of_a_killed_holder_is_taken_over(lab):
    holder = lab.spawn(CALL_HELD.format(name="holder", options=""), "holder", FAULT_HOLD="600")
    lab.wait_for(f"computing-{holder.pid}")
    lock = [p for p in lab.function_dir("held_array").iterdir() if p.name.endswith(".lock")]
    assert len(lock) == 1

    waiter = lab.spawn(CALL_HELD.format(name="waiter", options=""), "waiter")
    lab.wait_for("calling-waiter")
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=30)
    t0 = time.monotonic()
    lab.finish(waiter, timeout=30)
    assert time.monotonic() - t0 < 15  # not the lock_timeout of 600 s
    assert lab.calls == "xx"
    only_entry(lab.cache)
    assert not any(p.name.endswith(".lock") for p in lab.cache.rglob("*"))


def test_waiter_stops_waiting_after_lock_timeout(lab):
    holder = lab.spawn(CALL_HELD.format(name="holder", options=""), "holder", FAULT_HOLD="600")
    lab.wait_for(f"computing-{holder.pid}")
    t0 = time.monotonic()
    lab.run(CALL_HELD.format(name="waiter", options="lock_timeout=1.0"), "waiter", timeout=60)
    assert time.monotonic() - t0 < 15
    assert lab.calls == "xx"
    only_entry(lab.cache)
    holder.kill()
    holder.wait(timeout=30)


def test_waiters_get_the_holders_result(lab):
    # While one process computes, another that misses waits and then hits its result.
    holder = lab.spawn(CALL_HELD.format(name="holder", options=""), "holder", FAULT_HOLD="2")
    lab.wait_for(f"computing-{holder.pid}")
    waiter = lab.spawn(CALL_HELD.format(name="waiter", options=""), "waiter")
    lab.finish(holder)
    lab.finish(waiter)
    assert lab.calls == "x"
    only_entry(lab.cache)
    assert leftovers(lab.cache) == []
