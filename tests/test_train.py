"""hamu.train: the original / retrained-reference pair, its digests, and the properties unlearning needs
(above-chance accuracy, a membership signal in the original, usable gradient norms)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from hamu.data import (
    dataset_digest,
    load_train_test,
    manifest_digest,
    record_digests,
    record_ids,
    split_rho,
    subset,
)
from hamu.models import load_checkpoint, save_checkpoint
from hamu.train import (
    PRESETS,
    Recipe,
    TrainedPair,
    evaluate_model,
    featurizer_from_metadata,
    get_preset,
    gradient_norm,
    loss_attack_auc,
    per_example_losses,
    preset_split,
    train_model,
    train_pair,
)


@pytest.fixture(scope="module")
def digits_pair() -> TrainedPair:
    preset = get_preset("digits-cpu")
    return train_pair(preset_split(preset), preset.recipe, progress=False)


def _assert_reference_never_saw_forget(pair: TrainedPair) -> None:
    split = pair.split
    ref, orig = pair.reference.metadata, pair.original.metadata
    assert ref["data_digest"] == split.retain_digest == dataset_digest(split.retain)
    assert orig["data_digest"] == split.train_digest == dataset_digest(split.train)
    # The retain set holds no forget row, neither by ID nor by content; so the set the reference was
    # trained on (its digest) contains no forget row.
    assert not set(record_ids(split.forget)) & set(record_ids(split.retain))
    assert not set(record_digests(split.forget)) & set(record_digests(split.retain))
    retain_manifest = list(zip(record_ids(split.retain), record_digests(split.retain), strict=True))
    assert manifest_digest(retain_manifest) == ref["data_digest"]
    assert ref["split"]["digests"]["forget"] == split.forget_digest
    assert ref["recipe"] == orig["recipe"] and ref["seed"] == orig["seed"]


def test_digits_pair_trains_above_chance_and_keeps_lineage(digits_pair: TrainedPair) -> None:
    for trained in (digits_pair.original, digits_pair.reference):
        metrics = trained.metadata["metrics"]
        assert metrics["test"]["accuracy"] > 0.8  # chance is 0.1
        assert metrics["retain"]["accuracy"] > 0.8
    _assert_reference_never_saw_forget(digits_pair)
    # The class part of the forget set is unseen by the reference: it does worse there.
    orig_forget = digits_pair.original.metadata["metrics"]["forget"]["loss"]
    assert digits_pair.reference.metadata["metrics"]["forget"]["loss"] > orig_forget


def test_gradient_norms_are_usable(digits_pair: TrainedPair) -> None:
    split = digits_pair.split
    for trained in (digits_pair.original, digits_pair.reference):
        for part in (split.retain, split.forget):
            norm = gradient_norm(trained.model, part, trained.featurizer)
            assert 0.05 <= norm < 50, norm  # clipped to 1 in unlearning: neither vanishing nor NaN


def test_training_is_deterministic_and_leaves_global_rng_alone() -> None:
    train, test = load_train_test("digits")
    split = split_rho(train, test, forget_class=1, rho=0.25, seed=2)
    recipe = Recipe(model="mlp", epochs=3, batch_size=128, lr=1e-3, seed=7)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = train_model(split.retain, recipe, progress=False)
    after = torch.rand(1)
    b = train_model(split.retain, recipe, progress=False)
    assert torch.equal(before, after)  # training ran inside a forked RNG
    for (name, pa), (_, pb) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert torch.equal(pa, pb), name
    c = train_model(split.retain, recipe.with_options(seed=8), progress=False)
    assert not torch.equal(a.model.state_dict()["net.1.weight"], c.model.state_dict()["net.1.weight"])
    assert a.metadata["seed"] == 7 and a.metadata["recipe"]["seed"] == 7


def test_checkpoint_of_a_trained_model(digits_pair: TrainedPair, tmp_path: Path) -> None:
    paths = digits_pair.save(tmp_path)
    model, meta = load_checkpoint(paths["reference"], expected_data_digest=digits_pair.split.retain_digest)
    feat = featurizer_from_metadata(meta)
    ref = digits_pair.reference
    assert evaluate_model(model, digits_pair.split.test, feat) == evaluate_model(
        ref.model, digits_pair.split.test, ref.featurizer
    )
    assert meta["recipe"] == ref.metadata["recipe"] and meta["role"] == "reference"
    with pytest.raises(ValueError, match="digest mismatch"):
        load_checkpoint(paths["reference"], expected_data_digest=digits_pair.split.train_digest)


def test_text_model_trains_from_scratch_on_tweets(tmp_path: Path) -> None:
    train, test = load_train_test("tweets")
    train, test = subset(train, 8000, seed=0), subset(test, 2000, seed=0)
    recipe = get_preset("tweets-cpu").recipe.with_options(epochs=3)
    trained = train_model(train, recipe, progress=False, eval_sets={"test": test})
    assert trained.metadata["metrics"]["test"]["accuracy"] > 0.55  # majority class is ~0.42
    assert trained.metadata["featurizer"]["kind"] == "text"
    vocab = trained.metadata["featurizer"]["vocab"]
    assert trained.metadata["config"]["vocab_size"] == len(vocab) <= recipe.vocab_size
    path = save_checkpoint(trained.model, tmp_path / "text.safetensors", trained.metadata)
    model, meta = load_checkpoint(path, expected_data_digest=dataset_digest(train))
    again = evaluate_model(model, test, featurizer_from_metadata(meta))
    assert again == trained.metadata["metrics"]["test"]


def test_recipe_and_preset_errors() -> None:
    with pytest.raises(ValueError, match="unknown optimizer"):
        Recipe(optimizer="lion")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="epochs must be"):
        Recipe(epochs=0)
    with pytest.raises(ValueError, match="unknown preset 'x'; valid: " + ", ".join(PRESETS)):
        get_preset("x")
    train, _ = load_train_test("digits")
    with pytest.raises(ValueError, match="valid names: mlp, cnn, resnet20, text"):
        train_model(train, Recipe(model="transformer"), progress=False)
    with pytest.raises(ValueError, match="empty"):
        train_model(train.select([]), Recipe(model="mlp"), progress=False)
    assert (
        Recipe.from_dict(get_preset("fashion-mnist-cpu").recipe.to_dict())
        == get_preset("fashion-mnist-cpu").recipe
    )


def test_loss_attack_auc() -> None:
    assert loss_attack_auc(np.array([0.1, 0.2]), np.array([0.3, 0.4])) == 1.0
    assert loss_attack_auc(np.array([0.5, 0.5]), np.array([0.5])) == 0.5
    assert loss_attack_auc(np.array([0.9]), np.array([0.1, 0.2])) == 0.0


def _membership(pair: TrainedPair) -> dict[str, Any]:
    split = pair.split
    out: dict[str, Any] = {}
    for role in ("original", "reference"):
        trained = getattr(pair, role)
        forget = per_example_losses(trained.model, split.forget, trained.featurizer)
        test = per_example_losses(trained.model, split.test, trained.featurizer)
        out[role] = {"auc": loss_attack_auc(forget, test), "forget": forget.mean(), "test": test.mean()}
    return out


@pytest.mark.slow
def test_fashion_mnist_cpu_preset_pair() -> None:
    """The CPU preset: both models above chance, their training time recorded, the original carries a
    membership signal the reference lacks, and gradients stay usable (not trained to zero loss)."""
    preset = get_preset("fashion-mnist-cpu")
    split = preset_split(preset)
    pair = train_pair(split, preset.recipe, progress=False)
    _assert_reference_never_saw_forget(pair)
    for trained in (pair.original, pair.reference):
        metrics = trained.metadata["metrics"]
        assert metrics["test"]["accuracy"] > 0.8  # chance is 0.1
        assert trained.metadata["train_seconds"] > 0  # recorded: the cost gate reads it (never a time limit)
    orig = pair.original.metadata["metrics"]
    assert orig["retain"]["loss"] < 0.5 * orig["test"]["loss"]  # a clear generalisation gap
    mia = _membership(pair)
    assert mia["original"]["auc"] > mia["reference"]["auc"] + 0.03, mia
    assert mia["original"]["forget"] < 0.5 * mia["reference"]["forget"], mia
    for part in (split.retain, split.forget):
        norm = gradient_norm(pair.original.model, part, pair.original.featurizer)
        assert 0.05 <= norm < 50, norm
