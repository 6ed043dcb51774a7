"""Where a champion comes from: ``hamu init`` (train the preset's original, or adopt an existing version),
never a deletion batch, and never a registry error read as "no champion yet".

Each refusal is checked to change nothing: no alias, no tag, no ledger record, the queue as it was.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import hamu_cli, pipeline_home, submit_requests

pytestmark = pytest.mark.slow

PRESET = "digits-cpu"
NAME = f"hamu-{PRESET}"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with pipeline_home(tmp_path_factory.mktemp("hamu-home-init")) as root:
        yield root


def _state(home: Path) -> tuple[bytes, dict[str, str], list[tuple[str, str, dict[str, str]]], list[Any]]:
    """Everything a refusal must leave as it was: ledger bytes, aliases, versions with tags, queue rows."""
    from mlflow import MlflowClient

    from hamu.governance.requests import RequestQueue

    ledger = home / "audit" / "ledger.jsonl"
    client = MlflowClient()
    models = client.search_registered_models()
    aliases = {f"{m.name}:{a}": str(v) for m in models for a, v in (m.aliases or {}).items()}
    versions = [(v.name, str(v.version), dict(v.tags or {})) for v in client.search_model_versions()]
    with RequestQueue(f"sqlite:///{home / 'requests.db'}") as queue:
        rows = [(r.request_id, r.status.value, r.model_version) for r in queue.list()]
    return (ledger.read_bytes() if ledger.exists() else b""), aliases, sorted(versions), rows


def _register_unaliased(data: Any, train: Any, recipe: Any) -> str:
    """A version of ``NAME`` logged the way hamu logs models, with no alias and no ledger record: what an
    operator restores from another store or trains elsewhere."""
    from hamu.train import train_model
    from hamu_pipeline.tasks.models import _example
    from hamu_pipeline.tasks.tracking import log_model_version

    trained = train_model(train, recipe, role="original", progress=False)
    folder = Path(os.environ["HAMU_HOME"]) / f"staged-{len(train)}-{recipe.model}"
    folder.mkdir()
    trained.save(folder / "model.safetensors")
    import mlflow

    example = _example(trained.featurizer, data.train)
    with mlflow.start_run(run_name="trained-elsewhere"):
        version = log_model_version(trained.model, name=NAME, example=example, checkpoint_dir=folder, tags={})
    return str(version.version)


def test_a_batch_without_a_champion_fails_and_changes_nothing(home: Path) -> None:
    from hamu_pipeline.flows.config import BatchConfig
    from hamu_pipeline.flows.deletion_batch import deletion_batch
    from hamu_pipeline.tasks.models import NoChampionError, load_preset_data

    submit_requests(home, load_preset_data(PRESET).manifest_ids[:3], "first")
    before = _state(home)
    with pytest.raises(NoChampionError, match="hamu init"):
        deletion_batch(BatchConfig(preset=PRESET, shadow_models=0))
    assert _state(home) == before  # no original trained, nothing registered, every request still pending
    assert all(status == "pending" for _, status, _ in before[3])
    assert not (home / "models" / PRESET / "original.safetensors").exists()


def test_an_unreadable_registry_is_an_error_not_an_empty_one(tmp_path: Path) -> None:
    """A store that cannot be read must not look like a fresh one (which would train a new original)."""
    import mlflow

    from hamu_pipeline.tasks.models import require_champion
    from hamu_pipeline.tasks.tracking import RegistryUnreadable, alias_version

    broken = tmp_path / "mlflow.db"
    broken.write_bytes(b"this is not an SQLite database\n" * 64)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{broken}")
    try:
        with pytest.raises(RegistryUnreadable, match="could not read alias 'champion'"):
            alias_version(NAME, "champion")
        with pytest.raises(RegistryUnreadable):
            require_champion(NAME)
    finally:
        mlflow.set_tracking_uri(previous)


def test_adoption_refuses_what_cannot_start_the_lineage(home: Path) -> None:
    """Trained on other rows; another architecture; no such version: each refused by name, nothing changed."""
    from hamu.train import get_preset
    from hamu_pipeline.tasks.models import load_preset_data

    data = load_preset_data(PRESET)
    recipe = get_preset(PRESET).recipe
    subset = _register_unaliased(data, data.train.select(range(600)), recipe)
    other = recipe.with_options(model="cnn", model_config={"channels": [4, 8], "hidden": 16}, epochs=1)
    cnn = _register_unaliased(data, data.train, other)
    before = _state(home)
    cases = [(subset, "trained on other data"), (cnn, "is a 'cnn' model; workload 'digits-cpu' trains 'mlp'"),
             ("99", "cannot be read from the registry")]  # fmt: skip
    for version, why in cases:
        result = hamu_cli("init", "--preset", PRESET, "--from-version", version)
        assert result.exit_code == 1, result.output
        assert why in " ".join(result.output.split()), result.output
        assert _state(home) == before


def test_adopting_a_version_starts_a_verified_lineage(home: Path) -> None:
    """A version trained on the full manifest becomes champion with a ``register-original`` record naming
    the manifest's digest; the trail verifies; a second adoption and a training init then change nothing."""
    from mlflow import MlflowClient

    from hamu.data.digest import dataset_digest
    from hamu.governance.audit import ANCHOR_TAG, Ledger
    from hamu.train import get_preset
    from hamu_pipeline.tasks.models import load_preset_data

    data = load_preset_data(PRESET)
    version = _register_unaliased(data, data.train, get_preset(PRESET).recipe)
    client = MlflowClient()
    client.set_registered_model_alias(NAME, "staging", "1")  # another version is served: set it aside? no
    before = _state(home)
    held = hamu_cli("init", "--preset", PRESET, "--from-version", version)
    assert held.exit_code == 1 and "staging → version 1" in " ".join(held.output.split()), held.output
    assert _state(home) == before
    client.delete_registered_model_alias(NAME, "staging")
    result = hamu_cli("init", "--preset", PRESET, "--from-version", version)
    assert result.exit_code == 0, result.output
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == version
    record = Ledger(home / "audit").records()[-1]
    assert record.step == "register-original" and record.outputs["champion"] == version
    assert record.inputs["manifest"] == dataset_digest(data.train)
    tags = client.get_model_version(NAME, version).tags
    assert tags["role"] == "original" and tags[ANCHOR_TAG] == f"{record.seq}:{record.record_hash}"
    verify = hamu_cli("audit", "verify")
    assert verify.exit_code == 0, verify.output

    before = _state(home)
    again = hamu_cli("init", "--preset", PRESET, "--from-version", version)
    assert again.exit_code == 1 and "already has champion" in again.output
    trained = hamu_cli("init", "--preset", PRESET)
    assert trained.exit_code == 0 and "nothing to do" in trained.output
    assert _state(home) == before


def test_no_new_original_once_records_were_erased(home: Path) -> None:
    """After a batch unlearned records, losing the champion alias must not let `hamu init` train an original
    of the full manifest (it would carry them again): refused, and nothing changes."""
    from mlflow import MlflowClient

    from hamu_pipeline.flows.config import BatchConfig
    from hamu_pipeline.flows.deletion_batch import deletion_batch

    summary = deletion_batch(BatchConfig(preset=PRESET, shadow_models=0, exact=True, eval_retain_rows=200))
    assert summary["status"] == "completed", summary
    MlflowClient().delete_registered_model_alias(NAME, "champion")
    before = _state(home)
    refused = hamu_cli("init", "--preset", PRESET)
    assert refused.exit_code == 1, refused.output
    assert "already unlearned or erased" in " ".join(refused.output.split())
    assert _state(home) == before
    assert not (home / "models" / PRESET / "original.safetensors").exists()
