"""joblib behaviour that code written for ``joblib.Memory`` and ``joblib.hash`` relies on."""

from __future__ import annotations

import datetime
import logging
import subprocess
from pathlib import Path

import joblib
import numpy as np
import pytest

import arraycache


@pytest.mark.parametrize("lib", [joblib, arraycache], ids=["joblib", "arraycache"])
def test_too_many_positional_arguments_raise_value_error(lib, tmp_path: Path) -> None:
    cached = lib.Memory(tmp_path, verbose=0).cache(lambda x: x)
    with pytest.raises(ValueError):
        cached(1, 2)


def test_wrong_arguments_are_also_a_type_error(memory) -> None:
    cached = memory.cache(lambda x: x)
    with pytest.raises(TypeError, match="positional"):
        cached(1, 2)
    with pytest.raises(arraycache.WrongArgumentsError, match="missing"):
        cached()


@pytest.mark.parametrize("lib", [joblib, arraycache], ids=["joblib", "arraycache"])
def test_unknown_backend_is_a_type_error(lib, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="unknown"):
        lib.Memory(tmp_path, backend="unknown")


@pytest.mark.parametrize("lib", [joblib, arraycache], ids=["joblib", "arraycache"])
def test_non_callable_validation_callback_is_a_value_error(lib, tmp_path: Path) -> None:
    memory = lib.Memory(tmp_path, verbose=0)
    with pytest.raises(ValueError, match="callable"):
        memory.cache(cache_validation_callback="yes")
    with pytest.raises(ValueError, match="callable"):
        memory.cache(lambda x: x, cache_validation_callback=1)


@pytest.mark.parametrize("lib", [joblib, arraycache], ids=["joblib", "arraycache"])
def test_negative_age_limit_is_a_value_error(lib, tmp_path: Path) -> None:
    memory = lib.Memory(tmp_path, verbose=0)
    memory.cache(lambda x: x)(1)
    with pytest.raises(ValueError, match="age_limit"):
        memory.reduce_size(age_limit=datetime.timedelta(seconds=-1))


def test_new_cache_folder_is_ignored_by_git(tmp_path: Path) -> None:
    location = tmp_path / "repo" / "cache"
    (tmp_path / "repo").mkdir()
    subprocess.run(["git", "init", "-q"], cwd=tmp_path / "repo", check=True)
    memory = arraycache.Memory(location, verbose=0)
    memory.cache(lambda x: np.arange(x))(10)
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"],
                            cwd=tmp_path / "repo", capture_output=True, text=True, check=True)
    assert status.stdout == ""
    assert (location / ".gitignore").read_text().splitlines()[-1] == "*"
    memory.clear(warn=False)
    assert (location / ".gitignore").exists()
    # A .gitignore the user edited is left alone.
    (location / ".gitignore").write_text("mine\n")
    arraycache.Memory(location, verbose=0).cache(lambda x: x)(1)
    assert (location / ".gitignore").read_text() == "mine\n"


def test_verbose_calls_are_logged(location: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="arraycache")
    loud = arraycache.Memory(location, verbose=10).cache(lambda x: x * 2)
    assert loud(3) == 6
    assert [r.name for r in caplog.records if "Querying" in r.getMessage()] == [
        "arraycache.memory"
    ]
    caplog.clear()
    quiet = arraycache.Memory(location, verbose=0).cache(lambda x: x * 2)
    assert quiet(3) == 6
    assert not any("Querying" in r.getMessage() for r in caplog.records)


def test_hash_names() -> None:
    value = {"a": np.arange(10), "b": [1.5, "x"]}
    assert len(arraycache.hash(value, hash_name="md5")) == len(joblib.hash(value)) == 32
    assert len(arraycache.hash(value, hash_name="sha1")) == 40
    assert arraycache.hash(value, hash_name="md5") != arraycache.hash(value)
    assert arraycache.hash(value, hash_name="md5") == arraycache.hash(value, hash_name="md5")
    other = {"a": np.arange(10), "b": [1.5, "y"]}
    assert arraycache.hash(value, hash_name="md5") != arraycache.hash(other, hash_name="md5")
    with pytest.raises(ValueError, match="hash_name"):
        arraycache.hash(value, hash_name="crc")


def test_coerce_mmap(tmp_path: Path) -> None:
    array = np.arange(100.0)
    mapped = np.memmap(tmp_path / "m.bin", dtype=float, mode="w+", shape=(100,))
    mapped[:] = array
    assert arraycache.hash(mapped) == arraycache.hash(array)  # our default
    assert arraycache.hash(mapped, coerce_mmap=False) != arraycache.hash(array, coerce_mmap=False)
    assert arraycache.hash([mapped], coerce_mmap=False) != arraycache.hash([array])
    del mapped


def test_entry_of_an_older_format_is_recomputed_quietly(location: Path) -> None:
    import json
    import warnings

    calls = []
    memory = arraycache.Memory(location, verbose=0)
    make = memory.cache(lambda n: calls.append(n) or np.arange(n))
    make(3)
    (meta_path,) = [p for p in location.rglob("zarr.json") if p.parent.parent.name != "a0"
                    and "arraycache" in p.read_text()]
    meta = json.loads(meta_path.read_text())
    meta["attributes"]["arraycache"]["format_version"] = 1
    meta_path.write_text(json.dumps(meta))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(make(3), np.arange(3))
        np.testing.assert_array_equal(make(3), np.arange(3))
    assert calls == [3, 3]  # recomputed once, then the replacement hits


def _slow_square(x):
    import time

    time.sleep(0.05)
    return x * x


@pytest.mark.parametrize("lib", [joblib, arraycache], ids=["joblib", "arraycache"])
def test_memorized_result_attributes_as_joblib(lib, tmp_path: Path) -> None:
    cached = lib.Memory(tmp_path, verbose=0).cache(_slow_square)
    result = cached.call_and_shelve(3)
    assert result.get() == 9
    # The identifiers name this function and this call; two calls, two args_ids.
    assert result.func == result.func_id
    assert result.func_id.endswith("/_slow_square")
    assert "test_memory_compat" in result.func_id
    assert result.args_id != cached.call_and_shelve(4).args_id
    # The stored call's metadata: how long it took, and its arguments.
    assert result.duration >= 0.05
    assert result.metadata["duration"] == result.duration
    assert "x" in result.metadata["input_args"]
