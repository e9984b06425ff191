"""Cache locations in object storage, against a real S3 server: moto's HTTP server on
localhost (``moto[server]``), reached through s3fs by zarr's FsspecStore, and by
other processes.  Each test gets its own bucket, removed at its end; the server
stops with the module and its port is checked closed.

Two processes with their own ``XDG_CACHE_HOME`` stand for two machines: they share
the bucket but not the local compute locks.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
import warnings
from pathlib import Path

import numpy as np
import pytest

import arraycache
from arraycache import persistence
from arraycache.exceptions import CacheWarning, DamagedEntryWarning, UntrustedEntryWarning
from arraycache.journal import close_journals
from arraycache.store import FORMAT_VERSION, LocalStore, open_store

s3fs = pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")
zarr = pytest.importorskip("zarr")

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


# --- the server, buckets, and this machine's folder ------------------------------------------


@pytest.fixture(scope="module")
def endpoint():
    """moto's S3 server on a free localhost port, for the whole module."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        with socket.socket() as probe:  # nothing listens there any more
            assert probe.connect_ex((host, port)) != 0


@pytest.fixture
def opts(endpoint):
    return {"key": "testing", "secret": "testing", "endpoint_url": endpoint}


@pytest.fixture
def s3(opts):
    """A plain s3fs client, for looking at and damaging objects behind the cache's back."""
    fs = s3fs.S3FileSystem(**opts, skip_instance_cache=True)
    yield fs
    fs.invalidate_cache()


@pytest.fixture
def bucket(s3):
    name = f"test-{uuid.uuid4().hex[:12]}"
    s3.mkdir(name)
    yield name
    s3.invalidate_cache()
    with contextlib.suppress(FileNotFoundError):
        s3.rm(name, recursive=True)
    s3.invalidate_cache()
    assert not s3.exists(name)


@pytest.fixture
def url(bucket):
    return f"s3://{bucket}/cache"


@pytest.fixture(autouse=True)
def machine(tmp_path, monkeypatch):
    """This "machine"'s folder for bookkeeping and locks of remote locations."""
    home = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    yield home
    close_journals()


def listing(s3, url) -> dict[str, int]:
    """Object key (under the location) -> size."""
    s3.invalidate_cache()
    root = url.removeprefix("s3://")
    return {p[len(root) + 1:]: info["size"]
            for p, info in s3.find(root, detail=True).items()}


def only_entry(memory):
    (info,) = memory._store().entries()
    return info


def entry_url(url, info) -> str:
    parts = info.path.parts
    return f"{url}/{'/'.join(parts[-3:])}"


def make(v):
    return np.arange(50_000, dtype=np.float64) * v


def quiet_memory(url, opts, **kwargs):
    return arraycache.Memory(url, storage_options=opts, verbose=0, **kwargs)


# --- entries: the same zarr groups, read in place ------------------------------------------


def test_results_are_stored_and_hit(url, opts):
    memory = quiet_memory(url, opts)
    calls = []

    @memory.cache
    def f(v, order="C"):
        calls.append(v)
        return {"c": np.asarray(make(v).reshape(500, 100), order=order),
                "n": v, "label": f"v{v}"}

    first = f(3.0, order="F")
    again = f(3.0, order="F")
    assert calls == [3.0]
    np.testing.assert_array_equal(again["c"], make(3.0).reshape(500, 100))
    assert again["c"].flags.f_contiguous and not isinstance(again["c"], np.memmap)
    assert (again["n"], again["label"]) == (3.0, "v3.0")
    assert first["label"] == again["label"]
    assert f.check_call_in_cache(3.0, order="F") and not f.check_call_in_cache(4.0)


def test_entries_open_with_zarr_and_dask_in_place(url, opts):
    da = pytest.importorskip("dask.array")
    memory = quiet_memory(url, opts)
    plain = memory.cache(make)
    packed = arraycache.Memory(url, storage_options=opts, verbose=0, compress=3).cache(
        lambda v: make(v).reshape(1000, 50).T)  # F order and compressed
    plain(2.0)
    packed(5.0)
    expected = {plain.func_id: make(2.0), packed.func_id: make(5.0).reshape(1000, 50).T}
    entries = list(memory._store().entries())
    assert len(entries) == 2
    for info in entries:
        where = entry_url(url, info)
        group = zarr.open_group(where, mode="r", storage_options=opts)
        assert group.attrs["arraycache"]["format_version"] == FORMAT_VERSION
        assert list(group.array_keys()) == ["a0"]
        want = expected[info.function]
        np.testing.assert_array_equal(group["a0"][...], want)
        lazy = da.from_zarr(f"{where}/a0", storage_options=opts)
        assert lazy.shape == want.shape
        np.testing.assert_array_equal(lazy.compute(), want)
        assert float(lazy.sum().compute()) == pytest.approx(float(want.sum()))


def test_remote_entry_has_the_files_of_a_local_one(url, opts, s3, tmp_path):
    def result(v):
        return {"x": make(v), "m": np.ones((30, 40), order="F"), "k": [1, "two"]}

    remote = quiet_memory(url, opts).cache(result)
    local = arraycache.Memory(tmp_path / "local", verbose=0).cache(result)
    remote(1.5)
    local(1.5)
    (local_info,) = LocalStore(tmp_path / "local").entries()
    local_files = {p.relative_to(local_info.path).as_posix(): p.stat().st_size
                   for p in Path(local_info.path).rglob("*") if p.is_file()}
    remote_files = {k.split("/", 3)[3]: n for k, n in listing(s3, url).items()
                    if k.count("/") >= 3}
    assert remote_files.keys() == local_files.keys()
    # Same bytes everywhere but in the group metadata (times, durations).
    for name in remote_files:
        if name != "zarr.json":
            assert remote_files[name] == local_files[name], name
    # Under the same module/qualname folders.
    assert {k.rsplit("/", 1)[0] for k in listing(s3, url) if k.endswith("/code.json")} == {
        local_info.function}


# --- publishing ------------------------------------------------------------------------------


def test_readers_never_see_an_entry_before_its_group_metadata(url, opts, s3):
    memory = quiet_memory(url, opts)
    big = {f"a{i}": np.full(1 << 20, float(i)) for i in range(6)}  # 6 files of 8 MiB
    f = memory.cache(lambda: big)
    root = f"{url.removeprefix('s3://')}/{f.func_id}"
    seen: list[set[str]] = []
    done = threading.Event()

    def watch():
        watcher = s3fs.S3FileSystem(**opts, skip_instance_cache=True)
        while not done.is_set():
            watcher.invalidate_cache()
            with contextlib.suppress(FileNotFoundError):
                # Paths inside the entry: zarr.json, a0/zarr.json, a0/c/0...
                found = [p[len(root) + 1:] for p in watcher.find(root)]
                seen.append({p.split("/", 1)[1] for p in found if "/" in p})

    thread = threading.Thread(target=watch)
    thread.start()
    try:
        f()
    finally:
        done.set()
        thread.join()
    whole = {f"a{i}/c/0" for i in range(6)}
    with_meta = [s for s in seen if "zarr.json" in s]
    assert all(whole <= s for s in with_meta)  # zarr.json only ever beside every chunk
    # The test could fail: it did look while the chunks were being uploaded.
    assert any(s & whole and "zarr.json" not in s for s in seen), seen[:3]
    assert f.check_call_in_cache()


def test_an_entry_without_group_metadata_is_a_miss_and_replaced(url, opts, s3):
    memory = quiet_memory(url, opts)
    calls = []

    @memory.cache
    def f(v):
        calls.append(v)
        return make(v)

    f(1.0)
    where = entry_url(url, only_entry(memory))
    s3.rm(f"{where}/zarr.json")
    s3.pipe(f"{where}/a7/c/0", b"left by a writer that died")
    assert not f.check_call_in_cache(1.0)
    assert not list(memory._store().entries())
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        np.testing.assert_array_equal(f(1.0), make(1.0))
        np.testing.assert_array_equal(f(1.0), make(1.0))
    assert calls == [1.0, 1.0]
    files = listing(s3, url)
    assert not any("/a7/" in k for k in files)  # the dead writer's file went
    assert memory.verify() == []


def publish_race(url, opts, values):
    """Threads publishing different results for one entry at the same moment."""
    store = open_store(url, opts)
    entry = store.entry_dir(("racing", "fn"), "k" * 32)
    prepared = []
    for v in values:
        tmp = store.new_entry(entry)
        meta = persistence.dump(np.full(1 << 20, v), tmp, None)
        meta.update(created=time.time(), duration=0.0, code="c", args={})
        prepared.append((tmp, meta))
    barrier = threading.Barrier(len(values))
    outcome = []

    def publish(tmp, meta):
        barrier.wait()
        outcome.append(store.publish(tmp, entry, meta, replace=False))

    threads = [threading.Thread(target=publish, args=p) for p in prepared]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return store, entry, outcome, prepared


def test_concurrent_publishers_of_one_entry_leave_one_whole_entry(url, opts, s3):
    store, entry, outcome, prepared = publish_race(url, opts, [1.0, 2.0, 3.0])
    assert sorted(outcome) == [False, False, True]
    meta = store.read_meta(entry)
    local = store.fetch(entry, meta)
    try:
        value = persistence.load(local, meta, None)  # checked against its digests
    finally:
        store.release(local)
    assert value[0] in (1.0, 2.0, 3.0) and (value == value[0]).all()
    assert not any(k.endswith(".claim") for k in listing(s3, url))
    assert all(not tmp.exists() for tmp, _ in prepared)
    assert not list(store.staging.iterdir())


RACER = """
    import json, os, sys, time
    from pathlib import Path
    import numpy as np
    import arraycache

    url, endpoint, folder = sys.argv[1:]
    folder = Path(folder)
    memory = arraycache.Memory(url, verbose=0, storage_options={
        "key": "testing", "secret": "testing", "endpoint_url": endpoint})

    @memory.cache
    def value(k):
        # Both "machines" compute every key: wait until the other has started too.
        (folder / f"in-{k}-{os.getpid()}").touch()
        deadline = time.monotonic() + 60
        while len(list(folder.glob(f"in-{k}-*"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.005)
        return np.full(2 << 20, float(os.getpid()))  # 16 MiB, different per process

    (folder / f"ready-{os.getpid()}").touch()
    while not (folder / "go").exists():
        time.sleep(0.005)
    got = {k: float(value(k)[0]) for k in range(3)}
    (folder / f"out-{os.getpid()}.json").write_text(json.dumps(got))
"""


@pytest.mark.slow
def test_two_machines_computing_one_entry_end_with_one_whole_entry(
        url, opts, endpoint, s3, tmp_path):
    script = tmp_path / "racer.py"
    script.write_text(textwrap.dedent(RACER))
    procs = []
    try:
        for name in ("one", "two"):
            env = {**os.environ, **CREDENTIALS, "XDG_CACHE_HOME": str(tmp_path / name)}
            procs.append(subprocess.Popen(
                [sys.executable, str(script), url, endpoint, str(tmp_path)], env=env,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        deadline = time.monotonic() + 120
        while len(list(tmp_path.glob("ready-*"))) < 2 and time.monotonic() < deadline:
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            time.sleep(0.01)
        (tmp_path / "go").touch()
        for p in procs:
            _, err = p.communicate(timeout=180)
            assert p.returncode == 0, err
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    pids = {p.pid for p in procs}
    for p in procs:  # each computed every key itself and got its own value back
        got = json.loads((tmp_path / f"out-{p.pid}.json").read_text())
        assert set(got.values()) == {float(p.pid)}
    memory = quiet_memory(url, opts)
    entries = list(memory._store().entries())
    assert len(entries) == 3
    assert memory.verify() == []
    for info in entries:
        stored = zarr.open_group(entry_url(url, info), mode="r", storage_options=opts)["a0"]
        values = np.unique(stored[...])
        assert len(values) == 1 and int(values[0]) in pids
    assert not any(k.endswith(".claim") for k in listing(s3, url))
    for name in ("one", "two"):  # no temporary folder left on either machine
        assert not [p for p in (tmp_path / name).rglob("*.tmp-*")]


def test_claims_of_live_writers_are_respected_and_dead_ones_taken_over(url, opts, s3):
    memory = quiet_memory(url, opts)
    f = memory.cache(make)
    entry = f._entry((1.0,), {})[0]
    claim = f"{entry}.claim"
    live = {"pid": os.getpid(), "host": socket.gethostname(), "time": time.time(), "id": "x"}
    s3.pipe(claim, json.dumps(live).encode())
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        np.testing.assert_array_equal(f(1.0), make(1.0))  # returned, not stored
    assert not f.check_call_in_cache(1.0)
    assert s3.cat(claim) == json.dumps(live).encode()  # not ours: left alone

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    s3.pipe(claim, json.dumps({**live, "pid": int(dead.stdout)}).encode())
    np.testing.assert_array_equal(f(1.0), make(1.0))
    assert f.check_call_in_cache(1.0)
    s3.invalidate_cache()
    assert not s3.exists(claim)

    # Another machine's claim, an hour old: taken over too.
    g = memory.cache(lambda v: make(v) + 1)
    g_claim = f"{g._entry((2.0,), {})[0]}.claim"
    s3.pipe(g_claim, json.dumps({**live, "host": "elsewhere", "time": time.time() - 7200})
            .encode())
    g(2.0)
    assert g.check_call_in_cache(2.0)


# --- damage ----------------------------------------------------------------------------------


def damage_missing_chunk(s3, where):
    s3.rm(f"{where}/a0/c/0")


def damage_truncated_chunk(s3, where):
    data = s3.cat(f"{where}/a0/c/0")
    s3.pipe(f"{where}/a0/c/0", data[: len(data) // 2])


def damage_flipped_byte(s3, where):
    data = bytearray(s3.cat(f"{where}/a0/c/0"))
    data[len(data) // 3] ^= 1
    s3.pipe(f"{where}/a0/c/0", bytes(data))


def damage_garbage_metadata(s3, where):
    s3.pipe(f"{where}/zarr.json", b"\x00garbage{")


@pytest.mark.parametrize("damage", [damage_missing_chunk, damage_truncated_chunk,
                                    damage_flipped_byte, damage_garbage_metadata])
@pytest.mark.parametrize("compress", [False, 3])
def test_damaged_remote_entries_are_recomputed(url, opts, s3, damage, compress):
    memory = quiet_memory(url, opts, compress=compress)
    calls = []

    @memory.cache
    def f(v):
        calls.append(v)
        return make(v)

    f(2.0)
    info = only_entry(memory)
    damage(s3, entry_url(url, info))
    assert memory.verify() == [info.path]
    with pytest.warns(DamagedEntryWarning, match="damaged"):
        np.testing.assert_array_equal(f(2.0), make(2.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        np.testing.assert_array_equal(f(2.0), make(2.0))
    assert calls == [2.0, 2.0]
    assert memory.verify() == []


# --- mmap_mode and local copies --------------------------------------------------------------


def test_mmap_mode_warns_once_and_loads_into_memory(url, opts):
    memory = quiet_memory(url, opts, mmap_mode="r")
    f = memory.cache(make)
    first = f(1.0)
    assert not isinstance(first, np.memmap)
    with pytest.warns(UserWarning, match="cannot be memory-mapped.*into memory.*local_cache"):
        hit = f(1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = f(1.0)
    for value in (hit, again):
        assert type(value) is np.ndarray and value.flags.owndata
        np.testing.assert_array_equal(value, make(1.0))


def test_local_cache_maps_hits_and_follows_the_bucket(url, opts, tmp_path, s3):
    copies = tmp_path / "copies"
    memory = quiet_memory(url, opts, mmap_mode="r", local_cache=copies)
    f = memory.cache(lambda v: np.random.default_rng().random(10_000) + v)
    first = f(1.0)
    assert isinstance(first, np.memmap) and Path(first.filename).is_relative_to(copies)
    hit = f(1.0)
    assert isinstance(hit, np.memmap) and hit.filename == first.filename
    np.testing.assert_array_equal(hit, first)
    assert not hit.flags.writeable

    # Another machine, with its own copies: downloads once, then maps.
    other_copies = tmp_path / "other-copies"
    other = quiet_memory(url, opts, mmap_mode="r", local_cache=other_copies).cache(f.func)
    value = other(1.0)
    assert Path(value.filename).is_relative_to(other_copies)
    np.testing.assert_array_equal(value, first)
    inode = os.stat(value.filename).st_ino
    assert os.stat(other(1.0).filename).st_ino == inode  # not downloaded again

    # The entry is recomputed (here by the first machine): the copy follows.
    fresh, _ = f.call(1.0)
    assert not np.array_equal(np.asarray(fresh), np.asarray(first))
    np.testing.assert_array_equal(other(1.0), fresh)

    # A local copy cut short is downloaded again, quietly: the bucket is fine.
    chunk = Path(other(1.0).filename)
    chunk.write_bytes(chunk.read_bytes()[:100])
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        np.testing.assert_array_equal(other(1.0), fresh)

    # mmap_mode='r+' would write into a copy only: copy-on-write instead, said once.
    writer = quiet_memory(url, opts, mmap_mode="r+", local_cache=copies).cache(f.func)
    with pytest.warns(UserWarning, match="mmap_mode='c'"):
        mapped = writer(1.0)
    assert mapped.mode == "c"
    mapped[0] = -1.0
    np.testing.assert_array_equal(f(1.0), fresh)

    # Clearing the location clears the copies.
    memory.clear()
    assert not [p for p in copies.rglob("*") if p.is_file()
                and ".staging" not in p.parts]


# --- pickles, bookkeeping, eviction, references ---------------------------------------------


class Fitted:
    def __init__(self, weights):
        self.weights = weights


def test_pickled_results_load_only_when_trusted(url, opts):
    calls = []

    def fit(v):
        calls.append(v)
        return Fitted(make(v))

    untrusting = quiet_memory(url, opts).cache(fit)
    untrusting(1.0)
    with pytest.warns(UntrustedEntryWarning, match="trust_foreign_pickles=True"):
        value = untrusting(1.0)
    np.testing.assert_array_equal(value.weights, make(1.0))
    assert calls == [1.0, 1.0]
    trusting = quiet_memory(url, opts, trust_foreign_pickles=True).cache(fit)
    np.testing.assert_array_equal(trusting(1.0).weights, make(1.0))
    assert calls == [1.0, 1.0]  # a hit: the entry was not replaced meanwhile either


def test_bookkeeping_is_kept_on_this_machine(url, opts, s3, machine):
    memory = quiet_memory(url, opts)
    f = memory.cache(make)
    f(1.0)
    f(1.0)
    f(1.0)
    f(2.0)
    stats = memory.stats()
    assert (stats["hits"], stats["misses"], stats["entries"]) == (2, 2, 2)
    assert stats["bytes"] == sum(n for k, n in listing(s3, url).items() if k.count("/") >= 3)
    assert stats["bytes_loaded"] == 2 * make(1.0).nbytes
    folders = list((machine / "arraycache" / "remote").iterdir())
    assert len(folders) == 1
    assert json.loads((folders[0] / "location.json").read_text())["location"] == url
    assert (folders[0] / ".arraycache" / "summary.sqlite").is_file()
    assert not any(".arraycache" in k for k in listing(s3, url))
    # The notebook view shows the same numbers.
    page = memory._repr_html_()
    assert "2 of 4 calls" in page and "2 (1 function)" in page
    assert "<td>2</td>" in f._repr_html_()  # its entries (and its hits)
    # The same bucket and prefix on another server is another cache.
    other = open_store(url.replace("/cache", "/other"), opts)
    assert other.local != folders[0]


@pytest.mark.slow
def test_reduce_size_and_bytes_limit(url, opts):
    memory = quiet_memory(url, opts)
    f = memory.cache(make)
    for v in (1.0, 2.0, 3.0):
        f(v)
        time.sleep(0.01)
    f(1.0)  # most recently used
    memory.reduce_size(items_limit=1)
    assert [f.check_call_in_cache(v) for v in (1.0, 2.0, 3.0)] == [True, False, False]
    size = only_entry(memory).nbytes
    limited = quiet_memory(url, opts, bytes_limit=int(size * 2.5)).cache(make)
    for v in (4.0, 5.0, 6.0):
        limited(v)
        time.sleep(0.01)
    assert len(list(memory._store().entries())) == 2  # the oldest went first
    assert not limited.check_call_in_cache(1.0) and limited.check_call_in_cache(6.0)


def test_clear_of_a_function_and_of_the_location(url, opts, s3):
    memory = quiet_memory(url, opts)
    f, g = memory.cache(make), memory.cache(lambda v: make(v) * 2)
    f(1.0)
    g(1.0)
    f.clear()
    assert not f.check_call_in_cache(1.0) and g.check_call_in_cache(1.0)
    assert not any(k.startswith(f.func_id) for k in listing(s3, url))
    memory.clear(warn=False)
    assert listing(s3, url).keys() == {"arraycache.json"}
    assert memory.stats()["entries"] == 0


def test_call_and_shelve_references_pickle_and_load_elsewhere(url, opts, tmp_path):
    memory = quiet_memory(url, opts)
    f = memory.cache(make)
    ref = f.call_and_shelve(3.0)
    np.testing.assert_array_equal(ref.get(), make(3.0))
    assert ref._repr_html_() is None  # the HTML view reads local folders
    out = subprocess.run(
        [sys.executable, "-c", "import pickle, sys; r = pickle.loads(sys.stdin.buffer.read()); "
         "print(float(r.get()[7]))"],
        input=pickle.dumps(ref), capture_output=True, env={**os.environ}, check=True)
    assert float(out.stdout) == make(3.0)[7]
    ref.clear()
    with pytest.raises(KeyError, match="no stored result"):
        ref.get()


def test_memorized_functions_pickle_to_other_processes_and_hit(url, opts, tmp_path):
    memory = quiet_memory(url, opts)
    f = memory.cache(make)
    f(4.0)
    script = ("import pickle, sys; f = pickle.loads(sys.stdin.buffer.read()); "
              "f.func = None; print(float(f(4.0)[9]))")  # a hit never calls it
    out = subprocess.run([sys.executable, "-c", script], input=pickle.dumps(f),
                         capture_output=True, cwd=Path(__file__).parent.parent)
    assert out.returncode == 0, out.stderr.decode()
    assert float(out.stdout) == make(4.0)[9]


def _hit_in_child(f, queue):
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        try:
            queue.put(float(f(5.0)[11]))
        except Exception as exc:
            queue.put(repr(exc))


def test_forked_children_reconnect(url, opts):
    import multiprocessing

    memory = quiet_memory(url, opts)
    f = memory.cache(make)
    f(5.0)  # the parent's connections are open now
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_hit_in_child, args=(f, queue))
    child.start()
    try:
        assert queue.get(timeout=60) == make(5.0)[11]
    finally:
        child.join(timeout=30)
        if child.is_alive():
            child.kill()
            child.join()
    assert child.exitcode == 0
    queue.close()
    queue.join_thread()


# --- other locations and bad input -----------------------------------------------------------


def test_other_fsspec_urls(tmp_path):
    location = f"memory://arraycache-test-{uuid.uuid4().hex[:8]}"
    memory = arraycache.Memory(location, verbose=0)
    calls = []

    @memory.cache
    def f(v):
        calls.append(v)
        return {"x": make(v), "y": (v, "z")}

    f(1.0)
    value = f(1.0)
    assert calls == [1.0]
    np.testing.assert_array_equal(value["x"], make(1.0))
    (info,) = memory._store().entries()
    group = zarr.open_group(entry_url(location, info), mode="r")
    np.testing.assert_array_equal(group["a0"][...], make(1.0))
    memory.clear(warn=False)
    import fsspec

    fsspec.filesystem("memory").rm(location.removeprefix("memory:/"), recursive=True)

    # file:// is a local folder: memory maps, no download.
    local = arraycache.Memory(f"file://{tmp_path / 'local'}", mmap_mode="r", verbose=0)
    assert isinstance(local.cache(make)(1.0), np.memmap)
    assert (tmp_path / "local" / "arraycache.json").is_file()


def test_options_of_the_wrong_kind_are_errors(tmp_path, url):
    with pytest.raises(ValueError, match="storage_options are for URL locations"):
        arraycache.Memory(tmp_path, storage_options={"anon": True})
    with pytest.raises(ValueError, match="local_cache is for URL locations"):
        arraycache.Memory(tmp_path, local_cache=tmp_path / "copies")
    with pytest.raises(TypeError, match="storage_options must be a dict"):
        arraycache.Memory(url, storage_options=[("anon", True)])
    with pytest.raises(ValueError, match="knows no protocol"):
        arraycache.Memory("nosuchprotocol://bucket/prefix")


def test_an_unreachable_server_warns_and_computes(bucket):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    memory = arraycache.Memory(f"s3://{bucket}/cache", verbose=0, storage_options={
        "key": "testing", "secret": "testing", "endpoint_url": f"http://127.0.0.1:{port}",
        "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 2}})
    f = memory.cache(make)
    with pytest.warns(CacheWarning, match="cannot use cache location"):
        np.testing.assert_array_equal(f(1.0), make(1.0))


BLOCK_S3FS = "import sys; sys.modules['s3fs'] = None; "


def test_without_s3fs_the_error_names_the_extra(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", BLOCK_S3FS + "import arraycache; arraycache.Memory('s3://b/p')"],
        capture_output=True, text=True)
    assert proc.returncode == 1
    assert "ImportError" in proc.stderr and "pip install arraycache[s3]" in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-c", BLOCK_S3FS + "from arraycache.cli import main; "
         "sys.exit(main(['ls', 's3://b/p']))"], capture_output=True, text=True)
    assert proc.returncode == 2 and "pip install arraycache[s3]" in proc.stderr


# --- the command line ------------------------------------------------------------------------


def cli(*args, env=None, status=0):
    proc = subprocess.run([sys.executable, "-m", "arraycache", *map(str, args)],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, **CREDENTIALS, **(env or {})})
    assert proc.returncode == status, (proc.stdout, proc.stderr)
    return proc


def square(x):
    return np.full(20_000, float(x)) ** 2


def table(n):
    return {"m": np.ones((50, 40)) * n, "label": f"t{n}"}


@pytest.fixture
def filled(url, opts):
    """square: 1, 2, 3 stored, 1 hit twice; table: 7 stored."""
    memory = quiet_memory(url, opts)
    square_, table_ = memory.cache(square), memory.cache(table)
    for x in (1, 2, 3, 1, 1):
        square_(x)
    table_(7)
    return memory, square_, table_


@pytest.mark.slow
def test_cli_ls_and_du_on_a_url(url, endpoint, s3, filled, machine):
    _, square_, table_ = filled
    option = ["--storage-option", f"endpoint_url={endpoint}"]
    env = {"XDG_CACHE_HOME": str(machine)}
    listed = json.loads(cli("ls", url, *option, "--json", env=env).stdout)
    assert listed["location"] == url
    sizes = listing(s3, url)
    for func, count in ((square_, 3), (table_, 1)):
        row = listed["functions"][func.func_id]
        assert row["entries"] == count
        assert row["bytes"] == sum(n for k, n in sizes.items()
                                   if k.startswith(func.func_id + "/") and k.count("/") >= 3)
    # This machine's bookkeeping (the same folder as the test's): the two hits of 1.
    assert listed["functions"][square_.func_id]["hits"] == 2
    text = cli("ls", url, *option, env=env).stdout
    assert text.splitlines()[-1].split()[:2] == ["total", "4"]
    one = json.loads(cli("ls", url, square_.func_id, *option, "--json", env=env).stdout)
    assert sorted(e["args"]["x"] for e in one["entries"]) == ["1", "2", "3"]

    du = json.loads(cli("du", url, *option, "--json", env=env).stdout)
    assert du["entries"] == 4 and du["free_bytes"] is None
    assert du["bytes"] + du["other_bytes"] == sum(sizes.values())
    assert "not known for object storage" in cli("du", url, *option, env=env).stdout

    # The endpoint from the environment instead (botocore reads AWS_ENDPOINT_URL).
    listed = json.loads(cli("ls", url, "--json", env={**env, "AWS_ENDPOINT_URL": endpoint})
                        .stdout)
    assert {fid: f["entries"] for fid, f in listed["functions"].items()} == {
        square_.func_id: 3, table_.func_id: 1}


@pytest.mark.slow
def test_cli_verify_and_prune_on_a_url(url, endpoint, s3, filled, machine):
    memory, square_, _ = filled
    option = ["--storage-option", f"endpoint_url={endpoint}"]
    assert json.loads(cli("verify", url, *option, "--json").stdout)["checked"] == 4
    damaged = next(e for e in memory._store().entries() if e.function == square_.func_id)
    damage_flipped_byte(s3, entry_url(url, damaged))
    report = json.loads(cli("verify", url, *option, "--json", status=1).stdout)
    assert [d["entry"] for d in report["damaged"]] == [entry_url(url, damaged)]
    cli("verify", url, *option, "--repair", status=0)
    assert len(list(memory._store().entries())) == 3

    # A dead writer's part of an entry and its claim (old), then eviction to 1 entry.
    s3.pipe(f"{url}/{square_.func_id}/{'d' * 32}/a0/c/0", b"partial")
    s3.pipe(f"{url}/{square_.func_id}/{'d' * 32}.claim", b"{}")
    out = cli("prune", url, *option, "--min-age", "0", "--items-limit", "1",
              env={"XDG_CACHE_HOME": str(machine)}).stdout
    assert "removed 2 leftover temporary folders and evicted 2 entries" in out, out
    assert len(list(memory._store().entries())) == 1
    assert not any("d" * 32 in k for k in listing(s3, url))


def test_cli_refuses_what_is_not_a_cache_and_other_commands(url, endpoint, bucket, s3):
    option = ["--storage-option", f"endpoint_url={endpoint}"]
    err = cli("ls", f"s3://{bucket}/nothing", *option, status=2).stderr
    assert "is not an arraycache location" in err
    assert not listing(s3, f"s3://{bucket}/nothing")  # looked, wrote nothing
    err = cli("stats", url, status=2).stderr
    assert "stats works on local folders" in err and "ls, du, verify, prune take URLs" in err
    err = cli("ls", url, "--storage-option", "nonsense", status=2).stderr
    assert "KEY=VALUE" in err
