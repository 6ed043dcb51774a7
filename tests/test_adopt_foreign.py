"""Adopting a model the team logged with its own code (``mlflow.pytorch.log_model``, no hamu checkpoint):
``hamu init --from-version N --train-seconds S`` converts it into a hamu version and makes that champion.

Refused by name, with nothing changed (no version, alias, tag, ledger record): another architecture, weights
that score no better than the majority class through hamu's featurizer, a version without a declared
training time. The converted champion carries exactly the foreign weights and a verified trail.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import hamu_cli, pipeline_home
from torch import nn

pytestmark = pytest.mark.slow

PRESET = "digits-cpu"
NAME = f"hamu-{PRESET}"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with pipeline_home(tmp_path_factory.mktemp("hamu-home-foreign")) as root:
        yield root


def _log_foreign(module: nn.Module) -> str:
    """What a team's own training script does: log the module with MLflow's torch flavour and register it."""
    import mlflow

    example = np.zeros((2, next(module.parameters()).shape[-1]), dtype=np.float32)
    mlflow.set_experiment("team-training")  # the team's own experiment, in the same tracking store
    with mlflow.start_run(run_name="team-training-script"):  # MLflow 3's default format, pt2, traces it
        info = mlflow.pytorch.log_model(module.eval(), name="model", input_example=example)
    return str(mlflow.register_model(info.model_uri, NAME).version)


def _state(home: Path) -> tuple[bytes, dict[str, str], list[tuple[str, dict[str, str]]]]:
    from mlflow import MlflowClient

    client = MlflowClient()
    ledger = home / "audit" / "ledger.jsonl"
    aliases = {a: str(v) for m in client.search_registered_models() for a, v in (m.aliases or {}).items()}
    versions = sorted((str(v.version), dict(v.tags or {})) for v in client.search_model_versions())
    return (ledger.read_bytes() if ledger.exists() else b""), aliases, versions


@pytest.fixture(scope="module")
def trained(home: Path) -> nn.Module:
    from hamu.train import get_preset, train_model
    from hamu_pipeline.tasks.models import load_preset_data

    data = load_preset_data(PRESET)
    return train_model(data.train, get_preset(PRESET).recipe, progress=False).model


def test_foreign_versions_that_cannot_serve_are_refused(home: Path, trained: nn.Module) -> None:
    zeroed = type(trained)  # the same architecture, every weight zero: one class for every input
    blank = _copy(trained)
    with torch.no_grad():
        for p in blank.parameters():
            p.zero_()
    assert isinstance(blank, zeroed)
    cases = [
        (_log_foreign(nn.Linear(64, 10)), ["--train-seconds", "5"], "do not fit 'mlp'"),
        (_log_foreign(blank), ["--train-seconds", "5"], "no better than the majority class"),
        (_log_foreign(trained), [], "give --train-seconds"),
    ]
    from mlflow import MlflowClient

    served = _log_foreign(trained)
    before = _state(home)
    for version, extra, why in cases:
        result = hamu_cli("init", "--preset", PRESET, "--from-version", version, *extra)
        assert result.exit_code == 1, result.output
        assert why in " ".join(result.output.split()), result.output
        assert _state(home) == before
    # The team serves a version: converting would set a served version aside, so nothing is converted.
    MlflowClient().set_registered_model_alias(NAME, "production", served)
    before = _state(home)
    held = hamu_cli("init", "--preset", PRESET, "--from-version", served, "--train-seconds", "5")
    assert held.exit_code == 1 and f"production → version {served}" in " ".join(held.output.split())
    assert _state(home) == before
    MlflowClient().delete_registered_model_alias(NAME, "production")


def test_a_foreign_version_is_converted_into_a_verified_champion(home: Path, trained: nn.Module) -> None:
    from mlflow import MlflowClient

    from hamu.data.digest import dataset_digest
    from hamu.governance.audit import Ledger
    from hamu_pipeline.tasks.models import load_preset_data, load_version

    foreign = _log_foreign(trained)
    result = hamu_cli("init", "--preset", PRESET, "--from-version", foreign, "--train-seconds", "12.5")
    assert result.exit_code == 0, result.output
    client = MlflowClient()
    champion = str(client.get_model_version_by_alias(NAME, "champion").version)
    assert champion != foreign and f"converted into version {champion}" in " ".join(result.output.split())
    assert client.get_model_version(NAME, champion).tags["adopted_from"] == foreign
    assert client.get_model_version(NAME, foreign).tags["batch_status"] == "abandoned"
    served = load_version(NAME, champion)
    for (key, got), want in zip(
        served.model.state_dict().items(), trained.state_dict().values(), strict=True
    ):
        assert torch.equal(got, want), key
    assert served.metadata["train_seconds"] == 12.5
    assert served.metadata["data_digest"] == dataset_digest(load_preset_data(PRESET).train)
    record = Ledger(home / "audit").records()[-1]
    assert record.step == "register-original" and record.outputs["champion"] == champion
    assert "by conversion" in record.reason and "declaration" in record.reason
    verify = hamu_cli("audit", "verify")
    assert verify.exit_code == 0, verify.output


def _copy(module: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(module)
