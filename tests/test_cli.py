"""The command line, run as real processes (``python -m arraycache`` and the installed
``arraycache`` script) on a cache filled by a real Memory: ls, du, stats, info, verify,
prune, clear; ``--json`` parsed back and checked against what the test made."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import arraycache
from arraycache.cli import main
from arraycache.display import human_size
from arraycache.journal import close_journals
from arraycache.liveness import OWNED
from arraycache.store import FORMAT_VERSION

CONSOLE = Path(sys.executable).with_name("arraycache")
COMMANDS = ["ls", "du", "stats", "info", "verify", "prune", "clear"]

SQUARE_BYTES = 20_000 * 8
TABLE_BYTES = 50 * 40 * 8


def square(x):
    return np.full(20_000, float(x)) ** 2


def table(n):
    return {"m": np.ones((50, 40)) * n, "label": f"t{n}"}


def run(*args, console: bool = False, status: int = 0) -> subprocess.CompletedProcess:
    """Run the command line in a new process; check its exit status."""
    if console and not CONSOLE.exists():
        pytest.skip(f"the console script is not installed next to {sys.executable}")
    command = [str(CONSOLE)] if console else [sys.executable, "-m", "arraycache"]
    proc = subprocess.run([*command, *map(str, args)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == status, (proc.stdout, proc.stderr)
    return proc


def run_json(*args, console: bool = False, status: int = 0) -> dict:
    return json.loads(run(*args, "--json", console=console, status=status).stdout)


def disk_bytes(folder: Path) -> int:
    return sum(os.path.getsize(os.path.join(d, n)) for d, _, names in os.walk(folder)
               for n in names)


def entry_dirs(location: Path, func) -> dict[str, Path]:
    """The entries of a memorized function, by the repr of their first argument."""
    found = {}
    for path in (location / func.func_id).iterdir():
        if path.is_dir() and "." not in path.name:  # not a writer's temporary folder
            meta = json.loads((path / "zarr.json").read_text())["attributes"]["arraycache"]
            found[next(iter(meta["args"].values()))] = path
    return found


def function_bytes(location: Path, func) -> int:
    """Bytes on disk of the entries of a memorized function (not its code.json)."""
    return sum(map(disk_bytes, entry_dirs(location, func).values()))


def durations(location: Path, func) -> dict[str, float]:
    return {x: json.loads((p / "zarr.json").read_text())["attributes"]["arraycache"]["duration"]
            for x, p in entry_dirs(location, func).items()}


@pytest.fixture
def cache(location):
    """square: 1, 2, 3 computed, then 1, 1, 2 hit; table: 7 computed, then hit."""
    memory = arraycache.Memory(location, verbose=0)
    sq, tb = memory.cache(square), memory.cache(table)
    for x in (1, 2, 3, 1, 1, 2):
        sq(x)
    tb(7)
    tb(7)
    yield memory, sq, tb
    close_journals()


def test_help_of_every_command(capsys):
    top = run("--help", console=True).stdout
    for name in COMMANDS:
        assert name in top
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0
        out = capsys.readouterr().out
        assert f"usage: arraycache {name}" in out and "LOCATION" in out
        assert ("--json" in out) == (name != "clear")


def test_ls_lists_functions_with_counts_sizes_and_hits(location, cache):
    _, sq, tb = cache
    listed = run_json("ls", location, console=True)
    assert listed["location"] == str(location)
    assert set(listed["functions"]) == {sq.func_id, tb.func_id}
    made = {sq.func_id: (sq, 3, 3, 3), tb.func_id: (tb, 1, 1, 1)}
    for fid, (func, entries, hits, misses) in made.items():
        row = listed["functions"][fid]
        assert (row["entries"], row["hits"], row["misses"]) == (entries, hits, misses)
        assert row["bytes"] == function_bytes(location, func)
        assert row["name"] == f"{__name__}.{func.__name__}"
    # Time saved is the recorded compute time of every hit.
    d = durations(location, sq)
    assert listed["functions"][sq.func_id]["time_saved"] == pytest.approx(
        2 * d["1"] + d["2"], abs=1e-5)

    lines = run("ls", location).stdout.splitlines()
    header, rows = lines[0], lines[1:]
    assert header.split() == ["function", "entries", "size", "hits", "misses", "hit", "rate",
                              "time", "saved"]
    assert [r.split()[0] for r in rows] == [*sorted([sq.func_id, tb.func_id]), "total"]
    end = header.index("entries") + len("entries")  # right-aligned under its header
    assert all(r[end - 1].isdigit() and r[end] == " " for r in rows)
    total = rows[-1].split()
    assert total[:2] == ["total", "4"] and total[4:7] == ["4", "4", "50%"]
    assert " ".join(total[2:4]) == human_size(function_bytes(location, sq)
                                              + function_bytes(location, tb))


def test_ls_of_one_function_lists_its_entries(location, cache):
    _, sq, _ = cache
    dirs = entry_dirs(location, sq)
    for name in ("square", f"{__name__}.square", sq.func_id):
        listed = run_json("ls", location, name)
        assert listed["function"] == sq.func_id
    # Most recently used first: 2 was hit last, then 1; 3 was never hit.
    assert [e["args"] for e in listed["entries"]] == [{"x": "2"}, {"x": "1"}, {"x": "3"}]
    hits = {"1": 2, "2": 1, "3": 0}
    d = durations(location, sq)
    for e in listed["entries"]:
        x = e["args"]["x"]
        assert e["key"] == dirs[x].name
        assert e["bytes"] == disk_bytes(dirs[x])
        assert e["hits"] == hits[x]
        assert e["compute_time"] == pytest.approx(d[x])
        assert e["created"] <= e["last_access"] and not e["stale"]

    out = run("ls", location, "square", console=True).stdout.splitlines()
    assert out[0] == f"{__name__}.square: 3 entries, {human_size(function_bytes(location, sq))}"
    assert out[1].split()[:3] == ["key", "size", "created"]
    assert [line.split()[0] for line in out[2:]] == [dirs[x].name[:12] for x in "213"]
    assert [line.split()[-1] for line in out[2:]] == ["x=2", "x=1", "x=3"]


def scale(images, factor=2):
    return images * factor


def test_ls_shows_array_arguments_by_dtype_and_shape(location, memory):
    memory.cache(scale)(np.ones((4, 3), dtype=np.float32))
    rows = run("ls", location, "scale").stdout.splitlines()[2:]
    assert [r.split("  ")[-1] for r in rows] == ["images=float32(4, 3), factor=2"]
    close_journals()


def test_ls_names_an_unknown_or_ambiguous_function(tmp_path, location, cache):
    memory, sq, _ = cache
    unknown = run("ls", location, "nope", status=2)
    assert "no function 'nope'" in unknown.stderr and sq.func_id in unknown.stderr
    assert unknown.stdout == ""
    # A suffix counts only at a boundary of the name.
    assert "no function 'uare'" in run("ls", location, "uare", status=2).stderr
    memory.cache(load_module(tmp_path, "def square(x):\n    return x\n").square)(1)
    both = run("ls", location, "square", status=2)
    assert "matches several functions" in both.stderr and "cli_jobs/square" in both.stderr
    assert run_json("ls", location, "test_cli.square")["function"] == sq.func_id


def test_du_gives_sizes_per_function_total_and_free_space(location, cache):
    _, sq, tb = cache
    du = run_json("du", location)
    expected = {f.func_id: {"entries": n, "bytes": function_bytes(location, f)}
                for f, n in ((sq, 3), (tb, 1))}
    assert du["functions"] == expected
    assert du["entries"] == 4
    assert du["bytes"] == sum(f["bytes"] for f in expected.values())
    assert du["other_bytes"] > 0  # the bookkeeping database, code.json files
    assert 0 < du["free_bytes"] <= os.statvfs(location).f_blocks * os.statvfs(location).f_frsize
    text = run("du", location, console=True).stdout
    assert "free space on the file system" in text
    assert text.splitlines()[3].split()[:2] == ["total", "4"]


def test_stats_gives_the_counters(location, cache):
    _, sq, tb = cache
    stats = run_json("stats", location, console=True)
    total = function_bytes(location, sq) + function_bytes(location, tb)
    assert {k: stats[k] for k in ("hits", "misses", "entries", "bytes", "bytes_stored")} == {
        "hits": 4, "misses": 4, "entries": 4, "bytes": total, "bytes_stored": total}
    # Array bytes returned by the hits: three squares and one table.
    assert stats["bytes_loaded"] == 3 * SQUARE_BYTES + TABLE_BYTES
    d_sq, d_tb = durations(location, sq), durations(location, tb)
    assert stats["compute_time"] == pytest.approx(sum(d_sq.values()) + d_tb["7"], abs=1e-5)
    assert stats["time_saved"] == pytest.approx(2 * d_sq["1"] + d_sq["2"] + d_tb["7"], abs=1e-5)
    assert stats["functions"][tb.func_id]["hits"] == 1
    assert "8: 4 hits, 4 misses (50% hits)" in run("stats", location).stdout


def load_module(folder: Path, source: str) -> types.ModuleType:
    """A module named ``cli_jobs`` from ``source`` (written to a file, so it has source)."""
    path = folder / "cli_jobs.py"
    path.write_text(source)
    module = types.ModuleType("cli_jobs")
    module.__file__ = str(path)
    exec(compile(source, str(path), "exec"), module.__dict__)
    return module


def test_info_shows_code_versions_and_prune_stale_removes_old_ones(tmp_path, location, cache):
    memory, sq, tb = cache
    info = run_json("info", location, console=True)
    assert info["format_version"] == FORMAT_VERSION
    assert (info["entries"], info["leftovers"]) == (4, 0)
    assert info["bytes"] == function_bytes(location, sq) + function_bytes(location, tb)
    assert info["bookkeeping"]["state"] == "ok"
    assert info["bookkeeping"]["tracked_bytes"] == info["bytes"]
    assert info["functions"][sq.func_id]["code_versions_stored"] == 1

    old = memory.cache(load_module(tmp_path, "import numpy as np\n"
                                             "def make(n):\n    return np.zeros(n)\n").make)
    old(3), old(4)
    new = memory.cache(load_module(tmp_path, "import numpy as np\n"
                                             "def make(n):\n    return np.ones(n)\n").make)
    new(3)
    info = run_json("info", location)["functions"]["cli_jobs/make"]
    old_keys = sorted(old.call_and_shelve(n).args_id for n in (3, 4))
    old_bytes = sum(disk_bytes(location / old.func_id / key) for key in old_keys)
    assert info["entries"] == 3 and info["code_versions_stored"] == 2
    assert info["code_versions_seen"] == 2
    assert (info["stale_entries"], info["stale_bytes"]) == (2, old_bytes)
    assert "cli_jobs/make" in run("info", location).stdout

    pruned = run_json("prune", location, "--stale")
    assert sorted(Path(e["entry"]).name for e in pruned["evicted"]) == old_keys
    assert all(e["stale"] for e in pruned["evicted"])
    assert pruned["evicted_bytes"] == old_bytes and pruned["entries"] == 5
    assert new.check_call_in_cache(3) and sq.check_call_in_cache(3)


def test_verify_finds_a_flipped_byte_and_repair_removes_the_entry(location, cache):
    _, sq, _ = cache
    assert run_json("verify", location) == {"location": str(location), "checked": 4,
                                            "damaged": [], "repaired": False}
    damaged = entry_dirs(location, sq)["2"]
    chunk = damaged / "a0" / "c" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))

    report = run_json("verify", location, console=True, status=1)
    assert [d["entry"] for d in report["damaged"]] == [str(damaged)]
    assert report["checked"] == 4 and report["damaged"][0]["function"] == sq.func_id
    text = run("verify", location, status=1).stdout
    assert f"damaged: {damaged}" in text and "checked 4 entries: 1 damaged" in text

    repaired = run_json("verify", location, "--repair")
    assert repaired["repaired"] and len(repaired["damaged"]) == 1
    assert not damaged.exists()
    assert run_json("verify", location)["checked"] == 3
    np.testing.assert_array_equal(sq(2), square(2))  # recomputed
    assert sq.check_call_in_cache(2)


def test_prune_removes_leftovers_and_evicts_least_recently_used(location, cache):
    _, sq, tb = cache
    some_entry = entry_dirs(location, sq)["1"]
    # A writer that died: its temporary folder, and the lock file nobody holds any more.
    leftover = some_entry.with_name(f"{some_entry.name}.tmp-12345-abcd1234")
    leftover.mkdir()
    Path(f"{leftover}.lock").touch()
    # A live writer (this process) holds the lock of its folder.
    live = OWNED.make(some_entry.with_name(f"{some_entry.name}.tmp-{os.getpid()}-abcd1234"))

    kept = run_json("prune", location, "--age", "12h", console=True)
    assert (kept["leftovers_removed"], kept["evicted"], kept["entries"]) == (1, [], 4)
    assert not leftover.exists() and not Path(f"{leftover}.lock").exists()
    assert live.exists()

    # Least recently used first: square 3 (never hit), then square 1; 2 and table stay.
    dirs = entry_dirs(location, sq)
    limit = disk_bytes(dirs["2"]) + function_bytes(location, tb)
    pruned = run_json("prune", location, "--bytes-limit", limit)
    assert [e["entry"] for e in pruned["evicted"]] == [str(dirs["3"]), str(dirs["1"])]
    assert pruned["bytes"] == limit and pruned["entries"] == 2
    assert [sq.check_call_in_cache(x) for x in (1, 2, 3)] == [False, True, False]
    assert tb.check_call_in_cache(7)
    assert "evicted 0 entries" in run("prune", location, "--items-limit", "2").stdout
    OWNED.remove(live)


def test_prune_rejects_bad_limits(location, cache):
    for args in (["--age", "5x"], ["--age", "7"], ["--bytes-limit", "lots"],
                 ["--items-limit", "-1"]):
        proc = run("prune", location, *args, status=2)
        assert "error: argument" in proc.stderr and proc.stdout == ""
    assert len(entry_dirs(location, cache[1])) == 3


def test_clear_of_one_function_then_of_everything(location, cache):
    _, sq, tb = cache
    refused = run("clear", location, "square", status=2)
    assert "--yes" in refused.stderr and len(entry_dirs(location, sq)) == 3

    size = human_size(function_bytes(location, sq))
    out = run("clear", location, "square", "--yes").stdout
    assert out.strip() == f"removed 3 entries ({size}) of {sq.func_id}"
    assert entry_dirs(location, sq) == {}
    assert set(run_json("ls", location)["functions"]) == {tb.func_id}
    assert tb.check_call_in_cache(7) and not sq.check_call_in_cache(1)

    run("clear", location, "--yes", console=True)
    assert run_json("ls", location)["functions"] == {}
    assert (location / "arraycache.json").is_file()


def test_a_folder_that_is_not_a_cache_is_refused(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "precious.txt").write_text("keep me")
    for args, console in [(["ls", folder], True), (["verify", folder, "--json"], False),
                          (["clear", folder, "--yes"], False),
                          (["du", tmp_path / "missing"], True)]:
        proc = run(*args, console=console, status=2)
        assert "is not an arraycache location" in proc.stderr and proc.stdout == ""
    assert sorted(os.listdir(folder)) == ["precious.txt"]
    assert not (tmp_path / "missing").exists()
