"""Code a project plugs in by import path ("module:attribute"): workloads, loops, losses, featurizers.

Why one place: a project names its own code in its project file (``hamu.toml`` or ``[tool.hamu]`` in
``pyproject.toml``) or in a recipe, and that code must import the same way wherever it is needed: in the
CLI, in a Prefect flow, in a Dask worker training a bank member. Every import puts the project file's folder
on ``sys.path`` for its duration, so a module next to the project file imports without being installed.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import os
import sys
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

PROJECT_ENV = "HAMU_PROJECT"


class PluginImportError(ValueError):
    """An import path does not name importable code; the message says which and why."""


def project_file(start: Path | None = None) -> Path | None:
    """The project file that names this project's workloads, if there is one."""
    env = os.environ.get(PROJECT_ENV)
    if env:
        path = Path(env)
        if not path.is_file():
            raise PluginImportError(f"{PROJECT_ENV}={env} is not a file")
        return path
    folder = start or Path.cwd()
    for name in ("hamu.toml", "pyproject.toml"):
        if (folder / name).is_file():
            return folder / name
    return None


@contextmanager
def importable(folder: Path) -> Iterator[None]:
    """``folder`` on ``sys.path`` while a project's module imports."""
    entry = str(folder.resolve())
    added = entry not in sys.path
    if added:
        sys.path.insert(0, entry)
    try:
        yield
    finally:
        if added:
            sys.path.remove(entry)


def split_target(target: str) -> tuple[str, str]:
    """("module", "attribute") of ``"module:attribute"``; a clear error for anything else."""
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise PluginImportError(f"{target!r} is not 'module:attribute'")
    return module_name, attribute


def import_target(target: str, *, folder: Path | None = None) -> Any:
    """The object ``"module:attribute"`` names, imported with the project folder importable.

    ``folder`` defaults to the project file's folder, else the current directory.
    """
    module_name, attribute = split_target(target)
    if folder is None:
        found = project_file()
        folder = found.parent if found is not None else Path.cwd()
    with importable(folder):
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            raise PluginImportError(f"cannot import {module_name!r}: {exc}") from exc
    if not hasattr(module, attribute):
        raise PluginImportError(f"module {module_name!r} has no attribute {attribute!r}")
    return getattr(module, attribute)


def import_function(target: str, *, folder: Path | None = None) -> Any:
    """:func:`import_target`, refused unless what it names can be called (a function or a class)."""
    found = import_target(target, folder=folder)
    if not callable(found):
        raise PluginImportError(f"{target!r} is {type(found).__name__}, not a function")
    return found


def source_digest(target: str, *, folder: Path | None = None) -> str:
    """SHA-256 of the source behind ``"module:attribute"``: over the SHA-256 of the module's own file and of
    the files that define the named object and, once unwrapped (``inspect.unwrap``), the function it wraps
    (a decorator's wrapper, a re-export), each file once, as a hex line, in path order.

    Why: a recipe names its plugins, and a name says nothing about which code ran under it. A bank trained
    with last month's training loop is no evidence for a model trained with today's, and a checkpoint's
    lineage should say which code trained it. The files are read the first time this process digests the
    module object, and that digest is kept for as long as the module is: a worker that imported the code
    and runs it records that code, not a later edit of the file. Files the module imports are not covered.
    """
    found = import_target(target, folder=folder)
    module_name, _ = split_target(target)
    module = sys.modules[module_name]
    cached = _DIGESTS.setdefault(module, {})
    if target not in cached:
        candidates = (
            getattr(module, "__file__", None),
            _defining_file(found),
            _defining_file(inspect.unwrap(found)),
        )
        files = {path for path in candidates if path}
        if not files:
            raise PluginImportError(f"{target!r} has no source file to digest")
        lines = []
        for path in sorted(files):
            try:
                lines.append(hashlib.sha256(Path(path).read_bytes()).hexdigest() + "\n")
            except OSError as exc:
                raise PluginImportError(f"cannot read the source of {target!r} ({path}): {exc}") from exc
        cached[target] = hashlib.sha256("".join(lines).encode()).hexdigest()
    return cached[target]


#: Digests per module object (see :func:`source_digest`); a re-imported module is a new key.
_DIGESTS: weakref.WeakKeyDictionary[ModuleType, dict[str, str]] = weakref.WeakKeyDictionary()


def _defining_file(found: Any) -> str | None:
    """The file that defines ``found``, if inspect can tell."""
    try:
        return inspect.getsourcefile(found)
    except TypeError:  # an instance or a builtin
        return None
