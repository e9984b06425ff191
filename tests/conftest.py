"""Shared fixtures: cache folders that vanish after each test, and subprocess helpers."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from loky import get_reusable_executor

import arraycache


def sigint_default_in_child() -> None:
    """``preexec_fn`` for children that tests interrupt: an ignored SIGINT is inherited
    through exec, and Python then installs no KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(autouse=True)
def _sigint_handler_restored():
    """A test (or a library it starts, e.g. a dask cluster) that leaves SIGINT ignored
    would make every later child process deaf to Ctrl-C."""
    yield
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _environment_restored():
    """A library a test starts may change this process's environment for good: a dask
    LocalCluster sets OPENBLAS_NUM_THREADS=1 and OMP_NUM_THREADS=1 here, which every later
    child process (joblib's own test suite among them) would inherit."""
    saved = dict(os.environ)
    yield
    if dict(os.environ) != saved:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture
def location(tmp_path: Path) -> Path:
    """A fresh cache folder (removed with tmp_path)."""
    return tmp_path / "cache"


@pytest.fixture
def memory(location: Path) -> arraycache.Memory:
    return arraycache.Memory(location, verbose=0)


def run_python(code: str, cwd: Path, timeout: float = 120) -> str:
    """Run ``code`` as a script in a fresh interpreter; return its stdout (fail on error)."""
    script = cwd / f"script_{abs(hash(code))}.py"
    script.write_text(textwrap.dedent(code))
    env = {**os.environ, "PYTHONHASHSEED": "random"}
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=cwd, capture_output=True, text=True,
        timeout=timeout, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def worker_processes() -> list[psutil.Process]:
    """Child processes, except the resource trackers that loky keeps for the session."""
    children = []
    for child in psutil.Process().children(recursive=True):
        try:
            if not any("resource_tracker" in part for part in child.cmdline()):
                children.append(child)
        except psutil.NoSuchProcess:
            pass
    return children


def stop_workers_and_check() -> None:
    """Shut loky's reusable workers down and fail if any child process is left."""
    get_reusable_executor().shutdown(wait=True, kill_workers=True)
    deadline = time.monotonic() + 10
    while worker_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [p.cmdline() for p in worker_processes()] == []


@pytest.fixture(scope="module")
def no_leftover_workers():
    """Use in modules that start loky workers: they are stopped and checked at the end."""
    yield
    stop_workers_and_check()


def shared_files() -> list[str]:
    """Every file under this process's Parallel sharing folders (after collecting garbage)."""
    from arraycache.parallel._folders import FOLDERS

    gc.collect()
    return sorted(
        os.path.join(dirpath, name)
        for folder in FOLDERS.existing()
        for dirpath, _, names in os.walk(folder)
        for name in names
    )


# --- another PID namespace ---------------------------------------------------------------------

#: Python code to run first in a fresh PID namespace, where pids are handed out in order:
#: fork until a child gets the pid in $ARRAYCACHE_TEST_PID (one that no process of the
#: test's namespace has, see :func:`free_pid`), and go on in that child.
FORK_TO_PID = """
import os as _os, sys as _sys
_target = int(_os.environ["ARRAYCACHE_TEST_PID"])
while True:
    _child = _os.fork()
    if _child == 0:
        if _os.getpid() != _target:
            _os._exit(0)
        break
    _os.waitpid(_child, 0)
    if _child >= _target:
        _sys.exit(0 if _child == _target else 3)
"""

#: Runs a command in a new PID namespace; its processes die with it.
UNSHARE_PID = ("unshare", "--pid", "--fork", "--mount-proc", "--kill-child")


def free_pid() -> int:
    """A pid that no process of this namespace has (and that is below the last one given)."""
    taken = set(psutil.pids())
    return next(pid for pid in range(300, 30_000) if pid not in taken)


def skip_without_pid_namespaces() -> None:
    """Skip the test unless this process can make PID namespaces (root, unshare)."""
    if os.geteuid() != 0:
        pytest.skip("a PID namespace needs root")
    probe = subprocess.run([*UNSHARE_PID[:-1], "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"no PID namespace here: {probe.stderr.strip()}")
