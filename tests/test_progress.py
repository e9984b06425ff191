"""Progress of Parallel calls: the tqdm bar of ``progress=``, beside joblib's ``verbose`` lines."""

from __future__ import annotations

import io
import re
import sys

import pytest

from arraycache import Parallel, delayed, parallel_config
from arraycache.parallel import _progress
from arraycache.parallel._progress import ProgressWarning

pytest.importorskip("tqdm")


def _square(x: int) -> int:
    return x * x


def _fail_at(x: int, bad: int) -> int:
    if x == bad:
        raise ValueError(f"task {x} failed")
    return x


# One state of a tqdm bar: "  0%|          | 0/12 [..." or, total unknown, "3task [...".
_STATE = re.compile(r"\s*(?:\d+%\|.*?\| )?(\d+)(?:/(\d+)|task) \[")


def _counts(text: str) -> list[tuple[int, int | None]]:
    """Every (completed, total) state the bar wrote, in order (total None if unknown)."""
    states = []
    for line in re.split(r"[\r\n]", text):
        match = _STATE.match(line)
        if match is not None:
            total = match.group(2)
            states.append((int(match.group(1)), None if total is None else int(total)))
    return states


def _bar(**options):
    buffer = io.StringIO()
    return buffer, {"file": buffer, "mininterval": 0, **options}


@pytest.mark.parametrize("backend", ["threading", "sequential"])
def test_bar_counts_every_task_to_the_total(backend: str) -> None:
    buffer, options = _bar()
    tasks = [delayed(_square)(i) for i in range(12)]
    results = Parallel(n_jobs=2, backend=backend, progress=options)(tasks)
    assert results == [i * i for i in range(12)]
    text = buffer.getvalue()
    assert "12/12" in text
    states = _counts(text)
    # Starts at 0 of the known total, never goes back, ends at the total.
    assert states[0] == (0, 12)
    assert [n for n, _ in states] == sorted(n for n, _ in states)
    assert states[-1] == (12, 12)


def test_bar_in_worker_processes(no_leftover_workers) -> None:
    buffer, options = _bar(desc="squares")
    tasks = [delayed(_square)(i) for i in range(20)]
    assert Parallel(n_jobs=2, progress=options)(tasks) == [i * i for i in range(20)]
    text = buffer.getvalue()
    assert "squares" in text
    assert "20/20" in text


def test_total_unknown_until_all_tasks_are_dispatched() -> None:
    buffer, options = _bar()
    # A generator has no len(): the total is the number of tasks once all are dispatched
    # (two at a time here, so completed tasks are counted before that).
    out = Parallel(n_jobs=2, backend="threading", batch_size=1, pre_dispatch=2,
                   progress=options)(delayed(_square)(i) for i in range(7))
    assert out == [i * i for i in range(7)]
    states = _counts(buffer.getvalue())
    assert states[0] == (0, None)
    assert any(n > 0 and total is None for n, total in states)
    assert states[-1] == (7, 7)


@pytest.mark.parametrize("return_as", ["generator", "generator_unordered"])
def test_bar_with_a_generator(return_as: str) -> None:
    buffer, options = _bar()
    tasks = [delayed(_square)(i) for i in range(9)]
    gen = Parallel(n_jobs=2, backend="threading", return_as=return_as, progress=options)(tasks)
    assert sorted(gen) == [i * i for i in range(9)]
    assert _counts(buffer.getvalue())[-1] == (9, 9)


def test_a_generator_closed_early_ends_its_bar_short() -> None:
    buffer, options = _bar()
    tasks = [delayed(_square)(i) for i in range(50)]
    gen = Parallel(n_jobs=2, backend="threading", return_as="generator", batch_size=1,
                   pre_dispatch=2, progress=options)(tasks)
    assert next(gen) == 0
    gen.close()
    text = buffer.getvalue()
    assert "50/50" not in text
    n, total = _counts(text)[-1]
    assert total == 50 and n < 50
    assert text.endswith("\n")  # closed: tqdm ends a closed bar's line


def test_an_error_ends_the_bar_where_it_stands() -> None:
    buffer, options = _bar()
    with pytest.raises(ValueError, match="task 3 failed"):
        Parallel(n_jobs=1, progress=options)([delayed(_fail_at)(i, 3) for i in range(10)])
    text = buffer.getvalue()
    assert _counts(text)[-1] == (3, 10)
    assert text.endswith("\n")


def test_progress_true_writes_a_bar_to_stderr(capsys) -> None:
    assert Parallel(n_jobs=1, progress=True)(delayed(_square)(i) for i in range(5)) == [
        0, 1, 4, 9, 16,
    ]
    captured = capsys.readouterr()
    assert "5/5" in captured.err
    assert captured.out == ""


def test_parallel_config_sets_progress() -> None:
    buffer, options = _bar()
    with parallel_config(progress=options):
        assert Parallel(n_jobs=1)(delayed(_square)(i) for i in range(4)) == [0, 1, 4, 9]
        # An explicit argument wins over the configuration.
        assert Parallel(n_jobs=1, progress=False)(delayed(_square)(i) for i in range(3)) == [
            0, 1, 4,
        ]
    assert _counts(buffer.getvalue())[-1] == (4, 4)
    assert "3/3" not in buffer.getvalue()


def test_verbose_lines_unchanged_beside_the_bar(capsys) -> None:
    tasks = [delayed(_square)(i) for i in range(6)]
    Parallel(n_jobs=1, verbose=10)(tasks)
    plain = capsys.readouterr().err
    buffer, options = _bar()
    Parallel(n_jobs=1, verbose=10, progress=options)(tasks)
    with_bar = capsys.readouterr().err
    assert "6/6" in buffer.getvalue()
    # The verbose lines are joblib's, the same with a bar (only the times differ).
    times = re.compile(r"[\d.]+(?:s|min)\b")
    assert times.sub("", with_bar) == times.sub("", plain)
    assert plain.count("\n") > 2 and "finished" in plain


def test_without_tqdm_progress_warns_once_and_runs(monkeypatch) -> None:
    # tqdm not installed: importing it fails.
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    monkeypatch.setattr(_progress, "_warned_no_tqdm", [False])
    with pytest.warns(ProgressWarning, match=r"tqdm.*not installed") as record:
        first = Parallel(n_jobs=1, progress=True)(delayed(_square)(i) for i in range(3))
        second = Parallel(n_jobs=1, progress=True)(delayed(_square)(i) for i in range(3))
    assert first == second == [0, 1, 4]
    assert len(record) == 1
    assert record[0].filename == __file__  # points at the call


@pytest.mark.parametrize("bad", ["yes", 1, [("desc", "x")], {1: 2}])
def test_bad_progress_is_a_type_error(bad) -> None:
    with pytest.raises(TypeError, match="progress must be"):
        Parallel(progress=bad)
    with pytest.raises(TypeError, match="progress must be"):
        parallel_config(progress=bad)
