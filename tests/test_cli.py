"""The cache administration command line: info, verify, prune, clear."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import arraycache
from arraycache.cli import main


@pytest.fixture
def filled(location):
    memory = arraycache.Memory(location, verbose=0)
    produce = memory.cache(lambda i: np.full(50_000, float(i)))
    for i in range(3):
        produce(i)
    return memory, produce


def chunk_files(location):
    return sorted(p for p in location.rglob("a0/c/0"))


def test_info_lists_functions_entries_and_sizes(location, filled, capsys):
    assert main(["info", str(location)]) == 0
    out = capsys.readouterr().out
    assert "3 entries" in out and "1 code version(s)" in out
    assert out.strip().splitlines()[-1].startswith("total: 3 entries")


def test_verify_reports_damage_with_its_exit_status(location, filled, capsys):
    assert main(["verify", str(location)]) == 0
    target = chunk_files(location)[0]
    data = bytearray(target.read_bytes())
    data[1000] ^= 0xFF
    target.write_bytes(bytes(data))
    assert main(["verify", str(location)]) == 1
    out = capsys.readouterr().out
    assert f"damaged: {target.parents[2]}" in out and "1 damaged entry" in out


def test_prune_removes_dead_writers_leftovers_and_evicts(location, filled, capsys):
    _, produce = filled
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    entry = chunk_files(location)[0].parents[2]
    leftover = entry.with_name(f"{entry.name}.tmp-{dead.stdout.strip()}-abcd1234")
    leftover.mkdir()
    live = entry.with_name(f"{entry.name}.tmp-{os.getpid()}-abcd1234")
    live.mkdir()
    assert main(["prune", str(location), "--items-limit", "1"]) == 0
    assert "removed 1 leftover temporary folder(s) and 2 entr(ies)" in capsys.readouterr().out
    assert not leftover.exists() and live.exists()
    assert [produce.check_call_in_cache(i) for i in range(3)] == [False, False, True]


def test_clear_needs_yes_and_the_module_entry_point_works(location, filled):
    refused = subprocess.run([sys.executable, "-m", "arraycache", "clear", str(location)],
                             capture_output=True, text=True)
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert len(chunk_files(location)) == 3
    done = subprocess.run([sys.executable, "-m", "arraycache", "clear", str(location), "--yes"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert chunk_files(location) == []


def test_a_folder_that_is_not_a_cache_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["verify", str(tmp_path)])
    assert info.value.code == 2
    assert "is not an arraycache location" in capsys.readouterr().err
