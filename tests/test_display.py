"""How caches look in notebooks (HTML reprs) and in terminals (one-line reprs, sizes,
durations, tables), checked against what the test stored."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

import arraycache
from arraycache.display import describe_arrays, human_duration, human_size, table
from arraycache.journal import close_journals


def square(x):
    return np.full(20_000, float(x)) ** 2


def disk_bytes(folder: Path) -> int:
    return sum(os.path.getsize(os.path.join(d, n)) for d, _, names in os.walk(folder)
               for n in names)


def entries_bytes(location: Path, func) -> int:
    folder = location / func.func_id
    return sum(disk_bytes(p) for p in folder.iterdir() if p.is_dir() and "." not in p.name)


def parse(markup: str) -> ET.Element:
    """The HTML as a tree: it is well formed, and names are text, not tags."""
    return ET.fromstring(markup)


def rows(tree: ET.Element) -> dict[str, str]:
    """The key/value rows of the first table."""
    return {tr.find("th").text: "".join(tr.find("td").itertext())
            for tr in tree.find("table").iter("tr")}


def make_nested():
    def inner(n):
        return np.arange(n, dtype=np.float32)
    return inner


@pytest.fixture
def filled(memory):
    sq = memory.cache(square)
    nested = memory.cache(make_nested())
    for x in (1, 2, 3, 1, 1, 2):
        sq(x)
    nested(10)
    nested(10)
    yield memory, sq, nested
    close_journals()


def test_memory_html_shows_size_entries_hit_rate_and_largest_functions(location, filled):
    memory, sq, nested = filled
    markup = memory._repr_html_()
    tree = parse(markup)
    assert tree.find("code").text == str(location)
    total = entries_bytes(location, sq) + entries_bytes(location, nested)
    info = rows(tree)
    assert info["size"] == human_size(total)
    assert f"title='{total} bytes'" in markup
    assert info["entries"] == "4 (2 functions)"
    assert info["hits"] == "4 of 8 calls (50%)"
    functions = tree.findall("table")[1].findall("tr")[1:]
    cells = [["".join(td.itertext()) for td in tr] for tr in functions]
    # Largest first; the nested function's name, with its '<locals>', is escaped text.
    assert [c[0] for c in cells] == [f"{__name__}.square",
                                     f"{__name__}.make_nested.<locals>.inner"]
    assert [c[1:5] for c in cells] == [
        ["3", human_size(entries_bytes(location, sq)), "3", "3"],
        ["1", human_size(entries_bytes(location, nested)), "1", "1"],
    ]
    assert "&lt;locals&gt;" in markup and "<locals>" not in markup
    assert len(markup) < 2000


def test_names_are_escaped_in_every_html_repr(memory, location):
    def evil(x):
        return np.zeros(300) + x
    evil.__qualname__ = "<b>evil</b>&co"
    func = memory.cache(evil)
    result = func.call_and_shelve(1)
    name = f"{__name__}.<b>evil</b>&co"
    for markup in (memory._repr_html_(), func._repr_html_(), result._repr_html_()):
        tree = parse(markup)  # a raw <b> would be an element, & would not parse
        assert tree.find(".//b") is None
        assert name in "".join(tree.itertext())
    close_journals()


def test_memorized_function_html_counts_its_own_calls(location, filled):
    _, sq, nested = filled
    info = rows(parse(sq._repr_html_()))
    assert (info["entries"], info["hits"], info["misses"], info["hit rate"]) == \
        ("3", "3", "3", "50%")
    assert info["size"] == human_size(entries_bytes(location, sq))
    assert f"title='{entries_bytes(location, sq)} bytes'" in sq._repr_html_()
    tree = parse(nested._repr_html_())
    assert tree.find("code").text == f"{__name__}.make_nested.<locals>.inner"
    assert (rows(tree)["entries"], rows(tree)["hits"]) == ("1", "1")


def test_memorized_result_html_describes_the_stored_arrays(memory, location):
    func = memory.cache(lambda n: {"m": np.ones((50, 40)), "v": np.arange(n), "tag": "x"})
    result = func.call_and_shelve(7)
    entry = location / func.func_id / result.args_id
    meta = json.loads((entry / "zarr.json").read_text())["attributes"]["arraycache"]
    markup = result._repr_html_()
    info = rows(parse(markup))
    assert info["entry"] == result.args_id
    assert info["arguments"] == "n=7"
    assert f"title='{disk_bytes(entry)} bytes'" in markup
    assert info["compute time"] == human_duration(meta["duration"])
    assert info["content"] == (f"a container of 2 arrays, {human_size(16_000 + 7 * 8)}: "
                               "float64 (50, 40), int64 (7,)")
    result.clear()
    assert rows(parse(result._repr_html_()))["state"] == "cleared (no stored result)"
    close_journals()


def test_plain_reprs_are_one_line_and_read_nothing(tmp_path):
    location = tmp_path / "not-yet"
    memory = arraycache.Memory(location, verbose=0)
    func = memory.cache(square)
    assert repr(memory) == f"Memory(location={str(location)!r})"
    assert repr(func) == f"MemorizedFunc(func={__name__}.square, location={str(location)!r})"
    assert "\n" not in repr(memory) + repr(func)
    # Displaying a location that holds nothing yet does not create it.
    assert rows(parse(memory._repr_html_()))["entries"] == "0 (0 functions)"
    assert rows(parse(func._repr_html_()))["entries"] == "0"
    assert not location.exists()
    result = func.call_and_shelve(2)
    assert repr(result) == (f"MemorizedResult(location={str(location)!r}, "
                            f"func='{__name__}.square', args_id={result.args_id!r})")
    off = arraycache.Memory(None)._repr_html_()
    assert rows(parse(off))["caching"] == "off: functions just run"
    close_journals()


def test_notebooks_pick_the_html_repr(location, filled):
    formatter = pytest.importorskip("IPython.core.formatters").DisplayFormatter()
    memory, sq, _ = filled
    for obj in (memory, sq, sq.call_and_shelve(1)):
        data, _ = formatter.format(obj)
        assert data["text/html"] == obj._repr_html_()
        assert data["text/plain"] == repr(obj)


def test_memory_html_lists_five_largest_functions(memory):
    funcs = []
    for i in range(7):
        def f(n, i=i):
            return np.zeros(n * (i + 1))
        f.__qualname__ = f"f{i}"
        funcs.append(memory.cache(f))
        funcs[-1](1000)
    tree = parse(memory._repr_html_())
    listed = tree.findall("table")[1]
    assert listed.find("caption").text == "largest functions (2 more)"
    names = ["".join(tr[0].itertext()) for tr in listed.findall("tr")[1:]]
    assert names == [f"{__name__}.f{i}" for i in (6, 5, 4, 3, 2)]
    close_journals()


def test_sizes_durations_and_tables_for_people():
    assert [human_size(n) for n in (0, 1023, 1024, 1536, 10 << 20, 3 << 30, 5 << 40)] == [
        "0 B", "1023 B", "1.0 KiB", "1.5 KiB", "10.0 MiB", "3.0 GiB", "5.0 TiB"]
    assert [human_duration(s) for s in (0, 0.0001, 0.012, 3.44, 62, 3725, 90000)] == [
        "0 s", "<1 ms", "12 ms", "3.4 s", "1m 02s", "1h 02m", "1d 01h"]
    assert table(["name", "n"], [["a", 1], ["long name", 100]]).splitlines() == [
        "name         n",
        "a            1",
        "long name  100",
    ]
    assert describe_arrays({"skeleton": "array", "arrays": {"a0": {
        "dtype": "<f8", "shape": [3, 4], "nbytes": 96, "codec": {"name": "blosc"}}}}) == \
        "1 array, 96 B: float64 (3, 4) compressed"
