"""Function identity, code digest and argument binding for cached functions."""

from __future__ import annotations

import functools
import inspect
import os
import re
import sys
import types
from collections.abc import Callable, Iterable
from typing import Any

import xxhash

from .codedigest import CodeVersion, is_user_file
from .exceptions import WrongArgumentsError

__all__ = ["FunctionInfo"]

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def _folder_name(part: str) -> str:
    """A file-system friendly spelling of a module or qualified name (a script's path
    too), short enough for any file system."""
    name = _UNSAFE.sub("-", part).strip("-.") or "-"
    if len(name) > 150:
        name = f"{name[:60]}-{xxhash.xxh3_64_hexdigest(name)}-{name[-60:]}"
    return name


def _script_path(func: Callable) -> str | None:
    """The file of a function defined in a script run as ``__main__``; None for a
    notebook cell, ``python -c``, stdin or ``exec``."""
    code = getattr(func, "__code__", None)
    filename = getattr(code, "co_filename", "") or ""
    if filename == _CLOUDPICKLED:
        # Rebuilt in a worker process, which has lost the file: the script is the one
        # the process that started the workers runs.
        return os.environ.get(_MAIN_SCRIPT) or None
    if filename.startswith("<") or _NOTEBOOK_CELL.search(filename):
        return None
    return os.path.realpath(filename)


# ipykernel writes each cell to <tmp>/ipykernel_<pid>/<digest of the cell>.py
_NOTEBOOK_CELL = re.compile(r"[/\\]ipykernel_\d+[/\\][^/\\]+\.py$")
# cloudpickle sends functions of __main__ by value, with this as their file name.
_CLOUDPICKLED = "<dynamic-code>"
_MAIN_SCRIPT = "ARRAYCACHE_MAIN_SCRIPT"


def _note_main_script() -> None:
    """Tell worker processes (which inherit the environment) which script the main
    process runs: "" for a notebook or an interactive session.  Processes whose
    ``__main__`` is not the user's (loky and multiprocessing workers, pytest, a Jupyter
    kernel) keep what they inherited."""
    main = sys.modules.get("__main__")
    filename = getattr(main, "__file__", None)
    if filename is None:  # python -c, a REPL, a notebook (a kernel's __main__ has no file)
        os.environ[_MAIN_SCRIPT] = ""
    elif is_user_file(filename) and getattr(main, "__name__", "") == "__main__":
        os.environ[_MAIN_SCRIPT] = os.path.realpath(filename)


_note_main_script()


class FunctionInfo:
    """What the cache needs to know about one function.

    Parameters
    ----------
    func : callable
        The function to cache.
    ignore : iterable of str, optional
        Names of arguments that do not take part in the cache key.
    """

    def __init__(self, func: Callable, ignore: Iterable[str] | None = None) -> None:
        self.func = func
        self.ignore = frozenset(ignore or ())
        target = func.func if isinstance(func, functools.partial) else inspect.unwrap(func)
        self.module = getattr(target, "__module__", None) or "__unknown__"
        if self.module == "__main__":
            # Scripts are told apart by their path, as in joblib: exp2.py, a copy of
            # exp1.py, must not get exp1's results.  Notebook cells are not: the same
            # function hits across cells, re-runs and kernel restarts (its code and
            # the user code it calls are in the key).
            script = _script_path(target)
            if script is not None:
                self.module = f"__main__-{script.removesuffix('.py')}"
        self.qualname = getattr(target, "__qualname__", None) or type(func).__qualname__
        self.signature = inspect.signature(func)
        params = self.signature.parameters.values()
        takes_any_keyword = any(p.kind is p.VAR_KEYWORD for p in params)
        unknown = self.ignore - set(self.signature.parameters)
        if unknown and not takes_any_keyword:
            raise ValueError(
                f"ignore={sorted(unknown)} names arguments that {self.qualname}() does not have"
            )
        self.code = CodeVersion(func)
        # Parameters a call can bind without inspect's Signature.bind (~3 us): only
        # positional-or-keyword ones, the usual case.
        plain = all(p.kind is p.POSITIONAL_OR_KEYWORD for p in params)
        self._names = tuple(self.signature.parameters) if plain else None
        self._defaults = {p.name: p.default for p in params if p.default is not p.empty}
        self._folder: tuple[tuple[str, str], tuple[str, str]] | None = None
        # Values a call depends on besides its arguments: the instance of a bound
        # method or callable object, the bound arguments of a partial.
        self.hidden: dict[str, Any] = {}
        if inspect.ismethod(func):
            self.hidden["__self__"] = func.__self__  # two objects, two results (as joblib)
        elif isinstance(func, functools.partial):
            self.hidden["__partial__"] = (func.args, func.keywords)
        elif not isinstance(func, (types.FunctionType, types.BuiltinFunctionType, type)):
            self.hidden["__self__"] = func  # a callable instance

    @property
    def code_digest(self) -> str:
        """Digest of the code the function runs (its own and the user code it calls);
        re-checked on each access, recomputed when any of it changed."""
        return self.code.digest

    @property
    def name(self) -> str:
        """``module.qualname``, as shown in messages."""
        return f"{self.module}.{self.qualname}"

    @property
    def folder(self) -> tuple[str, str]:
        """Relative folder of the function's entries: (module, qualname)."""
        names = (self.module, self.qualname)  # both may be reassigned (see _rebuild)
        if self._folder is None or self._folder[0] != names:
            self._folder = (names, (_folder_name(self.module), _folder_name(self.qualname)))
        return self._folder[1]

    def bind(self, args: tuple, kwargs: dict) -> dict[str, Any]:
        """Arguments by name with defaults applied and ignored ones removed.

        Positional and keyword spellings of the same call give the same dict.

        Raises
        ------
        WrongArgumentsError
            If the arguments do not match the signature (a TypeError and a ValueError).
        """
        arguments = self._bind_plain(args, kwargs) if self._names is not None else None
        if arguments is None:
            try:
                bound = self.signature.bind(*args, **kwargs)
            except TypeError as exc:
                raise WrongArgumentsError(f"{self.qualname}(): {exc}") from None
            bound.apply_defaults()
            arguments = bound.arguments
        if self.hidden:
            arguments = {**self.hidden, **arguments}
        for name, param in self.signature.parameters.items():
            if param.kind is param.VAR_KEYWORD and name in arguments:
                # **kwargs are matched by name like the other keywords.
                extra = arguments.pop(name)
                for key, value in extra.items():
                    arguments[f"**{key}"] = value
        for name in self.ignore:
            arguments.pop(name, None)
            arguments.pop(f"**{name}", None)
        return arguments

    def _bind_plain(self, args: tuple, kwargs: dict) -> dict[str, Any] | None:
        """What ``Signature.bind`` + ``apply_defaults`` give for a function whose
        parameters are all positional-or-keyword; None for a call that does not fit (an
        error, which ``Signature.bind`` then reports)."""
        names = self._names
        if len(args) > len(names):
            return None
        arguments = dict(zip(names, args, strict=False))  # fewer args: the rest below
        if len(args) < len(names):
            used = 0
            for name in names[len(args):]:
                if name in kwargs:
                    arguments[name] = kwargs[name]
                    used += 1
                elif name in self._defaults:
                    arguments[name] = self._defaults[name]
                else:
                    return None  # missing
            if used != len(kwargs):
                return None  # unknown keyword, or one given positionally too
        elif kwargs:
            return None
        return arguments
