"""`hamu batch run` exposes every BatchConfig field, reads a YAML/JSON config file, and validates both.

Every invocation is a ``--dry-run`` (or fails validation first), so no flow runs here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from hamu_pipeline.flows.cli import app
from hamu_pipeline.flows.config import BatchConfig

#: A valid, non-default value for every BatchConfig field; a field missing here fails the tests below.
NON_DEFAULT: dict[str, Any] = {
    "preset": "digits-cpu",
    "model_name": "hamu-custom",
    "method": "scrub",
    "lr": 0.05,
    "max_steps": 7,
    "constraint_ratio": 0.2,
    "batch_size": 64,
    "max_grad_norm": 2.5,
    "to_target": False,
    "check_every": 3,
    "retrain_on_fail": False,
    "max_update_norm": 0.5,
    "stop_on_degradation": True,
    "hardness_batches": 5,
    "gate_policy": "warn",
    "cost_aware": False,
    "exact": True,
    "train_reference": False,
    "reference_mode": "both",
    "bank_audit_every": 3,
    "bank_min_out": 3,
    "bank_erased_rows": 100,
    "eval_retain_rows": 500,
    "shadow_models": 4,
    "max_requests": 123,
    "seed": 42,
    "stage_retries": 3,
    "stage_retry_delay_s": 0.5,
    "stage_timeout_s": 60.0,
    "utility_budget": 0.05,
    "drift_utility_budget": 0.1,
    "drift_mia_budget": 0.3,
    "drift_max_batches": 5,
    "drift_action": "retrain",
}


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("HAMU_HOME", str(home))
    return home


def _run(*args: str) -> Any:
    return CliRunner().invoke(app, ["batch", "run", *args])


def _dry_run(*args: str) -> dict[str, Any]:
    result = _run(*args, "--dry-run")
    assert result.exit_code == 0, result.output
    resolved: dict[str, Any] = json.loads(result.stdout)
    return resolved


def _option(name: str, value: Any) -> list[str]:
    """The command-line form of ``name=value``: `--kebab-name VALUE`, or the flag that sets a bool."""
    flag = name.replace("_", "-")
    if isinstance(value, bool):
        return [f"--{flag}" if value else f"--no-{flag}"]
    return [f"--{flag}", str(value)]


def _expect_error(result: Any, *names: str) -> None:
    assert result.exit_code == 2, result.output
    for name in names:
        assert name in result.output, result.output


def test_table_covers_every_field_with_non_defaults() -> None:
    assert set(NON_DEFAULT) == set(BatchConfig.model_fields)
    defaults = BatchConfig().model_dump()
    assert all(NON_DEFAULT[name] != defaults[name] for name in NON_DEFAULT)


@pytest.mark.parametrize("name", list(BatchConfig.model_fields))
def test_every_field_is_settable_on_its_own(name: str) -> None:
    value = NON_DEFAULT[name]
    resolved = _dry_run(*_option(name, value))
    assert resolved[name] == value
    assert resolved == {**BatchConfig().model_dump(), name: value}


def test_every_field_at_once() -> None:
    args = [arg for name, value in NON_DEFAULT.items() for arg in _option(name, value)]
    assert _dry_run(*args) == NON_DEFAULT


def test_constraint_ratio_option() -> None:
    assert _dry_run("--constraint-ratio", "0.2")["constraint_ratio"] == 0.2


def test_defaults_match_the_model() -> None:
    assert _dry_run() == BatchConfig().model_dump()


def test_old_options_keep_working() -> None:
    resolved = _dry_run(
        "--preset",
        "digits-cpu",
        "--method",
        "ga",
        "--max-steps",
        "12",
        "--shadow-models",
        "0",
        "--gate-policy",
        "warn",
        "--exact",
    )
    assert {k: resolved[k] for k in ("preset", "method", "max_steps", "shadow_models", "gate_policy")} == {
        "preset": "digits-cpu",
        "method": "ga",
        "max_steps": 12,
        "shadow_models": 0,
        "gate_policy": "warn",
    }
    assert resolved["exact"] is True


def test_help_lists_the_generated_options() -> None:
    result = _run("--help")
    assert result.exit_code == 0, result.output
    for text in ("--config", "--dry-run", "--seed", "--drift-action", "HAMU's c = B/η"):
        assert text in result.output


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"])
def test_config_file(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"batch{suffix}"
    path.write_text(json.dumps(NON_DEFAULT) if suffix == ".json" else _yaml(NON_DEFAULT))
    assert _dry_run("--config", str(path)) == NON_DEFAULT


def test_command_line_overrides_the_file(tmp_path: Path) -> None:
    path = tmp_path / "batch.yaml"
    path.write_text("max_steps: 7\nconstraint_ratio: 0.3\nexact: true\nto_target: false\nseed: 5\n")
    resolved = _dry_run("--config", str(path), "--max-steps", "9", "--constraint-ratio", "0.2", "--to-target")
    assert (resolved["max_steps"], resolved["constraint_ratio"], resolved["to_target"]) == (9, 0.2, True)
    # what the command line leaves alone comes from the file, not from the options' defaults
    assert (resolved["exact"], resolved["seed"]) == (True, 5)


def test_options_left_at_their_defaults_do_not_override_the_file(tmp_path: Path) -> None:
    path = tmp_path / "batch.json"
    file_values = {"max_steps": 7, "method": "ga", "gate_policy": "warn", "shadow_models": 0}
    path.write_text(json.dumps(file_values))
    resolved = _dry_run("--config", str(path))
    assert {name: resolved[name] for name in file_values} == file_values


def test_file_may_set_a_nullable_field_to_null(tmp_path: Path) -> None:
    path = tmp_path / "batch.yaml"
    path.write_text("max_update_norm: null\nstage_timeout_s: 30\n")
    resolved = _dry_run("--config", str(path))
    assert (resolved["max_update_norm"], resolved["stage_timeout_s"]) == (None, 30.0)


# ----------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--max-steps", "0"], ["bad parameters: max_steps: Input should be greater than or equal to 1"]),
        (["--constraint-ratio", "1.5"], ["constraint_ratio", "less than or equal to 1"]),
        (["--lr", "0"], ["lr", "greater than 0"]),
        (["--max-update-norm", "-1"], ["max_update_norm"]),
        (["--gate-policy", "maybe"], ["gate_policy", "'stop' or 'warn'"]),
        (["--method", "nope"], ["method", "unknown method 'nope'"]),
        (["--drift-action", "maybe"], ["--drift-action"]),
        (["--lr", "fast"], ["--lr"]),
        (["--max-steps", "many"], ["--max-steps"]),
        (["--max-stepz", "3"], ["--max-stepz"]),
    ],
)
def test_bad_command_line_exits_2(args: list[str], names: list[str]) -> None:
    _expect_error(_run(*args, "--dry-run"), *names)


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("unknown.yaml", "max_stepz: 3\n", ["unknown fields max_stepz", "accepted:"]),
        ("unknown.json", '{"max_steps": 3, "colour": "red"}', ["unknown fields colour"]),
        ("range.yaml", "constraint_ratio: 1.5\n", ["constraint_ratio", "less than or equal to 1"]),
        ("type.json", '{"lr": "fast"}', ["lr", "valid number"]),
        ("literal.yaml", "drift_action: maybe\n", ["drift_action"]),
        ("list.yaml", "- max_steps\n- 3\n", ["expected a mapping", "list"]),
        ("scalar.json", "3", ["expected a mapping", "int"]),
        ("empty.yaml", "", ["expected a mapping"]),
        ("broken.yaml", "max_steps: [1\n", ["cannot parse it as YAML"]),
        ("broken.json", '{"max_steps": ', ["cannot parse it as JSON"]),
        ("batch.toml", "max_steps = 3\n", ["unsupported extension '.toml'"]),
    ],
)
def test_bad_config_file_exits_2(tmp_path: Path, name: str, text: str, expected: list[str]) -> None:
    path = tmp_path / name
    path.write_text(text)
    _expect_error(_run("--config", str(path), "--dry-run"), str(path), *expected)


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    _expect_error(_run("--config", str(path), "--dry-run"), str(path), "no such file")


def test_config_folder_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "folder.yaml"
    path.mkdir()
    _expect_error(_run("--config", str(path), "--dry-run"), str(path), "cannot read it")


def test_command_line_fixes_a_bad_file_value(tmp_path: Path) -> None:
    path = tmp_path / "batch.yaml"
    path.write_text("max_steps: 0\n")
    assert _dry_run("--config", str(path), "--max-steps", "4")["max_steps"] == 4


def test_bad_parameters_stop_before_the_flow_and_write_nothing(_home: Path) -> None:
    """Without --dry-run a bad value still exits 2 before any flow runs or HAMU_HOME is created."""
    _expect_error(_run("--max-steps", "0"), "max_steps")
    assert not _home.exists()


def test_dry_run_writes_nothing(_home: Path) -> None:
    _dry_run("--seed", "3")
    assert not _home.exists()


def _yaml(values: dict[str, Any]) -> str:
    """YAML by hand (JSON's scalars are YAML's), so the test does not lean on the loader it checks."""
    return "".join(f"{name}: {json.dumps(value)}\n" for name, value in values.items())
