"""Function identity, source digest and argument binding for cached functions."""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Iterable
from typing import Any

import xxhash

from .hashing import code_fingerprint

__all__ = ["FunctionInfo"]

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def _folder_name(part: str) -> str:
    """A file-system friendly spelling of a module or qualified name."""
    return _UNSAFE.sub("-", part).strip("-.") or "-"


def _source_digest(func: Callable) -> str:
    """Digest of the function's source text, or of its code when there is no source.

    The source, not the code object, is used for the common case because it is the
    same across Python processes and notebook kernel restarts (where file names of
    cells change) and it changes when a comment or a default changes, as in joblib.
    """
    try:
        source = inspect.getsource(func)
    except (OSError, TypeError):
        code = getattr(func, "__code__", None)
        source = repr(code_fingerprint(code)) if code is not None else repr(func)
    return xxhash.xxh3_128_hexdigest(source.encode())


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
        self.qualname = getattr(target, "__qualname__", None) or type(func).__qualname__
        self.signature = inspect.signature(func)
        params = self.signature.parameters.values()
        takes_any_keyword = any(p.kind is p.VAR_KEYWORD for p in params)
        unknown = self.ignore - set(self.signature.parameters)
        if unknown and not takes_any_keyword:
            raise ValueError(
                f"ignore={sorted(unknown)} names arguments that {self.qualname}() does not have"
            )
        self.code_digest = _source_digest(target)

    @property
    def name(self) -> str:
        """``module.qualname``, as shown in messages."""
        return f"{self.module}.{self.qualname}"

    @property
    def folder(self) -> tuple[str, str]:
        """Relative folder of the function's entries: (module, qualname)."""
        return _folder_name(self.module), _folder_name(self.qualname)

    def bind(self, args: tuple, kwargs: dict) -> dict[str, Any]:
        """Arguments by name with defaults applied and ignored ones removed.

        Positional and keyword spellings of the same call give the same dict.

        Raises
        ------
        TypeError
            If the arguments do not match the signature.
        """
        bound = self.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        arguments = bound.arguments
        if inspect.ismethod(self.func):
            # The instance is an argument too (as in joblib): two objects, two results.
            arguments = {"__self__": self.func.__self__, **arguments}
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
