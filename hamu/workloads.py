"""Workloads: what the pipeline must know about a served model's data and training, for any user's model.

A :class:`Workload` is a name, a ``load()`` returning the training manifest and the test set (hamu datasets
with a ``record_id`` column: images, text, or a user's table via :func:`hamu.data.tabular_dataset`), and the
:class:`~hamu.train.Recipe` that trains the model: the original, every exact retrain, every reference. The
recipe names a model of :mod:`hamu.models`' registry; a user's own architecture is registered there first
(:func:`hamu.models.register_model`) so that its checkpoints rebuild anywhere.

The built-in presets are workloads too (:func:`preset_workload`). A project adds its own in a project file,
by import path, with no change to the pipeline::

    # hamu.toml (or [tool.hamu.workloads] in pyproject.toml)
    [workloads]
    patients = "patients_workload:WORKLOAD"

The project file is ``$HAMU_PROJECT`` when set, else ``hamu.toml`` or ``pyproject.toml`` in the current
directory; its folder is importable while the workload loads. Every failure names the workload: a path that
does not import, an attribute that is not a workload, data without record IDs or with duplicates.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hamu.data.digest import record_ids
from hamu.data.spec import spec_of
from hamu.data.splits import Split
from hamu.plugins import PROJECT_ENV as PROJECT_ENV
from hamu.plugins import PluginImportError, import_target
from hamu.plugins import project_file as _project_file
from hamu.train.recipe import PRESETS, Recipe
from hamu.train.trainer import preset_data


class WorkloadError(ValueError):
    """A workload cannot be used; the message names it and what is wrong."""


@dataclass(frozen=True)
class Workload:
    """A served model's data and recipe. ``load`` is called once per batch (keep it deterministic)."""

    name: str
    load: Callable[[], tuple[Any, Any]]
    recipe: Recipe
    description: str = ""

    def data(self) -> tuple[Any, Any]:
        """The training manifest and the test set, checked: hamu datasets, unique record IDs, disjoint."""
        try:
            train, test = self.load()
        except Exception as exc:
            raise WorkloadError(f"workload {self.name!r}: loading its data failed: {exc}") from exc
        parts = {"training manifest": train, "test set": test}
        ids: dict[str, list[str]] = {}
        for part, ds in parts.items():
            try:
                spec_of(ds)
                ids[part] = record_ids(ds)
            except (ValueError, AttributeError, TypeError) as exc:
                raise WorkloadError(
                    f"workload {self.name!r}: its {part} is not a hamu dataset: {exc}"
                ) from exc
            if len(set(ids[part])) != len(ids[part]):
                raise WorkloadError(f"workload {self.name!r}: its {part} repeats record IDs")
        if not ids["training manifest"]:
            raise WorkloadError(f"workload {self.name!r}: its training manifest is empty")
        shared = set(ids["training manifest"]) & set(ids["test set"])
        if shared:
            raise WorkloadError(
                f"workload {self.name!r}: {len(shared)} record ID(s) are in both the training manifest and "
                "the test set (the test rows must be non-members)"
            )
        return train, test


def workload_split(workload: Workload, **overrides: Any) -> Split:
    """The split a workload is measured on: a preset's own split options, else a ρ = 0.5 split around the
    first class (seed 0), with ``overrides`` replacing any option (e.g. ``rho=1.0``, ``forget_class="b"``);
    overriding ``strategy`` drops the default's options (``strategy="ids", forget_ids=[...]``)."""
    from hamu.data.splits import make_split

    train, test = workload.data()
    if workload.name in PRESETS:
        options: dict[str, Any] = dict(PRESETS[workload.name].split)
    else:
        options = {"strategy": "rho", "rho": 0.5, "forget_class": 0, "seed": 0}
    if overrides.get("strategy", options["strategy"]) != options["strategy"]:
        options = {}  # another strategy: the default's options (ρ, class) do not apply to it
    options.update(overrides)
    strategy = str(options.pop("strategy"))
    return make_split(strategy, train, test, **options)


def preset_workload(name: str) -> Workload:
    """A built-in preset as a workload: its dataset cut to its sizes, its recipe."""
    preset = PRESETS[name]
    return Workload(name, lambda: preset_data(preset), preset.recipe, preset.description)


def project_file(start: Path | None = None) -> Path | None:
    """The project file that names this project's workloads, if there is one."""
    try:
        return _project_file(start)
    except PluginImportError as exc:
        raise WorkloadError(str(exc)) from exc


def project_workloads(path: Path | None = None) -> dict[str, str]:
    """``name → "module:attribute"`` from the project file (empty without one)."""
    path = path or project_file()
    if path is None:
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise WorkloadError(f"cannot read the project file {path}: {exc}") from exc
    if path.name == "pyproject.toml":
        table = data.get("tool", {}).get("hamu", {}).get("workloads", {})
    else:
        table = data.get("workloads", {})
    if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
        raise WorkloadError(f"{path}: workloads must map names to 'module:attribute' strings")
    return dict(table)


def workload_names() -> list[str]:
    """Every workload this project can name: the presets, then the project file's."""
    return [*PRESETS, *(n for n in project_workloads() if n not in PRESETS)]


def get_workload(name: str) -> Workload:
    """The workload called ``name``: a project file's, else a preset; a clear error otherwise."""
    path = project_file()
    declared = project_workloads(path)
    if name in declared and path is not None:
        if name in PRESETS:
            raise WorkloadError(f"{path}: workload {name!r} has the name of a built-in preset; rename it")
        return _import_workload(name, declared[name], path.parent)
    if name in PRESETS:
        return preset_workload(name)
    raise WorkloadError(f"unknown workload {name!r}; known: {', '.join(workload_names())}")


def _import_workload(name: str, target: str, folder: Path) -> Workload:
    try:
        found = import_target(target, folder=folder)
    except PluginImportError as exc:
        raise WorkloadError(f"workload {name!r}: {exc}") from exc
    if callable(found) and not isinstance(found, Workload):
        try:
            found = found()
        except Exception as exc:
            raise WorkloadError(f"workload {name!r}: {target}() raised: {exc}") from exc
    if not isinstance(found, Workload):
        raise WorkloadError(f"workload {name!r}: {target} is {type(found).__name__}, not a hamu Workload")
    if found.name != name:
        raise WorkloadError(f"workload {name!r}: {target} calls itself {found.name!r}")
    return found
