"""Local copies of a remote location's entries (``Memory(url, local_cache=...)``).

A copy is the entry's folder as in a local location, plus a manifest naming the
metadata it was downloaded for and its files' sizes.  It is checked against its
digests in full when it is downloaded (and at its first use after a reboot, like a
local entry), then served as is while the bucket's metadata still matches: a hit
costs one metadata request and memory-maps the copy.  Copies are replaced by
renaming, so a process that maps the old files keeps them.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .liveness import OWNED, remove_if_abandoned
from .store import _TMP, _TRASH, _dead_deleter, boot_id, temporary

__all__ = ["LocalCopies"]

_MANIFEST = ".arraycache-copy.json"
#: Where writes are staged beside the copies (same file system: renamed into a copy).
STAGING = ".staging"


class LocalCopies:
    """The folder of local copies of one remote location.

    Parameters
    ----------
    root : Path
        The folder (created when the first copy is made).
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        """The copy of the entry ``module/qualname/key``."""
        return self.root / key

    def get(self, key: str, meta: dict[str, Any],
            download: Callable[[Path], dict[str, int]]) -> Path:
        """The checked copy of the entry ``key`` whose metadata is ``meta``; made with
        ``download(folder) -> {file: size}`` when missing, outdated or cut short.

        Raises
        ------
        persistence.EntryDamaged
            If the downloaded files do not match their digests.
        """
        from . import persistence  # a downloaded copy is checked in full, once

        copy = self.path(key)
        wanted = {k: v for k, v in meta.items() if k != "boot"}
        boot = boot_id()
        try:
            manifest = json.loads((copy / _MANIFEST).read_text())
            same = manifest["meta"] == wanted and all(
                os.stat(copy / name).st_size == size for name, size in manifest["files"].items()
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            same, manifest = False, None
        if same and manifest.get("boot") == boot:
            return copy
        if same and not persistence.verify(copy, meta):  # first use after a reboot
            manifest["boot"] = boot
            _write_manifest(copy, manifest)
            return copy
        copy.parent.mkdir(parents=True, exist_ok=True)
        tmp = OWNED.make(temporary(copy))
        try:
            files = download(tmp)
            problems = persistence.verify(tmp, meta)
            if problems:
                raise persistence.EntryDamaged(problems[0])
            _write_manifest(tmp, {"meta": wanted, "files": files, "boot": boot})
            _replace_folder(tmp, copy)
        except BaseException:
            OWNED.remove(tmp)
            raise
        OWNED.release(tmp)
        return copy

    def keep(self, folder: Path, key: str, group_json: bytes) -> None:
        """Make ``folder``, just uploaded as the entry ``key`` with the group metadata
        ``group_json``, its copy (moved, not copied: no download later)."""
        meta = json.loads(group_json)["attributes"]["arraycache"]
        meta.pop("boot", None)
        files = {p.relative_to(folder).as_posix(): p.stat().st_size
                 for p in local_files(folder)}
        _write_manifest(folder, {"meta": meta, "files": files, "boot": boot_id()})
        copy = self.path(key)
        copy.parent.mkdir(parents=True, exist_ok=True)
        _replace_folder(folder, copy)

    def remove(self, key: str) -> None:
        """Remove the copy of one entry, or of a function (``module/qualname``)."""
        remove_folder(self.path(key))

    def clear(self) -> None:
        """Remove every copy (writes being staged stay)."""
        for module in subfolders(self.root):
            if module.name != STAGING:
                remove_folder(module)

    def prune(self, wanted: set[str], min_age: float) -> int:
        """Remove copies of entries not in ``wanted`` (``module/qualname/key``) and
        temporary folders of dead processes; return how many."""
        removed = 0
        for module in subfolders(self.root):
            if module.name == STAGING:
                continue
            for function in subfolders(module):
                for copy in subfolders(function):
                    name = copy.name
                    if _TMP in name:
                        removed += remove_if_abandoned(copy, min_age)
                    elif _TRASH in name:
                        if _dead_deleter(copy, min_age):
                            shutil.rmtree(copy, ignore_errors=True)
                            removed += 1
                    elif f"{module.name}/{function.name}/{name}" not in wanted:
                        remove_folder(copy)
                        removed += 1
        return removed


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    tmp = temporary(folder / _MANIFEST)
    tmp.write_text(json.dumps(manifest))
    os.replace(tmp, folder / _MANIFEST)


def _replace_folder(new: Path, final: Path) -> None:
    """Rename ``new`` to ``final``, moving a folder already there out of the way."""
    for _ in range(3):
        try:
            os.rename(new, final)
            return
        except OSError:
            if not final.exists():
                raise
            remove_folder(final)
    raise OSError(f"cannot replace {final}")


def remove_folder(folder: Path) -> None:
    """Remove a folder by renaming it away first (another process may be reading it)."""
    trash = folder.with_name(f"{folder.name}{_TRASH}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(folder, trash)
    except OSError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def local_files(folder: Path) -> list[Path]:
    """Every file under ``folder``, sorted."""
    return sorted(p for p in folder.rglob("*") if p.is_file())


def subfolders(folder: Path) -> list[Path]:
    """The folders in ``folder`` (none if it is gone)."""
    try:
        with os.scandir(folder) as it:
            return [Path(e.path) for e in it if e.is_dir(follow_symlinks=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []
