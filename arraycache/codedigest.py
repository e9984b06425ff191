"""The code a function runs: its own and the user code it reaches, as one digest.

A cached result is valid for the code that computed it.  That is the function's
bytecode (with its signature and constants), and transitively the functions and
classes *of the user's own code* (not the standard library, not installed
packages) that it reaches by name: globals, attributes of user modules, closure
cells, defaults, methods and bases of classes; plus the simple module-level
constants (numbers, strings, tuples of them...) those functions read.  An edit to
any of them changes the digest; reverting all of them restores it.

Bytecode rather than source text: it is what runs (a source file edited on disk
but not re-imported still runs the old code), it exists for functions without a
readable source (``exec``, cloudpickled into a worker, a notebook cell after a
restart) and it does not change with line numbers or comments.

Closure values and default values are covered by content (hashed when the digest
is computed), except lists, dicts, sets, deques and bytearrays: those are usually
state the function changes (a counter, a log, a memo), and hashing them would make
the key depend on when it was first computed.

Not tracked (documented for users): calls through dynamic dispatch (``obj.method``
on an instance, ``getattr``), mutable globals (lists, dicts, arrays, instances:
their content can change without any rebinding) and mutable closure values, data
files, installed packages, and the interpreter version beyond what bytecode shows.

Cost: a digest is computed once per function object, then each call re-checks, by
identity only, the code objects, global bindings and closure cells it was made
from (a few hundred nanoseconds for a handful of helpers); any change recomputes it.
"""

from __future__ import annotations

import collections
import functools
import os
import site
import sys
import sysconfig
import types
from collections.abc import Callable
from typing import Any

from . import hashing

__all__ = ["CodeVersion", "code_fingerprint", "is_user_code", "is_user_file"]

#: A walk stops adding functions past this many: a guard against walking a whole
#: library that happens to be importable from outside site-packages.
MAX_FUNCTIONS = 2000

_ABSENT = object()
_EMPTY_CELL = object()
_SIMPLE = (type(None), bool, int, float, complex, str, bytes, type(Ellipsis))
_STATE = (list, dict, set, bytearray, collections.deque)


# --- bytecode --------------------------------------------------------------------------------


def code_fingerprint(code: types.CodeType) -> tuple:
    """What a code object does, independent of its file name and line numbers.

    The signature is part of it: ``lambda a, b: a - b`` and ``lambda b, a: b - a``
    compile to the same bytecode, yet differ when called by keyword.
    """
    consts = tuple(_const_fingerprint(c) for c in code.co_consts)
    signature = (
        code.co_argcount, code.co_posonlyargcount, code.co_kwonlyargcount, code.co_flags,
        code.co_varnames, code.co_freevars, code.co_cellvars,
    )
    return (code.co_code, consts, code.co_names, signature)


def _const_fingerprint(const: Any) -> Any:
    if isinstance(const, types.CodeType):
        return code_fingerprint(const)
    if isinstance(const, frozenset):
        # ``x in {"a", "b"}`` compiles to a frozenset constant, whose iteration
        # order (hence pickle and repr) depends on PYTHONHASHSEED.
        return ("frozenset", tuple(sorted(const, key=repr)))
    if isinstance(const, tuple):
        return tuple(_const_fingerprint(c) for c in const)
    return const


def _names(code: types.CodeType) -> set[str]:
    """Global and attribute names used by ``code`` and the code nested in it."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names(const)
    return names


# --- what counts as the user's code ----------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _installed_prefixes() -> tuple[str, ...]:
    """Folders of the standard library, installed packages and arraycache itself."""
    paths = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    paths.update(getattr(site, "getsitepackages", list)())
    paths.add(site.getusersitepackages())
    paths.add(os.path.dirname(os.path.abspath(__file__)))
    return tuple(os.path.join(os.path.realpath(p), "") for p in paths if p)


@functools.lru_cache(maxsize=4096)
def is_user_file(filename: str) -> bool:
    """Whether ``filename`` is the user's own code (not the standard library, installed
    packages or arraycache)."""
    if filename.startswith("<"):
        # <ipython-input-...>, <string> (exec), <stdin>... but not <frozen importlib...>.
        return not filename.startswith("<frozen")
    return not os.path.realpath(filename).startswith(_installed_prefixes())


def is_user_code(obj: Any) -> bool:
    """Whether ``obj`` (a function, class or module) belongs to the user's own code."""
    if isinstance(obj, types.FunctionType):
        # Both its module and its file must be the user's: a library function rebuilt
        # by value (cloudpickle gives it the file "<dynamic-code>") keeps its module.
        module = sys.modules.get(getattr(obj, "__module__", None) or "")
        if module is not None and module.__name__ != "__main__":
            filename = getattr(module, "__file__", None)
            if filename is None or not is_user_file(filename):
                return False
        return is_user_file(obj.__code__.co_filename)
    if isinstance(obj, type):
        module = sys.modules.get(getattr(obj, "__module__", None) or "")
    elif isinstance(obj, types.ModuleType):
        module = obj
    else:
        return False
    if module is None:
        return False
    if module.__name__ == "__main__":
        return True
    filename = getattr(module, "__file__", None)
    return filename is not None and is_user_file(filename)


# --- the walk --------------------------------------------------------------------------------


def _qualified(obj: Any) -> str:
    return f"{getattr(obj, '__module__', None)}:{getattr(obj, '__qualname__', repr(obj))}"


def _simple_constant(value: Any) -> bool:
    if isinstance(value, _SIMPLE):
        return True
    if isinstance(value, (tuple, frozenset)):
        return len(value) <= 1000 and all(_simple_constant(v) for v in value)
    import numpy as np  # already imported by hashing; here for the isinstance only

    return isinstance(value, (np.generic, np.dtype)) and not isinstance(value, np.object_)


def _underlying_function(value: Any) -> types.FunctionType | None:
    if isinstance(value, (staticmethod, classmethod)):
        value = value.__func__
    return value if isinstance(value, types.FunctionType) else None


class _Walk:
    """Collects the fingerprints of everything a function reaches, and the identity
    checks that tell, later, whether any of it changed."""

    def __init__(self) -> None:
        self.parts: dict[str, Any] = {}
        self.codes: list[tuple[types.FunctionType, types.CodeType, Any, Any]] = []
        self.bindings: list[tuple[Any, str, Any]] = []
        self.cells: list[tuple[types.CellType, Any]] = []
        self.bound: set[tuple[int, str]] = set()
        self.seen: set[int] = set()
        self.keep: list[Any] = []  # ids in `seen` must stay unique while walking
        self.uncovered: list[str] = []  # values that could not be hashed

    def _bind(self, namespace: Any, name: str, value: Any) -> None:
        """Check later that ``namespace[name]`` is still ``value`` (once per pair)."""
        key = (id(namespace), name)
        if key not in self.bound:
            self.bound.add(key)
            self.bindings.append((namespace, name, value))

    def _first_visit(self, obj: Any) -> bool:
        if id(obj) in self.seen:
            return False
        self.seen.add(id(obj))
        self.keep.append(obj)
        return True

    def visit(self, obj: Any) -> None:
        """Walk whatever user code ``obj`` stands for (function, class, wrapper...)."""
        for _ in range(100):  # a __wrapped__ chain is short; a cycle must not hang
            if isinstance(obj, types.MethodType):
                self.visit(obj.__self__ if isinstance(obj.__self__, type) else
                              type(obj.__self__))
                obj = obj.__func__
            if isinstance(obj, types.FunctionType):
                if is_user_code(obj):
                    self.visit_function(obj)
            elif isinstance(obj, type):
                if is_user_code(obj):
                    self.visit_class(obj)
            elif isinstance(obj, functools.partial):
                self.visit(obj.func)
            wrapped = getattr(obj, "__wrapped__", None) if not isinstance(obj, type) else None
            if wrapped is None or wrapped is obj:
                return
            obj = wrapped

    def visit_function(self, func: types.FunctionType) -> None:
        if not self._first_visit(func) or len(self.codes) >= MAX_FUNCTIONS:
            return
        code = func.__code__
        self.codes.append((func, code, func.__defaults__, func.__kwdefaults__))
        name = _qualified(func)
        fingerprint: list[Any] = [code_fingerprint(code)]
        for i, default in enumerate(func.__defaults__ or ()):
            fingerprint.append(self._value(default, f"default {i} of {name}"))
        for key, default in sorted((func.__kwdefaults__ or {}).items()):
            fingerprint.append((key, self._value(default, f"default {key!r} of {name}")))
        for var, cell in zip(code.co_freevars, func.__closure__ or (), strict=True):
            fingerprint.append((var, self._cell(cell, f"closure variable {var!r} of {name}")))
        self.parts[f"function {name}"] = fingerprint
        self.visit_globals(func.__globals__, _names(code), func.__module__)

    def _cell(self, cell: types.CellType, what: str) -> Any:
        try:
            value = cell.cell_contents
        except ValueError:  # not assigned yet
            self.cells.append((cell, _EMPTY_CELL))
            return None
        self.cells.append((cell, value))
        if isinstance(value, functools.partial):
            self.visit(value)
            return _qualified(value.func), self._value((value.args, value.keywords), what)
        if isinstance(value, (types.FunctionType, type, types.MethodType)):
            self.visit(value)
            return _qualified(value)
        return self._value(value, what)

    def _value(self, value: Any, what: str) -> Any:
        if isinstance(value, _STATE):
            # A list, dict or set captured by a closure or held as a default is usually
            # state (a counter, a log, a memo) that the function itself changes: hashing
            # it would make the key depend on when it was first computed.  Not covered,
            # like mutable module globals.
            return ("state", type(value).__qualname__)
        try:
            return hashing.hash(value)
        except (TypeError, ValueError):
            # A lock, an open file...: rarely what decides a result, and refusing to
            # cache would break working code.  The caller warns that it is not covered.
            self.uncovered.append(f"{what} ({type(value).__qualname__})")
            return ("not hashable", type(value).__qualname__)

    def visit_class(self, cls: type) -> None:
        if not self._first_visit(cls) or len(self.codes) >= MAX_FUNCTIONS:
            return
        attributes: list[Any] = [[_qualified(base) for base in cls.__bases__]]
        namespace = vars(cls)
        for attr in sorted(namespace):
            value = namespace[attr]
            parts = (
                [value.fget, value.fset, value.fdel] if isinstance(value, property)
                else [_underlying_function(value)]
            )
            if any(p is not None for p in parts):
                for part in parts:
                    if part is not None:
                        self.visit(part)
                attributes.append((attr, [_qualified(p) for p in parts if p is not None]))
            elif isinstance(value, type):
                self.visit(value)
                attributes.append((attr, _qualified(value)))
            elif _simple_constant(value):
                attributes.append((attr, value))
            else:
                continue  # descriptors, mutable class attributes: not covered
            self._bind(namespace, attr, value)
        self.parts[f"class {_qualified(cls)}"] = attributes
        for base in cls.__mro__[1:]:
            self.visit(base)

    def visit_globals(self, namespace: dict, names: set[str], module_name: str | None) -> None:
        for name in sorted(names):
            value = namespace.get(name, _ABSENT)
            if value is _ABSENT:
                continue
            if isinstance(value, types.ModuleType):
                if is_user_code(value) and self._first_visit(value):
                    self._bind(namespace, name, value)
                    # ``helpers.clean(x)``: the attribute names of the code, looked up
                    # in the user module.
                    self.visit_globals(vars(value), names, value.__name__)
            elif _simple_constant(value):
                self._bind(namespace, name, value)
                self.parts[f"constant {module_name}.{name}"] = value
            elif callable(value) and (
                isinstance(value, (types.FunctionType, type, functools.partial))
                or hasattr(value, "__wrapped__")
            ):
                self._bind(namespace, name, value)
                self.visit(value)
                if isinstance(value, functools.partial):
                    self.parts[f"partial {module_name}.{name}"] = self._value(
                        (value.args, value.keywords), f"the arguments of partial {name!r}"
                    )


class CodeVersion:
    """The digest of the code ``func`` runs, recomputed only when that code changes.

    Parameters
    ----------
    func : callable
        A function, bound method, class, callable instance or ``functools.partial``.
        Only its code is covered here: the instance of a bound method or callable
        object and the arguments of a partial are the caller's to put in a key.
    """

    def __init__(self, func: Callable) -> None:
        self.func = func
        self._digest: str | None = None
        self._walk: _Walk | None = None
        #: Values reached that could not be hashed (and so are not covered).
        self.uncovered: list[str] = []

    def _unchanged(self) -> bool:
        walk = self._walk
        if walk is None:
            return False
        for func, code, defaults, kwdefaults in walk.codes:
            if (func.__code__ is not code or func.__defaults__ is not defaults
                    or func.__kwdefaults__ is not kwdefaults):
                return False
        for namespace, name, value in walk.bindings:
            if namespace.get(name, _ABSENT) is not value:
                return False
        for cell, value in walk.cells:
            try:
                if cell.cell_contents is not value:
                    return False
            except ValueError:
                if value is not _EMPTY_CELL:
                    return False
        return True

    @property
    def digest(self) -> str:
        """Hex digest of the code; checked for changes on every access."""
        if self._digest is None or not self._unchanged():
            walk = _Walk()
            target = self.func
            if not isinstance(target, (types.FunctionType, type, types.MethodType,
                                       functools.partial)) and not hasattr(target, "__wrapped__"):
                target = type(target)  # a callable instance: its class's code
            walk.visit(target)
            walk.keep.clear()
            self._digest = hashing.hash(sorted(walk.parts.items()))
            self._walk = walk
            self.uncovered = walk.uncovered
        return self._digest

    @property
    def functions(self) -> list[str]:
        """Qualified names of the functions and classes the digest covers."""
        self.digest  # noqa: B018 - brings the walk up to date
        assert self._walk is not None
        return sorted(k.split(" ", 1)[1] for k in self._walk.parts
                      if k.startswith(("function ", "class ")))
