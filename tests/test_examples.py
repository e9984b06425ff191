"""The runnable examples run, and say what they promise."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.slow
def test_quickstart_second_call_is_a_memmap_hit():
    out = run_example("quickstart.py")
    assert re.search(r"second call \(cache hit\): +[\d.]+ ms -> memmap of 400 MB", out), out


@pytest.mark.slow
def test_cross_validation_shares_X_once_and_runs_sklearn_on_the_arraycache_backend():
    proc = subprocess.run([sys.executable, str(EXAMPLES / "cross_validation.py"), "0.02"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    x_mb = float(re.search(r"X: memmap \(25000, 100\) float64, (\d+) MB", out).group(1))
    mapped = float(re.search(r"\(the cache hit\): .* written ([\d.]+) MB", out).group(1))
    copied = float(re.search(r"\(a copy\): .* written ([\d.]+) MB", out).group(1))
    assert mapped < 0.25 * x_mb, out  # passed by reference to the cache file
    assert x_mb <= copied < 1.5 * x_mb, out  # written once for both calls
    rows = re.findall(
        r"^   (.+?) *: +[\d.]+ s, best alpha (\S+), R\^2 ([\d.]+); written ([\d.]+) MB", out, re.M
    )
    assert [r[0] for r in rows] == [
        "joblib's loky backend",
        "the 'arraycache' backend",
        "'arraycache' + Pipeline(memory=arraycache.Memory)",
    ], out
    # The same search, whatever runs it and whether the pipeline steps are cached.
    assert len({(alpha, score) for _, alpha, score, _ in rows}) == 1, out
    loky, ours, ours_again = (float(r[3]) for r in rows)
    assert loky >= 2 * x_mb, out  # joblib writes X for the search and again for the scores
    assert x_mb <= ours < 1.5 * x_mb, out  # arraycache: once for both calls
    assert ours_again < 0.5 * x_mb, out  # and not again while X lives


@pytest.mark.slow
def test_mmap_loading_maps_a_large_result_without_holding_it():
    proc = subprocess.run([sys.executable, str(EXAMPLES / "mmap_loading.py"), "0.2"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert re.search(r"hit: [\d.]+ ms -> memmap \(195312, 256\) float32", out), out
    own = int(re.search(r"own memory: ([+-]\d+) MB after reading 200 MB", out).group(1))
    assert own < 50, out  # the 200 MB went through the page cache, not the process


@pytest.mark.slow
def test_joblib_tour_runs_every_part():
    proc = subprocess.run([sys.executable, str(EXAMPLES / "joblib_tour.py"), "0.05"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for part in range(1, 8):
        assert f"\n{part}. " in "\n" + out, out
    assert "loader: 1 computation, 12 hits in the workers" in out
    assert "second call (cache hit)" in out and "second pass (all hits)" in out
    assert "[Parallel(n_jobs=2)]: Done" in proc.stderr  # joblib prints progress there
