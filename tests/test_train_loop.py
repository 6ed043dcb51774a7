"""A project's own training loop and loss, named by a recipe.

The loop trains the original, the exact retrains and the bank members in place of the built-in loop; the
loss is what the built-in loop minimises and what unlearning differentiates. Every way either can fail is
refused by name before anything is written (a path that does not import, a loop that raises, returns another
architecture, returns something that is not a model or leaves NaN weights; a loss that raises or returns no
differentiable scalar)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from hamu.data import dataset_digest, order_digest, tabular_dataset
from hamu.plugins import PluginImportError, source_digest
from hamu.train import Recipe, train_model
from hamu.train.bank import (
    BANK_FILE,
    BankError,
    BankMismatchError,
    BankPlan,
    load_bank,
    read_bank_file,
    recipe_digest,
    train_member,
    write_bank,
)
from hamu.train.losses import LossError, recipe_loss
from hamu.train.recipe import plugin_code_digests
from hamu.train.trainer import TrainingLoopError
from hamu.workloads import PROJECT_ENV

LOOPS = '''
import numpy as np
import torch
from torch import nn

CALLS = []


def constant(model, inputs, targets, *, seed, recipe):
    """Sets every weight to seed/1000: shows which seed the loop was given, and that its result is kept."""
    CALLS.append((tuple(inputs.shape), tuple(targets.shape), seed, recipe.epochs))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(seed / 1000)


def sgd(model, inputs, targets, *, seed, recipe):
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr)
    for _ in range(recipe.epochs):
        loss = nn.functional.cross_entropy(model(inputs), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()


def raises(model, inputs, targets, *, seed, recipe):
    raise RuntimeError("out of GPU memory on node 7")


def other_architecture(model, inputs, targets, *, seed, recipe):
    return nn.Linear(3, 2)


def not_a_model(model, inputs, targets, *, seed, recipe):
    return {"weights": 1}


def nan_weights(model, inputs, targets, *, seed, recipe):
    with torch.no_grad():
        next(iter(model.parameters())).fill_(float("nan"))


NOT_CALLABLE = 3


def flipped(logits, targets):
    """A loss that teaches the other class: a model trained with it must get the labels wrong."""
    return nn.functional.cross_entropy(logits, 1 - targets)


def loss_raises(logits, targets):
    raise KeyError("class weights not configured")


def per_row(logits, targets):
    return nn.functional.cross_entropy(logits, targets, reduction="none")


def detached(logits, targets):
    return nn.functional.cross_entropy(logits, targets).detach()


class Squares:
    """Each feature and its square, scaled by the training rows' mean magnitudes: 2·d inputs."""

    def __init__(self, scale):
        self.scale = [float(v) for v in scale]

    @staticmethod
    def _raw(ds):
        import numpy as np
        values = np.asarray(ds["features"], dtype=np.float32)
        return np.concatenate([values, values**2], axis=1)

    @classmethod
    def fit(cls, ds):
        return cls(np.abs(cls._raw(ds)).mean(axis=0).clip(min=1e-6))

    @classmethod
    def from_config(cls, config):
        return cls(config["scale"])

    def encode(self, ds):
        return torch.from_numpy(self._raw(ds) / np.asarray(self.scale, dtype=np.float32))

    def to_config(self):
        return {"scale": self.scale}


class BadState(Squares):
    def to_config(self):
        return {"scale": object()}


def weighted3(logits, targets):
    return nn.functional.cross_entropy(logits, targets, weight=torch.tensor([1.0, 2.0, 3.0]))


def double_model(model, inputs, targets, *, seed, recipe):
    return model.double()


class FitRaises(Squares):
    @classmethod
    def fit(cls, ds):
        raise OSError("feature store unreachable")


class NoFromConfig:
    @classmethod
    def fit(cls, ds):
        return cls()
'''

WORKLOADS = """
from hamu.data import dataset_digest, tabular_dataset
from hamu.train import Recipe
from hamu.workloads import Workload
import numpy as np


def load():
    gen = np.random.default_rng(0)
    ids = [f"row-{i:04d}" for i in range(60)]
    values = gen.standard_normal((60, 5))
    labels = ["yes" if v > 0 else "no" for v in values[:, 0]]
    table = tabular_dataset(ids, values, labels, name="t", class_names=["no", "yes"])
    return table.select(range(40)), table.select(range(40, 60))


LOOP_RAISES = Workload("loop-raises", load, Recipe(model="mlp", model_config={"hidden": [8]}, epochs=1,
                       train_loop="proj_loops:raises"))
"""


@pytest.fixture()
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    (tmp_path / "proj_loops.py").write_text(LOOPS)
    (tmp_path / "proj_loop_workloads.py").write_text(WORKLOADS)
    (tmp_path / "hamu.toml").write_text('[workloads]\nloop-raises = "proj_loop_workloads:LOOP_RAISES"\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(PROJECT_ENV, raising=False)
    yield tmp_path
    for name in ("proj_loops", "proj_loop_workloads"):
        sys.modules.pop(name, None)


def _table(n: int = 40) -> Any:
    gen = np.random.default_rng(3)
    values = gen.standard_normal((n, 5))
    labels = ["yes" if v > 0 else "no" for v in values[:, 0] + 0.3 * values[:, 1]]
    return tabular_dataset(
        [f"row-{i:04d}" for i in range(n)], values, labels, name="t", class_names=["no", "yes"]
    )


def _recipe(loop: str | None, **changes: object) -> Recipe:
    base = Recipe(model="mlp", model_config={"hidden": [8]}, epochs=3, batch_size=16, lr=0.1, seed=7)
    return base.with_options(train_loop=loop, **changes)


def test_the_loop_trains_and_its_model_is_kept(project: Path) -> None:
    trained = train_model(_table(), _recipe("proj_loops:constant"), role="original", progress=False)
    loops = sys.modules["proj_loops"]
    assert loops.CALLS == [((40, 5), (40,), 7, 3)]  # featurized inputs, the recipe's seed and epochs
    assert all(bool((p == 0.007).all()) for p in trained.model.parameters())
    assert trained.metadata["recipe"]["train_loop"] == "proj_loops:constant"


def test_a_real_loop_is_deterministic_and_learns(project: Path) -> None:
    data = _table()
    runs = [train_model(data, _recipe("proj_loops:sgd", epochs=60), progress=False) for _ in range(2)]
    for a, b in zip(runs[0].model.parameters(), runs[1].model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert runs[0].metadata["metrics"]["train"]["accuracy"] >= 0.8


def test_recipes_without_a_loop_keep_their_digest() -> None:
    """``train_loop`` is left out of a recipe that has none, so banks made before it existed still match."""
    plain = _recipe(None)
    assert "train_loop" not in plain.to_dict()
    assert Recipe.from_dict(plain.to_dict()) == plain
    with_loop = _recipe("proj_loops:sgd")
    assert Recipe.from_dict(with_loop.to_dict()) == with_loop
    assert recipe_digest(with_loop.to_dict()) != recipe_digest(plain.to_dict())


def test_bank_members_are_trained_by_the_loop_with_their_own_seed(project: Path) -> None:
    data = _table()
    plan = BankPlan(dataset_digest(data), _recipe("proj_loops:constant").to_dict(), len(data), 2, seed=3)
    for k in range(2):
        member = train_member(data, plan, k)
        seed = plan.member_recipe(k).seed
        assert all(bool((p == seed / 1000).all()) for p in member.model.parameters())


@pytest.mark.parametrize(
    ("loop", "message"),
    [
        ("no_such_module:train", "cannot import 'no_such_module'"),
        ("proj_loops:missing", "has no attribute 'missing'"),
        ("proj_loops:NOT_CALLABLE", "is int, not a function"),
        ("proj_loops:raises", "raised while training the original: out of GPU memory on node 7"),
        ("proj_loops:other_architecture", "does not match 'mlp'"),
        ("proj_loops:not_a_model", "returned dict, not a torch module"),
        ("proj_loops:nan_weights", "left non-finite values"),
        ("proj_loops:double_model", "other shapes or dtypes"),
    ],
)
def test_a_loop_that_cannot_serve_is_refused_by_name(project: Path, loop: str, message: str) -> None:
    with pytest.raises(TrainingLoopError) as info:
        train_model(_table(), _recipe(loop), role="original", progress=False)
    assert message in str(info.value) and loop in str(info.value)


def test_a_malformed_loop_name_is_refused_when_the_recipe_is_made() -> None:
    with pytest.raises(ValueError, match="train_loop must be 'module:function'"):
        _recipe("just_a_module")
    with pytest.raises(ValueError, match="loss must be 'module:function'"):
        _recipe(None, loss="no_colon")


# ------------------------------------------------------------------------------------ the recipe's loss
def test_the_built_in_loop_minimises_the_recipe_loss(project: Path) -> None:
    data = _table()
    plain = train_model(data, _recipe(None, epochs=30), progress=False)
    flipped = train_model(data, _recipe(None, epochs=30, loss="proj_loops:flipped"), progress=False)
    assert plain.metadata["metrics"]["train"]["accuracy"] >= 0.8
    assert flipped.metadata["metrics"]["train"]["accuracy"] <= 0.2  # it learned the other class
    assert flipped.metadata["recipe"]["loss"] == "proj_loops:flipped"
    assert "loss" not in plain.metadata["recipe"]


def test_the_champion_objective_is_its_recipe_loss(project: Path) -> None:
    import torch.nn.functional as F

    from hamu_pipeline.tasks.models import ServedModel, objective

    trained = train_model(_table(), _recipe(None, loss="proj_loops:flipped"), progress=False)
    served = ServedModel("m", "1", trained.model, trained.metadata, trained.featurizer)
    assert objective(served) is sys.modules["proj_loops"].flipped
    default = train_model(_table(), _recipe(None, epochs=1), progress=False)
    assert (
        objective(ServedModel("m", "2", default.model, default.metadata, default.featurizer))
        is F.cross_entropy
    )


@pytest.mark.parametrize(
    ("loss", "message"),
    [
        ("no_such_module:loss", "cannot import 'no_such_module'"),
        ("proj_loops:NOT_CALLABLE", "is int, not a function"),
        ("proj_loops:loss_raises", "fails on a batch of two rows: 'class weights not configured'"),
        ("proj_loops:per_row", "must return a scalar tensor"),
        ("proj_loops:detached", "must return a scalar tensor that carries gradients"),
    ],
)
def test_a_loss_that_cannot_serve_is_refused_by_name(project: Path, loss: str, message: str) -> None:
    with pytest.raises(LossError) as info:
        recipe_loss(_recipe(None, loss=loss))
    assert message in str(info.value) and loss in str(info.value)
    with pytest.raises(LossError):  # training refuses it the same way, before a step is taken
        train_model(_table(), _recipe(None, loss=loss), progress=False)


def test_hamu_init_with_a_failing_loop_names_the_workload_and_registers_nothing(project: Path) -> None:
    import mlflow
    from conftest import pipeline_home
    from mlflow.tracking import MlflowClient

    from hamu_pipeline.flows.cli import app

    with pipeline_home(project / "home") as home:
        result = CliRunner().invoke(app, ["init", "--preset", "loop-raises"])
        output = " ".join(result.output.split())
        assert result.exit_code == 1, output
        assert "workload 'loop-raises'" in output and "out of GPU memory on node 7" in output
        assert str(home) in mlflow.get_tracking_uri()  # the registry the CLI used, not another test's
        assert MlflowClient().search_model_versions("name='hamu-loop-raises'") == []
        ledger = home / "audit" / "ledger.jsonl"
        assert not ledger.exists() or "register-original" not in ledger.read_text()


# ------------------------------------------------------------------------------ the recipe's featurizer
def test_a_project_featurizer_is_fitted_saved_and_rebuilt(project: Path, tmp_path: Path) -> None:
    """The project's featurizer is fitted on the model's own rows, decides the input width (2·5 here), and
    rebuilds from the checkpoint's metadata to encode exactly as it did."""
    from hamu.data.tensors import PluginFeaturizer
    from hamu.models import load_checkpoint
    from hamu.train.trainer import featurizer_from_metadata

    data = _table()
    trained = train_model(data, _recipe(None, epochs=40, featurizer="proj_loops:Squares"), progress=False)
    assert isinstance(trained.featurizer, PluginFeaturizer)
    assert trained.metadata["config"]["in_features"] == 10
    assert trained.metadata["featurizer"]["factory"] == "proj_loops:Squares"
    assert trained.metadata["metrics"]["train"]["accuracy"] >= 0.8
    path = trained.save(tmp_path / "m.safetensors")
    _, metadata = load_checkpoint(path)
    rebuilt = featurizer_from_metadata(metadata)
    assert torch.equal(rebuilt.encode(data), trained.featurizer.encode(data))
    half = train_model(data.select(range(20)), _recipe(None, featurizer="proj_loops:Squares"), progress=False)
    assert half.metadata["featurizer"]["state"] != trained.metadata["featurizer"]["state"]  # its own rows


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        ("no_such_module:F", "cannot import 'no_such_module'"),
        ("proj_loops:FitRaises", "fit raised: feature store unreachable"),
        ("proj_loops:NoFromConfig", "has no from_config"),
        ("proj_loops:BadState", "to_config must return JSON values"),
    ],
)
def test_a_featurizer_that_cannot_serve_is_refused_by_name(project: Path, factory: str, message: str) -> None:
    from hamu.data.tensors import FeaturizerPluginError

    with pytest.raises(FeaturizerPluginError) as info:
        train_model(_table(), _recipe(None, featurizer=factory), progress=False)
    assert message in str(info.value) and factory in str(info.value)


def test_a_loss_is_checked_at_the_model_width_and_before_any_loop(project: Path) -> None:
    """A loss with one weight per class passes at its width (three classes) and fails at another; a recipe
    with its own loop still has its loss checked before the loop runs."""
    recipe = _recipe(None, loss="proj_loops:weighted3")
    assert recipe_loss(recipe, 3) is sys.modules["proj_loops"].weighted3
    with pytest.raises(LossError, match="fails on a batch of two rows"):
        recipe_loss(recipe, 2)
    with pytest.raises(LossError, match="proj_loops:loss_raises"):
        train_model(_table(), _recipe("proj_loops:constant", loss="proj_loops:loss_raises"), progress=False)
    assert sys.modules["proj_loops"].CALLS == []  # the loop never ran


# ------------------------------------------------------------------------------ the code behind the names
def _sha256(*paths: Path) -> str:
    """The source digest's definition, computed here by hand: SHA-256 over each file's SHA-256 hex line."""
    lines = "".join(hashlib.sha256(p.read_bytes()).hexdigest() + "\n" for p in sorted(paths, key=str))
    return hashlib.sha256(lines.encode()).hexdigest()


def _reimport(*names: str) -> None:
    """What a new process sees: the modules imported afresh from their files."""
    for name in names:
        sys.modules.pop(name, None)


def test_the_source_digest_covers_the_defining_file_and_keeps_the_code_that_ran(project: Path) -> None:
    loops = project / "proj_loops.py"
    assert source_digest("proj_loops:constant") == _sha256(loops)
    assert source_digest("proj_loops:Squares") == _sha256(loops)  # a class: its defining file too
    loops.write_text(loops.read_text() + "\n# tuned the schedule\n")
    # this process still runs the module it imported: its digest is that code's, not the edited file's
    assert source_digest("proj_loops:constant") != _sha256(loops)
    _reimport("proj_loops")
    assert source_digest("proj_loops:constant") == _sha256(loops)
    with pytest.raises(PluginImportError, match="no_such_module"):
        source_digest("no_such_module:train")


def test_a_wrapped_plugin_is_digested_with_its_own_module(project: Path) -> None:
    """A loss wrapped by a decorator defined elsewhere: both files count, so editing either one shows."""
    (project / "proj_deco.py").write_text(
        "import functools\n\n\ndef logged(fn):\n    @functools.wraps(fn)\n"
        "    def inner(*a, **k):\n        return fn(*a, **k)\n    return inner\n"
    )
    losses = project / "proj_losses.py"
    losses.write_text(
        "import torch.nn.functional as F\nfrom proj_deco import logged\n\n\n"
        "@logged\ndef ce(logits, targets):\n    return F.cross_entropy(logits, targets)\n"
    )
    try:
        first = source_digest("proj_losses:ce")
        assert first == _sha256(losses, project / "proj_deco.py")
        losses.write_text(losses.read_text() + "\n# weights changed\n")
        _reimport("proj_losses", "proj_deco")
        assert source_digest("proj_losses:ce") != first
    finally:
        _reimport("proj_losses", "proj_deco")


def test_a_checkpoint_records_the_code_behind_its_plugins(project: Path) -> None:
    digest = _sha256(project / "proj_loops.py")
    trained = train_model(
        _table(), _recipe("proj_loops:constant", featurizer="proj_loops:Squares"), progress=False
    )
    assert trained.metadata["plugin_code"] == {"train_loop": digest, "featurizer": digest}
    plain = train_model(_table(), _recipe(None, epochs=1), progress=False)
    assert "plugin_code" not in plain.metadata
    assert plugin_code_digests(_recipe(None)) == {}


def test_a_bank_trained_with_other_code_under_the_same_name_is_refused(project: Path, tmp_path: Path) -> None:
    data = _table()
    recipe = _recipe("proj_loops:sgd").to_dict()
    plan = BankPlan(dataset_digest(data), recipe, len(data), 2, 1, order_digest(data))
    members = [train_member(data, plan, k) for k in range(2)]
    stale = dataclasses.replace(
        members[1], metadata={**members[1].metadata, "plugin_code": {"train_loop": "0"}}
    )
    with pytest.raises(BankError, match="member 1 was trained with other code"):
        write_bank(tmp_path / "stale", plan, [members[0], stale], train_seconds=1.0)
    assert not (tmp_path / "stale").exists()
    folder = write_bank(tmp_path / "bank", plan, members, train_seconds=1.0)
    stored = read_bank_file(folder)["plan"]
    assert stored["plugin_code"] == {"train_loop": _sha256(project / "proj_loops.py")}
    assert (
        load_bank(
            folder, manifest_digest=plan.manifest_digest, manifest_order=plan.manifest_order, recipe=recipe
        ).plan.bank_id
        == plan.bank_id
    )

    loops = project / "proj_loops.py"
    original = loops.read_text()
    loops.write_text(original.replace("def sgd(", "def sgd(  ", 1))  # same name, other code
    _reimport("proj_loops")  # as a later process would import it
    with pytest.raises(
        BankMismatchError, match=r"other code under the recipe's plugin names \(train_loop 'proj_loops:sgd'"
    ):
        load_bank(
            folder, manifest_digest=plan.manifest_digest, manifest_order=plan.manifest_order, recipe=recipe
        )

    loops.write_text(original)  # the code as trained, but a bank.json from before code digests
    _reimport("proj_loops")
    body = json.loads((folder / BANK_FILE).read_text())
    del body["plan"]["plugin_code"]
    (folder / BANK_FILE).write_text(json.dumps(body))
    with pytest.raises(BankMismatchError, match="predates code digests"):
        load_bank(
            folder, manifest_digest=plan.manifest_digest, manifest_order=plan.manifest_order, recipe=recipe
        )


def test_a_plugin_free_bank_keeps_its_id() -> None:
    """Banks of recipes without plugins have the ID they had before code digests existed."""
    recipe = _recipe(None).to_dict()
    plan = BankPlan("d" * 64, recipe, 40, n_models=2, seed=1)
    body = {"manifest": "d" * 64, "recipe": recipe_digest(recipe), "n_rows": 40, "n_models": 2, "seed": 1}
    assert plan.bank_id == hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
    assert "plugin_code" not in plan.to_dict()
