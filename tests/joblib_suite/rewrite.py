"""Point a joblib test module's public imports at arraycache, at test time.

A name is redirected when joblib exports it publicly (from ``joblib`` itself or its
public modules ``joblib.memory``, ``joblib.parallel``, ``joblib.hashing``) and
arraycache exports the same name. Everything else (``joblib._store_backends``,
``joblib.memory._FUNCTION_HASHES``, ``joblib.testing``, joblib's backend classes,
``dump``/``load``, ...) stays on joblib. Import statements inside strings (the
scripts some tests run in a subprocess) are rewritten the same way. Line numbers are
kept, so tracebacks point at the same lines as in joblib's file.
"""

from __future__ import annotations

import re
from pathlib import Path

import arraycache

#: Modules whose public names may be redirected.
PUBLIC_MODULES = ("joblib", "joblib.memory", "joblib.parallel", "joblib.hashing")
#: Names joblib's public modules export that arraycache also exports.
REDIRECTED = frozenset(arraycache.__all__) - {"__version__"}

_FROM_IMPORT = re.compile(
    r"^(?P<indent>[ \t]*)from[ \t]+(?P<module>joblib(?:\.\w+)*)[ \t]+import[ \t]+"
    r"(?P<names>\([^)]*\)|[^\n]*)",
    re.MULTILINE,
)
_IMPORT_JOBLIB = re.compile(r"^(?P<indent>[ \t]*)import joblib[ \t]*$", re.MULTILINE)
_ATTRIBUTE = re.compile(r"(?<![\w.])joblib\.(?P<name>\w+)\b")


def _split_names(text: str) -> tuple[list[str], str]:
    """The ``name`` / ``name as alias`` items of an import list, and a trailing comment."""
    comment = ""
    if not text.startswith("("):
        text, _, comment = text.partition("#")
        comment = f"  #{comment.rstrip()}" if comment else ""
    lines = [line.split("#", 1)[0] for line in text.strip("()").splitlines()]
    items = [item.strip() for item in " ".join(lines).split(",")]
    return [item for item in items if item], comment


def _rewrite_from(match: re.Match[str]) -> str:
    module, original = match["module"], match.group(0)
    if module not in PUBLIC_MODULES:
        return original
    items, comment = _split_names(match["names"])
    moved = [item for item in items if item.split(" as ")[0].strip() in REDIRECTED]
    if not moved:
        return original
    kept = [item for item in items if item not in moved]
    statements = [f"from arraycache import {', '.join(moved)}"]
    if kept:
        statements.insert(0, f"from {module} import {', '.join(kept)}")
    newlines = "\n" * original.count("\n")
    return f"{match['indent']}{'; '.join(statements)}{comment}{newlines}"


def _rewrite_attribute(match: re.Match[str]) -> str:
    name = match["name"]
    return f"arraycache.{name}" if name in REDIRECTED else match.group(0)


def rewrite_source(source: str) -> str:
    """Return ``source`` with joblib's public API it imports taken from arraycache."""
    source = _FROM_IMPORT.sub(_rewrite_from, source)
    if _IMPORT_JOBLIB.search(source):
        source = _IMPORT_JOBLIB.sub(r"\g<indent>import joblib; import arraycache", source)
        source = _ATTRIBUTE.sub(_rewrite_attribute, source)
    return source


def rewrite_module(source_path: Path, target_dir: Path) -> Path:
    """Write the rewritten copy of the test module ``source_path`` into ``target_dir``."""
    target = target_dir / source_path.name
    target.write_text(rewrite_source(source_path.read_text(encoding="utf-8")), encoding="utf-8")
    return target
