"""The text path of the evaluation, on a shrunk slice of the real tweets preset: LiRA references on token-ID
inputs, and every model evaluated (and a retrain registered) with its own featurizer.

A text model's vocabulary is fitted on its own training set, so the champion (retain ∪ forget) and the
retrained reference (retain only) encode the same tweet as different token IDs. Real data, real training
(the tweets-cpu recipe, fewer epochs), the pipeline's own task functions; nothing is mocked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from hamu.data.sources import load_train_test
from hamu.data.splits import Split, make_split, subset
from hamu.evaluation import (
    MLPTrainer,
    ShadowConfig,
    TokenBagTrainer,
    compute_per_example,
    evaluate_models,
    reference_trainer,
)
from hamu.models import CheckpointError, load_checkpoint, save_checkpoint
from hamu.train import TrainedModel, get_preset, train_model
from hamu.train.trainer import featurizer_from_metadata
from hamu_pipeline.tasks.env import StatePaths
from hamu_pipeline.tasks.evaluation import evaluate, own_inputs, shadow_specs, train_shadow
from hamu_pipeline.tasks.models import ServedModel, candidate_source, retrained_reference

pytestmark = pytest.mark.usefixtures("single_thread")

PRESET = "tweets-cpu"
TRAIN_ROWS, TEST_ROWS, FORGET_ROWS, EVAL_RETAIN_ROWS = 900, 300, 150, 300


@dataclass
class TextBatch:
    """What the deletion-batch flow holds when it evaluates: split, champion, reference, shared tensors."""

    split: Split
    champion: ServedModel
    reference: TrainedModel
    keep: np.ndarray
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]]


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> TextBatch:
    """A shrunk tweets-cpu batch: the preset's ρ split of 900 training tweets, a champion trained on all of
    them, the reference trained by the pipeline's task on the retain rows, and the champion's tensors."""
    preset = get_preset(PRESET)
    train, test = load_train_test(preset.dataset)
    train, test = subset(train, TRAIN_ROWS, seed=0), subset(test, TEST_ROWS, seed=0)
    options = {**dict(preset.split), "size": FORGET_ROWS}
    split = make_split(str(options.pop("strategy")), train, test, **options)
    recipe = preset.recipe.with_options(epochs=2)
    home = tmp_path_factory.mktemp("hamu-text")
    trained = train_model(split.train, recipe, spec=split.spec, role="original", progress=False)
    checkpoint = trained.save(home / "original.safetensors")
    champion = ServedModel(
        "hamu-tweets", "1", trained.model, trained.metadata, trained.featurizer, checkpoint
    )
    reference, kind, _ = retrained_reference(StatePaths(home), split, champion, train=True)
    assert kind == "retrained" and reference is not None
    feat = champion.featurizer
    retain, forget, test_t = (split.tensors(p, feat) for p in ("retain", "forget", "test"))
    keep = np.sort(np.random.default_rng(0).choice(len(retain[1]), size=EVAL_RETAIN_ROWS, replace=False))
    splits = {"retain": (retain[0][keep], retain[1][keep]), "forget": forget, "test": test_t}
    return TextBatch(split, champion, reference, keep, splits)


# -- LiRA references on token IDs -------------------------------------------------------------------------


def test_shadow_references_train_and_score_on_token_ids(batch: TextBatch) -> None:
    """The flow's shadow stage on a text preset: Long token IDs get an embedding-bag reference recipe, whose
    φ on the forget ⊕ test rows calibrates offline LiRA for every model."""
    retain_x = batch.splits["retain"][0]
    assert retain_x.dtype == torch.int64
    specs = shadow_specs(batch.splits, 2, 0, 3)
    assert all(isinstance(s.train_fn, TokenBagTrainer) for s in specs)
    stats = [train_shadow.fn(s) for s in specs]
    n_query = len(batch.split.forget) + len(batch.split.test)
    assert all(s.phi.shape == (n_query,) and np.isfinite(s.phi).all() for s in stats)
    assert not np.allclose(stats[0].phi, stats[1].phi)  # two references on different halves of the pool
    models = {
        "original": batch.champion.model,
        "retrained": batch.reference.model,
        "unlearned": batch.champion.model,
    }
    own = own_inputs(
        batch.split, {"retrained": batch.reference.featurizer}, batch.champion.featurizer, batch.keep
    )
    evaluation = evaluate(
        models, batch.splits, reference_kind="retrained", stats=stats, digests={}, seed=0, model_inputs=own
    )
    shadow = evaluation.report.to_dict()["shadow"]
    assert shadow["status"] == "run" and shadow["k"] == 2
    for m in models:
        auc = shadow["models"][m]["forget_vs_test"]["metrics"]["auc"]["estimate"]
        assert 0.0 <= auc <= 1.0
        assert np.isfinite(evaluation.scores.lira[m]["forget"]).all()


def test_library_shadow_default_recipe_follows_the_input_dtype(batch: TextBatch) -> None:
    """evaluate_models' own LiRA (no train_fn) on token IDs picks the embedding-bag recipe; images keep
    the MLP. Token IDs above the pool's vocabulary read as unknown instead of indexing past the table."""
    x, y = batch.splits["retain"]
    assert isinstance(reference_trainer(x.float(), y), MLPTrainer)
    trainer = reference_trainer(x, y, n_classes=3)
    assert isinstance(trainer, TokenBagTrainer)
    model = TokenBagTrainer(x, y, n_classes=3, steps=20)(np.arange(len(y)), 0)
    top = int(x.max())
    rows = x[:4].clone()
    rows[:, 0] = top + 1000  # no pool row uses this ID
    unknown = rows.clone()
    unknown[:, 0] = 1
    with torch.no_grad():
        torch.testing.assert_close(model(rows), model(unknown))
    evaluation = evaluate_models(
        {
            "original": batch.champion.model,
            "retrained": batch.champion.model,
            "unlearned": batch.champion.model,
        },
        batch.splits,
        reference_kind="proxy",
        shadow=ShadowConfig(k=2),
    )
    shadow = evaluation.report.to_dict()["shadow"]
    assert shadow["status"] == "run" and shadow["recipe"] == "TokenBagTrainer on the retain split"


# -- each model on its own featurizer -------------------------------------------------------------------


def test_reference_is_evaluated_on_its_own_vocabulary(batch: TextBatch) -> None:
    """The reference fitted its vocabulary on the retain rows: it differs from the champion's, and the
    evaluation scores the reference on the rows encoded with its own vocabulary (the champion and an
    unlearned candidate keep the champion's encoding)."""
    champion, reference = batch.champion, batch.reference
    assert reference.featurizer.to_config()["vocab"] != champion.featurizer.to_config()["vocab"]
    featurizers = {"retrained": reference.featurizer, "unlearned": champion.featurizer}
    own = own_inputs(batch.split, featurizers, champion.featurizer, batch.keep)
    assert set(own) == {"retrained"}  # an unlearned candidate reads the champion's encoding
    forget_y = batch.splits["forget"][1]
    ref_forget = reference.featurizer.encode(batch.split.forget)
    torch.testing.assert_close(own["retrained"]["forget"], ref_forget)
    assert not torch.equal(ref_forget, batch.splits["forget"][0])  # the two encodings really differ
    retain_rows = batch.split.retain.select([int(i) for i in batch.keep])
    torch.testing.assert_close(own["retrained"]["retain"], reference.featurizer.encode(retain_rows))

    models = {"original": champion.model, "retrained": reference.model, "unlearned": champion.model}
    evaluation = evaluate(
        models, batch.splits, reference_kind="retrained", stats=None, digests={}, seed=0, model_inputs=own
    )
    outputs = evaluation.scores.outputs
    own_loss = compute_per_example(reference.model, (ref_forget, forget_y)).loss
    np.testing.assert_allclose(outputs["retrained"]["forget"].loss, own_loss)
    np.testing.assert_allclose(
        outputs["original"]["forget"].loss, compute_per_example(champion.model, batch.splits["forget"]).loss
    )
    # Fed the champion's encoding, the reference would read other words, or IDs past its embedding table:
    ref_vocab = reference.metadata["config"]["vocab_size"]
    assert int(batch.splits["retain"][0].max()) >= ref_vocab
    assert int(own["retrained"]["retain"].max()) < ref_vocab


def test_model_inputs_must_encode_the_same_rows(batch: TextBatch) -> None:
    models = {"original": batch.champion.model, "retrained": batch.reference.model}
    with pytest.raises(ValueError, match="different lengths"):
        evaluate_models(
            models, batch.splits, model_inputs={"retrained": {"forget": batch.splits["forget"][0][:5]}}
        )
    with pytest.raises(ValueError, match="unknown models"):
        evaluate_models(models, batch.splits, model_inputs={"nope": {}})
    with pytest.raises(ValueError, match="unknown split"):
        evaluate_models(models, batch.splits, model_inputs={"retrained": {"valid": batch.splits["test"][0]}})


def test_retrain_candidate_carries_the_reference_featurizer(batch: TextBatch, tmp_path: Path) -> None:
    """A retrain candidate is the reference: the metadata it is registered with (the flow's ``dict(source.
    metadata)`` plus lineage) holds the reference's featurizer and model config, so the registered checkpoint
    rebuilds and serves with the retain-set vocabulary. With the champion's it would not even rebuild."""
    champion, reference = batch.champion, batch.reference
    assert candidate_source(champion, reference, "unlearn") is champion
    source = candidate_source(champion, reference, "retrain")
    assert source is reference
    with pytest.raises(ValueError, match="there is none"):
        candidate_source(champion, None, "retrain")

    metadata = dict(source.metadata)
    metadata.update(role="retrained", data_digest=batch.split.retain_digest, batch_id="b-test")
    path = save_checkpoint(reference.model, tmp_path / "model.safetensors", metadata)
    model, loaded = load_checkpoint(path, expected_data_digest=batch.split.retain_digest)
    served = featurizer_from_metadata(loaded)
    assert served.to_config() == reference.featurizer.to_config() != champion.featurizer.to_config()
    test_x = served.encode(batch.split.test)
    with torch.no_grad():
        torch.testing.assert_close(model(test_x), reference.model(test_x))

    assert reference.metadata["config"]["vocab_size"] != champion.metadata["config"]["vocab_size"]
    wrong = {**champion.metadata, "role": "retrained"}
    bad = save_checkpoint(reference.model, tmp_path / "wrong.safetensors", wrong)
    with pytest.raises(CheckpointError, match="weights do not fit 'text'"):
        load_checkpoint(bad)
