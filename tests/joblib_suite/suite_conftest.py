"""conftest.py of the folder where joblib's rewritten test modules run (copied there).

Deselects the tests listed in the JSON file named by ``JOBLIB_SUITE_EXCLUDE`` (entries
``module::test``, or ``module::test[params]`` with ``*`` as a wildcard), records in
``JOBLIB_SUITE_REPORT`` the entries that matched no test (so a stale list fails loudly),
registers the markers joblib's own configuration declares, and stops both libraries'
worker pools when the session ends, so no worker outlives the run.
"""

from __future__ import annotations

import json
import os
import re


def pytest_configure(config):
    config.addinivalue_line("markers", "thread_unsafe: joblib's, for pytest-run-parallel")
    config.addinivalue_line("markers", "parallel_threads(n): joblib's, for pytest-run-parallel")
    config.addinivalue_line("markers", "no_cover: joblib's, for its coverage runs")


def _matches(entry: str, module: str, name: str) -> bool:
    """``module::test`` matches every parametrization, ``module::test[a-*]`` those whose
    parameters match (``*``: any text)."""
    entry_module, _, test = entry.partition("::")
    if entry_module != module:
        return False
    if "[" not in test:
        return name.split("[", 1)[0] == test
    return re.fullmatch(re.escape(test).replace(r"\*", ".*"), name) is not None


def pytest_collection_modifyitems(session, config, items):
    with open(os.environ["JOBLIB_SUITE_EXCLUDE"]) as file:
        entries = json.load(file)
    used: set[str] = set()
    kept, deselected = [], []
    for item in items:
        module = item.path.stem
        hits = [entry for entry in entries if _matches(entry, module, item.name)]
        used.update(hits)
        (deselected if hits else kept).append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept
    modules = {item.path.stem for item in kept + deselected}
    report = {
        "deselected": len(deselected),
        "unmatched": [e for e in entries if e not in used and e.partition("::")[0] in modules],
    }
    with open(os.environ["JOBLIB_SUITE_REPORT"], "w") as file:
        json.dump(report, file)


def pytest_sessionfinish(session, exitstatus):
    from joblib.externals.loky import get_reusable_executor as joblib_executor

    from arraycache.parallel._loky import get_reusable_executor

    get_reusable_executor().shutdown(wait=True, kill_workers=True)
    joblib_executor().shutdown(wait=True, kill_workers=True)
