"""`hamu batch run`'s options: one per ``BatchConfig`` field, generated, plus ``--config FILE``.

Why generated: hand-written options drift from the model (the command once exposed 5 of 22 fields). Why a
file: a batch's configuration is reviewed and kept next to the deployment, not retyped. Options given on the
command line win over the file; a misspelt field, in either, is an error (exit 2), never a silent default.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from typer.core import TyperCommand

err = Console(stderr=True)

#: Where ``BatchRunCommand.invoke`` leaves every option's value for ``batch_run``.
_BATCH_VALUES = "hamu.batch_run.values"
#: The help panel of the options generated from ``BatchConfig``.
_FIELDS_PANEL = "Batch configuration (every BatchConfig field)"
_CONFIG_SUFFIXES = (".yaml", ".yml", ".json")
#: The parameter sources of a value given (which overrides the config file), as opposed to a default.
_GIVEN_SOURCES = frozenset({"COMMANDLINE", "ENVIRONMENT", "PROMPT"})
_BOUNDS = (("gt", ">"), ("ge", "≥"), ("lt", "<"), ("le", "≤"))


class BatchRunCommand(TyperCommand):
    """`hamu batch run` plus one option per ``BatchConfig`` field that its signature does not name.

    Why generated: hand-written options drift from the model. Why built on first use rather than at
    import: ``BatchConfig`` imports torch (seconds), which `hamu --help` and every other command would pay.
    """

    _generated: list[Any] | None = None

    def get_params(self, ctx: Any) -> list[Any]:
        if self._generated is None:
            self._generated = _field_options(taken={p.name for p in self.params if p.name})
            self.params.extend(self._generated)
        return super().get_params(ctx)

    def invoke(self, ctx: Any) -> Any:
        """Hand the generated options to ``batch_run`` through ``ctx.meta``: Typer passes it only its own."""
        ctx.meta[_BATCH_VALUES] = dict(ctx.params)
        for param in self._generated or ():
            ctx.params.pop(param.name, None)
        return super().invoke(ctx)


def _field_options(taken: set[str]) -> list[Any]:
    """Typer options for the ``BatchConfig`` fields not in ``taken``: `--kebab-name`, the field's type,
    default and description (bounds appended), built by Typer itself from a generated signature."""
    from hamu_pipeline.flows.config import BatchConfig

    params = [
        inspect.Parameter(
            name,
            inspect.Parameter.KEYWORD_ONLY,
            annotation=field.annotation,
            default=typer.Option(
                field.get_default(call_default_factory=True),
                help=_field_help(field),
                show_default=True,
                rich_help_panel=_FIELDS_PANEL,
            ),
        )
        for name, field in BatchConfig.model_fields.items()
        if name not in taken
    ]

    def fields(**values: Any) -> None:
        """Never called: its signature is what Typer turns into options."""

    fields.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    helper = typer.Typer(add_completion=False)
    helper.command()(fields)
    return list(typer.main.get_command(helper).params)


def _field_help(field: Any) -> str:
    """A field's description, then its bounds (``≥ 1, ≤ 100000``): what pydantic will enforce."""
    bounds = [
        f"{sign} {getattr(rule, attr)}"
        for rule in field.metadata
        for attr, sign in _BOUNDS
        if getattr(rule, attr, None) is not None
    ]
    text = field.description or ""
    return f"{text} ({', '.join(bounds)})".strip() if bounds else text


def batch_config(ctx: typer.Context, config: Path | None) -> Any:
    """The batch's ``BatchConfig``: the file's fields, then the options given; exit 2 naming what is wrong.

    Only options given on the command line override the file, so a default never hides its value.
    """
    from pydantic import ValidationError

    from hamu_pipeline.flows.config import BatchConfig

    fields = set(BatchConfig.model_fields)
    values = _read_config_file(config, fields) if config is not None else {}
    given = _given_fields(ctx, fields)
    try:
        return BatchConfig.model_validate({**values, **given})
    except ValidationError as exc:
        problems = "; ".join(_describe_error(e, given, config) for e in exc.errors())
        _bad_parameters(problems)


def _given_fields(ctx: typer.Context, fields: set[str]) -> dict[str, Any]:
    """The ``BatchConfig`` fields set on the command line (not left at their defaults), with their values."""
    values: dict[str, Any] = ctx.meta.get(_BATCH_VALUES, ctx.params)
    given = {}
    for name in fields & values.keys():
        source = ctx.get_parameter_source(name)
        if source is not None and source.name in _GIVEN_SOURCES:
            given[name] = values[name]
    return given


def _describe_error(error: Any, given: dict[str, Any], config: Path | None) -> str:
    """One pydantic error as ``field: message``, saying where a value from the config file came from."""
    field = ".".join(str(part) for part in error["loc"])
    origin = f" (in {config})" if config is not None and error["loc"] and error["loc"][0] not in given else ""
    return f"{field}: {error['msg']}{origin}" if field else f"{error['msg']}{origin}"


def _read_config_file(path: Path, fields: set[str]) -> dict[str, Any]:
    """The mapping of ``BatchConfig`` fields a YAML or JSON file holds; exit 2 naming the file otherwise.

    Unknown keys are refused here (``BatchConfig`` itself ignores them): a misspelt field must not be
    silently replaced by its default in a batch that erases data.
    """
    suffix = path.suffix.lower()
    if suffix not in _CONFIG_SUFFIXES:
        _bad_config(path, f"unsupported extension {path.suffix or '(none)'!r}; use .yaml, .yml or .json")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        _bad_config(path, "no such file")
    except (OSError, UnicodeDecodeError) as exc:
        _bad_config(path, f"cannot read it: {exc}")
    data = _parse_config(path, text, suffix)
    if not isinstance(data, dict):
        _bad_config(path, f"expected a mapping of BatchConfig fields, found {type(data).__name__}")
    unknown = sorted(str(key) for key in data if key not in fields)
    if unknown:
        _bad_config(path, f"unknown fields {', '.join(unknown)}; accepted: {', '.join(sorted(fields))}")
    return data


def _parse_config(path: Path, text: str, suffix: str) -> Any:
    import yaml

    try:
        return json.loads(text) if suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:  # json.JSONDecodeError is a ValueError
        _bad_config(path, f"cannot parse it as {'JSON' if suffix == '.json' else 'YAML'}: {exc}")


def _bad_config(path: Path, problem: str) -> NoReturn:
    from rich.markup import escape

    err.print(f"[red]bad config file[/red] {escape(str(path))}: {escape(problem)}", soft_wrap=True)
    raise typer.Exit(2)


def _bad_parameters(problems: str) -> NoReturn:
    from rich.markup import escape

    err.print(f"[red]bad parameters[/red]: {escape(problems)}", soft_wrap=True)
    raise typer.Exit(2)
