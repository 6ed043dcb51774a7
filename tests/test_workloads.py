"""Workloads from a project file: a user's data and recipe, found by import path, refused by name when they
cannot serve (a path that does not import, something that is not a workload, data without usable record
IDs, overlapping train and test rows, a loader that raises). The tabular data kind they use is checked too.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from hamu.data import TabularFeaturizer, build_dataset, dataset_digest, tabular_dataset
from hamu.data.spec import DatasetSpec
from hamu.train import Recipe, train_model
from hamu.workloads import PROJECT_ENV, Workload, WorkloadError, get_workload, workload_names

RECIPE = Recipe(model="mlp", model_config={"hidden": [8]}, epochs=2, batch_size=32, lr=1e-2, seed=0)


def _table(n: int = 40, start: int = 0) -> object:
    gen = np.random.default_rng(start)
    ids = [f"row-{i:04d}" for i in range(start, start + n)]
    labels = ["yes" if v > 0 else "no" for v in gen.standard_normal(n)]
    return tabular_dataset(
        ids, gen.standard_normal((n, 5)) * 3 + 1, labels, name="t", class_names=["no", "yes"]
    )


MODULE = """
from hamu.workloads import Workload
from hamu.train import Recipe
import test_workloads_data as data

GOOD = Workload("good", data.good, Recipe(model="mlp", model_config={"hidden": [8]}, epochs=2, batch_size=32))
OVERLAP = Workload("overlap", data.overlap, Recipe(model="mlp"))
RAISES = Workload("raises", data.raises, Recipe(model="mlp"))
NO_IDS = Workload("no-ids", data.no_ids, Recipe(model="mlp"))
MISNAMED = Workload("other", data.good, Recipe(model="mlp"))
NOT_A_WORKLOAD = 42


def build():
    return Workload("built", data.good, Recipe(model="mlp"))
"""

DATA = """
import datasets
from hamu.data import tabular_dataset
import numpy as np


def _t(n, start):
    gen = np.random.default_rng(start)
    ids = [f"row-{i:04d}" for i in range(start, start + n)]
    return tabular_dataset(ids, gen.standard_normal((n, 5)), ["a"] * n, name="t", class_names=["a", "b"])


def good():
    return _t(40, 0), _t(20, 100)


def overlap():
    return _t(40, 0), _t(20, 30)


def raises():
    raise FileNotFoundError("customers.csv")


def no_ids():
    return datasets.Dataset.from_dict({"x": [1, 2]}), _t(5, 100)
"""

PROJECT = """
[workloads]
good = "proj_workloads:GOOD"
built = "proj_workloads:build"
overlap = "proj_workloads:OVERLAP"
raises = "proj_workloads:RAISES"
no-ids = "proj_workloads:NO_IDS"
misnamed = "proj_workloads:MISNAMED"
number = "proj_workloads:NOT_A_WORKLOAD"
missing-module = "no_such_module_here:W"
bad-path = "proj_workloads"
digits-cpu = "proj_workloads:GOOD"
"""


@pytest.fixture()
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    (tmp_path / "proj_workloads.py").write_text(MODULE)
    (tmp_path / "test_workloads_data.py").write_text(DATA)
    (tmp_path / "hamu.toml").write_text(PROJECT)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(PROJECT_ENV, raising=False)
    yield tmp_path
    import sys

    for name in ("proj_workloads", "test_workloads_data"):
        sys.modules.pop(name, None)


def test_a_project_workload_loads_by_import_path(project: Path) -> None:
    good = get_workload("good")
    train, test = good.data()
    assert (len(train), len(test)) == (40, 20) and good.recipe.model == "mlp"
    assert get_workload("built").name == "built"  # a function returning the workload works too
    assert "good" in workload_names() and "fashion-mnist-cpu" in workload_names()
    assert get_workload("fashion-mnist-cpu").recipe.model == "cnn"  # presets stay reachable beside them


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("overlap", "in both the training manifest and the test set"),
        ("raises", "loading its data failed: customers.csv"),
        ("no-ids", "is not a hamu dataset"),
        ("misnamed", "calls itself 'other'"),
        ("number", "is int, not a hamu Workload"),
        ("missing-module", "cannot import 'no_such_module_here'"),
        ("bad-path", "is not 'module:attribute'"),
        ("digits-cpu", "has the name of a built-in preset"),
        ("nowhere", "unknown workload 'nowhere'"),
    ],
)
def test_a_workload_that_cannot_serve_is_refused_by_name(project: Path, name: str, message: str) -> None:
    with pytest.raises(WorkloadError) as info:
        get_workload(name).data()
    assert message in str(info.value)
    assert name in str(info.value)  # the error names the workload


def test_the_project_file_can_be_named_and_must_exist(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(PROJECT_ENV, str(tmp_path / "missing.toml"))
    with pytest.raises(WorkloadError, match="is not a file"):
        get_workload("anything")
    (tmp_path / "pyproject.toml").write_text("[tool.hamu.workloads]\nx = 3\n")
    monkeypatch.delenv(PROJECT_ENV)
    with pytest.raises(WorkloadError, match="must map names to 'module:attribute' strings"):
        get_workload("x")


def test_hamu_init_refuses_an_unusable_workload_before_touching_anything(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hamu_pipeline.flows.cli import app

    monkeypatch.setenv("HAMU_HOME", str(project / "home"))
    result = CliRunner().invoke(app, ["init", "--preset", "overlap"])
    assert result.exit_code == 2 and "workload 'overlap'" in " ".join(result.output.split())
    home = project / "home"
    assert not (home / "mlflow.db").exists() and not (home / "audit" / "ledger.jsonl").exists()


# ------------------------------------------------------------------------------------ the tabular kind
def test_tabular_ids_must_be_valid_and_unique() -> None:
    values, labels = np.zeros((2, 3)), ["a", "a"]
    with pytest.raises(ValueError, match="'Row-1' is not a valid record ID"):
        tabular_dataset(["Row-1", "row-2"], values, labels, name="t", class_names=["a"])
    with pytest.raises(ValueError, match="'row-1' appears more than once"):
        tabular_dataset(["row-1", "row-1"], values, labels, name="t", class_names=["a"])
    with pytest.raises(ValueError, match="finite"):
        build_dataset(
            DatasetSpec(name="t", kind="tabular", class_names=("a",), id_prefix="t", input_shape=(3,)),
            ["row-1", "row-2"],
            np.zeros(2, dtype=np.int64),
            features=np.array([[0.0, np.nan, 1.0], [0.0, 0.0, 0.0]]),
        )


def test_tabular_featurizer_standardises_with_the_training_rows_only() -> None:
    """Oracle: numpy's mean and population std of the rows it was fitted on; other rows do not move it."""
    train, other = _table(50, 0), _table(30, 500)
    feat = TabularFeaturizer.fit(train)
    raw = TabularFeaturizer.values(train).astype(np.float64)
    np.testing.assert_allclose(feat.mean, raw.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(feat.std, raw.std(axis=0), rtol=1e-6)
    encoded = feat.encode(other).numpy()
    expected = (TabularFeaturizer.values(other) - np.float32(feat.mean)) / np.float32(feat.std)
    np.testing.assert_allclose(encoded, expected, rtol=1e-6)
    assert TabularFeaturizer(**{k: v for k, v in feat.to_config().items() if k != "kind"}).mean == feat.mean


def test_a_tabular_model_trains_and_the_digest_follows_the_values() -> None:
    train = _table(60, 0)
    trained = train_model(train, RECIPE, role="original", progress=False)
    assert trained.metadata["config"]["in_features"] == 5
    assert trained.metadata["featurizer"]["kind"] == "tabular"
    ids, labels = [f"row-{i:04d}" for i in range(60)], list(train["label"])
    values = TabularFeaturizer.values(train)
    same = tabular_dataset(ids, values, labels, name="t", class_names=["no", "yes"])
    nudged = values.copy()
    nudged[7, 2] += 0.5
    changed = tabular_dataset(ids, nudged, labels, name="t", class_names=["no", "yes"])
    assert dataset_digest(same) == dataset_digest(train) != dataset_digest(changed)


def test_workload_instances_are_plain_data() -> None:
    w = Workload("w", lambda: (_table(10), _table(5, 100)), RECIPE)
    assert w.data()[0].num_rows == 10


def test_hamu_hardness_assesses_a_project_workload(monkeypatch: pytest.MonkeyPatch) -> None:
    """`hamu hardness` takes any workload the project names, not only the presets; an unknown one exits 2."""
    from typer.testing import CliRunner

    from hamu_pipeline.flows.cli import app

    example = Path(__file__).resolve().parents[1] / "examples" / "tabular_csv"
    monkeypatch.setenv("HAMU_PROJECT", str(example / "hamu.toml"))
    result = CliRunner().invoke(app, ["hardness", "--preset", "patients", "--batches", "1", "--rho", "0.5"])
    assert result.exit_code == 0, result.output
    assert "hardness: patients" in result.output and "verdict" in result.output
    unknown = CliRunner().invoke(app, ["hardness", "--preset", "no-such-workload"])
    assert unknown.exit_code == 2 and "unknown workload 'no-such-workload'" in unknown.output


def test_a_workload_split_is_the_preset_split_or_a_rho_split_around_the_first_class(project: Path) -> None:
    """Benchmarks and ``hamu hardness`` measure any workload on one rule: a preset keeps its own split, a
    project's workload gets ρ = 0.5 around its first class; overrides replace either."""
    from hamu.train import preset_split
    from hamu.workloads import workload_split

    preset = workload_split(get_workload("fashion-mnist-cpu"))
    assert preset.describe() == preset_split("fashion-mnist-cpu").describe()
    # "good" has one class only: the default ρ = 0.5 needs as many rows of other classes, and says so
    with pytest.raises(ValueError, match="need 20 records from other classes"):
        workload_split(get_workload("good"))
    ids = [f"row-{i:04d}" for i in range(5)]
    chosen = workload_split(get_workload("good"), strategy="ids", forget_ids=ids)
    assert sorted(chosen.forget["record_id"]) == ids and len(chosen.retain) == 35
