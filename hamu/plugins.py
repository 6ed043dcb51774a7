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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
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
    """SHA-256 of the source file that defines what ``"module:attribute"`` names.

    Why: a recipe names its plugins, and a name says nothing about which code ran under it. A bank trained
    with last month's training loop is no evidence for a model trained with today's, and a checkpoint's
    lineage should say which code trained it. The digest covers the file that defines the object (the
    module's own file when the object's cannot be found), not the files it imports.
    """
    found = import_target(target, folder=folder)
    module_name, _ = split_target(target)
    try:
        path = inspect.getsourcefile(found)
    except TypeError:  # an instance or a builtin: fall back to the module's file
        path = None
    path = path or getattr(sys.modules.get(module_name), "__file__", None)
    if not path:
        raise PluginImportError(f"{target!r} has no source file to digest")
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError as exc:
        raise PluginImportError(f"cannot read the source of {target!r} ({path}): {exc}") from exc
