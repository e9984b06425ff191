"""joblib's own tests, run against arraycache.

The four test modules joblib ships inside its package (``joblib/test/test_hashing.py``,
``test_config.py``, ``test_memory.py``, ``test_parallel.py``, from the joblib that the
test extra installs) are copied at test time into a temporary folder, their imports of
joblib's public API (``Memory``, ``Parallel``, ``delayed``, ``hash``, ``parallel_config``,
...) pointed at arraycache (``joblib_suite/rewrite.py``; nothing else in them changes),
and run by pytest in a subprocess. Whatever they reach of joblib's private modules
(store backends, backend classes, ``joblib.testing``) stays joblib's.

Every test runs and must pass, except those listed below with the reason:
``JOBLIB_INTERNALS`` (tests of joblib's private state, backend classes, message wording),
``DIFFERENT_ON_PURPOSE`` (joblib behaviour arraycache changes by design; README,
"Compatibility with joblib") and ``KNOWN_DIFFERENCES_TO_FIX`` (public behaviour that
differs and should not; deselected so CI stays green until fixed: set
``ARRAYCACHE_JOBLIB_KNOWN=run`` to run them too). An entry that matches no test fails the
run, so the lists cannot go stale silently.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import joblib
import psutil
import pytest

import arraycache

from .joblib_suite.rewrite import rewrite_module

#: The joblib release the lists below were made with.
JOBLIB_VERSION = "1.6.0"
MODULES = ("test_hashing", "test_config", "test_memory", "test_parallel")
#: Seconds: one joblib test, and one module.
TEST_TIMEOUT = 120
MODULE_TIMEOUT = 1200
#: Seconds given to the run's processes to end after it has ended.
LEFTOVER_GRACE = 15

_STORE = "joblib's store-backend internals (store_backend, _get_args_id, item listing)"
_ACTIVE = "joblib's active-backend state (parallel.get_active_backend, DEFAULT_BACKEND)"
_BACKEND = "Parallel._backend is an instance of joblib's backend classes, or its private state"
_WORDING = "joblib's exact message wording (the error type is the same)"
_COLLISION = (
    "a function's code is part of its key: same-name functions and a changed body get "
    "their own entries, nothing collides, so no JobLibCollisionWarning"
)

#: Tests of joblib's internals: private attributes and modules, joblib's backend classes,
#: message wording.
JOBLIB_INTERNALS: dict[str, str] = {
    "test_hashing::test_wrong_hash_name": _WORDING,
    "test_config::test_global_parallel_backend": _BACKEND,
    "test_config::test_external_backends": "joblib's EXTERNAL_BACKENDS lazy-registration dict",
    "test_config::test_parallel_config_no_backend": _BACKEND,
    "test_config::test_parallel_config_params_explicit_set": _BACKEND,
    "test_config::test_parallel_config_nested": _BACKEND,
    "test_memory::test_memory_numpy_check_mmap_mode": _STORE,
    "test_memory::test_memory_recomputes_after_an_error_while_loading_results": _STORE,
    "test_memory::test_memorized_result_forwards_mmap_mode": _STORE,
    "test_memory::test_partial_decoration": "MemorizedFunc's private attributes (_verbose)",
    "test_memory::test_func_dir": _STORE,
    "test_memory::test_persistence": _STORE,
    "test_memory::test_call_and_shelve_lazily_load_stored_result": _STORE,
    "test_memory::test_memorized_repr": "MemorizedFunc(timestamp=): joblib's logging clock",
    "test_memory::test_memory_func_with_kwonly_args": _WORDING,
    "test_memory::test__get_items": _STORE,
    "test_memory::test__get_items_to_delete": _STORE,
    "test_memory::test_memory_reduce_size_bytes_limit": _STORE,
    "test_memory::test_memory_reduce_size_items_limit": _STORE,
    "test_memory::test_memory_reduce_size_age_limit": _STORE,
    "test_memory::test_memory_clear": _STORE,
    "test_memory::test_memory_default_store_backend": _WORDING,
    "test_memory::test_memory_objects_repr": "repr wording, with joblib's store_backend",
    "test_memory::test_memorized_result_pickle": _STORE,
    "test_memory::test_memory_pickle_dump_load": _STORE,
    "test_memory::test_invalid_cache_validation_callback": _WORDING,
    "test_parallel::test_parallel_pickling": _WORDING,
    "test_parallel::test_error_capture": "joblib's pool objects (backend._pool/_workers)",
    "test_parallel::test_batching_auto_threading": _BACKEND,
    "test_parallel::test_batching_auto_subprocesses": _BACKEND,
    "test_parallel::test_register_parallel_backend": "joblib's BACKENDS registry dict",
    "test_parallel::test_overwrite_default_backend": _ACTIVE,
    "test_parallel::test_backend_context_manager": _ACTIVE,
    "test_parallel::test_parameterized_backend_context_manager": _ACTIVE,
    "test_parallel::test_directly_parameterized_backend_context_manager": _ACTIVE,
    "test_parallel::test_nested_backend_context_manager": _ACTIVE,
    "test_parallel::test_nested_backend_in_sequential": _ACTIVE,
    "test_parallel::test_backend_nesting_level": "nesting_level of joblib's backend objects",
    "test_parallel::test_default_mp_context": "Parallel._backend_kwargs",
    "test_parallel::test_backend_batch_statistics_reset": _BACKEND,
    "test_parallel::test_backend_hinting_and_constraints": _BACKEND,
    "test_parallel::test_backend_hinting_and_constraints_with_custom_backends": _BACKEND,
    "test_parallel::test_nested_parallelism_limit": _BACKEND,
    "test_parallel::test_multiple_generator_call_separated_gc[*-threading-False]": (
        "Parallel._aborting"
    ),
}

#: joblib behaviour arraycache changes on purpose (README, "Compatibility with joblib").
DIFFERENT_ON_PURPOSE: dict[str, str] = {
    "test_hashing::test_hashes_stay_the_same": "md5 digest values; arraycache's are xxh3-128",
    "test_hashing::test_hash_numpy_performance": (
        "hash must take about as long as hashlib.md5 (it is much faster); a timing test"
    ),
    "test_hashing::test_hash_numpy_noncontiguous": (
        "a non-contiguous view hashes like its C-contiguous copy (joblib hashes strides)"
    ),
    "test_hashing::test_hashing_pickling_error": (
        "local functions and closures hash (by code and captured values), no PicklingError"
    ),
    "test_memory::test_parallel_call_cached_function_defined_in_jupyter": (
        "on-disk layout (<location>/joblib/<module>/<func>/, func_code.py)"
    ),
    "test_memory::test_memory_name_collision": _COLLISION,
    "test_memory::test_memory_warning_lambda_collisions": _COLLISION,
    "test_memory::test_memory_warning_collision_detection": _COLLISION,
    "test_memory::test_memory_in_memory_function_code_change": _COLLISION,
    "test_memory::test_memory_creates_gitignore": (
        "the .gitignore says 'Created by arraycache automatically.' ('*' is the same)"
    ),
    "test_parallel::test_multiple_generator_call_separated_gc[*-loky-True]": (
        "a collected generator does not break the next call on loky's shared executor "
        "(joblib raises RuntimeError)"
    ),
}

#: Public behaviour that differs from joblib's and should not: deselected until fixed.
KNOWN_DIFFERENCES_TO_FIX: dict[str, str] = {}


@dataclass
class SuiteRun:
    """What one run of a rewritten joblib module left behind."""

    returncode: int
    output: str
    outcomes: dict[str, list[str]]
    #: Exclusion entries that matched no test of the module.
    unmatched: list[str]
    #: Processes of the run still alive after it ended (killed), and its /dev/shm files.
    leftover_processes: list[str]
    leftover_shm: list[str]


def _processes_with_marker(marker: str) -> list[psutil.Process]:
    """Processes started by the run (they inherit its marker in their environment)."""
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if process.environ().get("JOBLIB_SUITE_MARKER") == marker:
                found.append(process)
    return found


def _kill_leftover_processes(marker: str) -> list[str]:
    # loky's resource trackers end on their own shortly after the run: give them time.
    _, alive = psutil.wait_procs(_processes_with_marker(marker), timeout=LEFTOVER_GRACE)
    described = []
    for process in alive:
        with contextlib.suppress(psutil.Error):
            described.append(" ".join(process.cmdline()))
            process.kill()
    return described


def _remove_shm_leftovers(pid: int) -> list[str]:
    """Remove (and name) what the run's main process left in /dev/shm."""
    if not os.path.isdir("/dev/shm"):
        return []
    tokens = (f"-{pid}-", f"_{pid}_")
    leftovers = sorted(
        os.path.join("/dev/shm", name)
        for name in os.listdir("/dev/shm")
        if any(token in name for token in tokens)
    )
    for path in leftovers:
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.remove(path)
    return leftovers


def _outcomes(junit: Path) -> dict[str, list[str]]:
    outcomes: dict[str, list[str]] = {"passed": [], "failed": [], "skipped": []}
    if not junit.exists():
        outcomes["failed"].append("(pytest wrote no report)")
        return outcomes
    for case in ET.parse(junit).getroot().iter("testcase"):
        tags = {child.tag for child in case}
        kind = "failed" if tags & {"failure", "error"} else "skipped" if tags else "passed"
        outcomes[kind].append(case.get("name", "?"))
    return outcomes


def run_joblib_module(
    module: str, run_dir: Path, excluded: list[str], temp_dir: str
) -> SuiteRun:
    """Rewrite joblib's ``module`` into ``run_dir`` and run it in a subprocess whose
    temporary files go to ``temp_dir``."""
    source = Path(joblib.__file__).parent / "test" / f"{module}.py"
    rewrite_module(source, run_dir)
    shutil.copy(Path(__file__).parent / "joblib_suite" / "suite_conftest.py",
                run_dir / "conftest.py")
    (run_dir / "pytest.ini").write_text("[pytest]\n")  # the rootdir: no setup.cfg of ours
    (run_dir / "exclude.json").write_text(json.dumps(excluded))
    marker = uuid.uuid4().hex
    env = {
        **os.environ,
        # The arraycache under test (this checkout) before any installed copy.
        "PYTHONPATH": os.pathsep.join(
            [str(Path(arraycache.__file__).parent.parent), os.environ.get("PYTHONPATH", "")]
        ),
        "JOBLIB_SUITE_EXCLUDE": str(run_dir / "exclude.json"),
        "JOBLIB_SUITE_REPORT": str(run_dir / "report.json"),
        "JOBLIB_SUITE_MARKER": marker,
        "TMPDIR": temp_dir,
    }
    env.pop("PYTEST_ADDOPTS", None)
    command = [
        sys.executable, "-m", "pytest", f"{module}.py", "-p", "no:cacheprovider",
        "-q", "-rfE", f"--timeout={TEST_TIMEOUT}", f"--basetemp={run_dir / 'basetemp'}",
        f"--junitxml={run_dir / 'junit.xml'}",
    ]
    process = subprocess.Popen(
        command, cwd=run_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=MODULE_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        output += f"\n[killed after {MODULE_TIMEOUT} s]"
    finally:
        leftover_processes = _kill_leftover_processes(marker)
    report_file = run_dir / "report.json"
    report = json.loads(report_file.read_text()) if report_file.exists() else {}
    return SuiteRun(
        returncode=process.returncode,
        output=output,
        outcomes=_outcomes(run_dir / "junit.xml"),
        unmatched=report.get("unmatched", ["(the conftest wrote no report)"]),
        leftover_processes=leftover_processes,
        leftover_shm=_remove_shm_leftovers(process.pid),
    )


def _failure_details(output: str, max_lines: int = 400) -> str:
    """pytest's report of the failures (from its FAILURES header), at most ``max_lines``."""
    lines = output.splitlines()
    start = next((i for i, line in enumerate(lines) if "= FAILURES =" in line), 0)
    shown = lines[start:start + max_lines]
    if len(lines) - start > max_lines:
        shown += ["...", *lines[-30:]]
    return "\n".join(shown)


def _excluded_for(module: str) -> list[str]:
    lists = [JOBLIB_INTERNALS, DIFFERENT_ON_PURPOSE]
    if os.environ.get("ARRAYCACHE_JOBLIB_KNOWN") != "run":
        lists.append(KNOWN_DIFFERENCES_TO_FIX)
    return [entry for entries in lists for entry in entries if entry.startswith(f"{module}::")]


def test_lists_name_joblib_tests_once():
    entries = [*JOBLIB_INTERNALS, *DIFFERENT_ON_PURPOSE, *KNOWN_DIFFERENCES_TO_FIX]
    assert len(entries) == len(set(entries))
    assert {entry.partition("::")[0] for entry in entries} <= set(MODULES)


@pytest.mark.slow
@pytest.mark.timeout(MODULE_TIMEOUT + 2 * LEFTOVER_GRACE + 60)
@pytest.mark.parametrize("module", MODULES)
def test_joblib_module(module: str, tmp_path: Path):
    run_dir = tmp_path / module
    run_dir.mkdir()
    # The run's TMPDIR has a short path: multiprocessing puts unix sockets (at most 107
    # bytes of path) there, which a folder under tmp_path can make too long.
    temp_dir = tempfile.mkdtemp(prefix="arraycache-joblib-")
    try:
        run = run_joblib_module(module, run_dir, _excluded_for(module), temp_dir)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.rmtree(temp_dir, ignore_errors=True)
    version_note = (
        "" if joblib.__version__ == JOBLIB_VERSION
        else f" (the lists were made for joblib {JOBLIB_VERSION}; this is {joblib.__version__})"
    )
    if run.returncode != 0 or run.outcomes["failed"]:
        pytest.fail(
            f"joblib's {module} fails on arraycache{version_note}: {run.outcomes['failed']}"
            f"\n{_failure_details(run.output)}",
            pytrace=False,
        )
    assert run.outcomes["passed"], f"no test of joblib's {module} ran\n{run.output[-3000:]}"
    assert run.unmatched == [], f"list entries that match no test{version_note}: {run.unmatched}"
    assert run.leftover_processes == []
    assert run.leftover_shm == []
