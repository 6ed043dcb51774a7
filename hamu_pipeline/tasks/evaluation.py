"""Evaluation tasks: LiRA reference models (one task each, fanned out by the flow's task runner), the
three-model evaluation (each model on its own encoding of the rows), and the plots."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE
from torch import nn

from hamu.data import Split
from hamu.data.tensors import Featurizer
from hamu.evaluation import (
    Evaluation,
    EvaluationConfig,
    ReferenceSpec,
    ReferenceStats,
    evaluate_models,
    make_reference_specs,
    plot_kappa_heatmap,
    plot_loss_histograms,
    plot_roc_curves,
    plot_tradeoff,
    reference_trainer,
    shadow_query,
    train_shadow_model,
)
from hamu.unlearner import StepRecord

Splits = Mapping[str, tuple[Any, Any]]


def shadow_specs(splits: Splits, k: int, seed: int, n_classes: int) -> list[ReferenceSpec]:
    """K reference-model specs trained on halves of the retain rows (never forget or test rows).

    The recipe follows the inputs (:func:`~hamu.evaluation.shadow.reference_trainer`): an MLP on image
    tensors, an embedding-bag classifier on a text preset's token IDs (an MLP cannot read those).
    """
    retain_x, retain_y = splits["retain"]
    trainer = reference_trainer(retain_x, retain_y, n_classes=n_classes)
    query = shadow_query(splits)
    return make_reference_specs(query, train_fn=trainer, candidates=len(retain_y), k=k, seed=seed)


@task(name="train-shadow-reference", cache_policy=NO_CACHE)
def train_shadow(spec: ReferenceSpec) -> ReferenceStats:
    return train_shadow_model(spec)


def evaluate(
    models: Mapping[str, nn.Module],
    splits: Splits,
    *,
    reference_kind: str,
    stats: Sequence[ReferenceStats] | None,
    digests: Mapping[str, str],
    seed: int,
    model_inputs: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
) -> Evaluation:
    """The three-model evaluation; ``model_inputs`` are the models' own encodings (see :func:`own_inputs`)."""
    return evaluate_models(
        models,
        splits,
        reference_kind=reference_kind,  # type: ignore[arg-type]
        config=EvaluationConfig(seed=seed, n_resamples=500),
        shadow=list(stats) if stats else None,
        digests=digests,
        model_inputs=model_inputs,
    )


def own_inputs(
    split: Split, featurizers: Mapping[str, Featurizer], shared: Featurizer, retain_rows: np.ndarray
) -> dict[str, dict[str, torch.Tensor]]:
    """Each model's own encoding of the evaluated rows, for the models whose featurizer is not ``shared``.

    The evaluated rows are the split's forget and test rows and its retain rows at ``retain_rows`` (the
    subsample the shared splits hold), in the same order. Why: a text model reads token IDs of the vocabulary
    fitted on its own training set; a retrain (the reference, or a retrain candidate) fitted it on the retain
    rows, so the champion's encoding would feed it IDs meaning other words. Image featurizers depend only on
    the dataset, so image models get no entry and share one tensor per split.
    """
    encoded: dict[str, dict[str, torch.Tensor]] = {}  # by featurizer config: one encoding per vocabulary
    out: dict[str, dict[str, torch.Tensor]] = {}
    for name, featurizer in featurizers.items():
        config = featurizer.to_config()
        if config == shared.to_config():
            continue
        key = json.dumps(config, sort_keys=True)
        if key not in encoded:
            encoded[key] = {
                "retain": featurizer.encode(split.retain.select([int(i) for i in retain_rows])),
                "forget": featurizer.encode(split.forget),
                "test": featurizer.encode(split.test),
            }
        out[name] = encoded[key]
    return out


def make_plots(
    evaluation: Evaluation | None,
    history: Sequence[StepRecord],
    tensor_names: Sequence[str],
    method: str,
    out: Path,
) -> dict[str, Path]:
    """ROC curves and loss histograms (with an exact reference), the trade-off trajectory and the per-layer
    κ heatmap (when HAMU ran)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    if evaluation is not None:
        paths["roc"] = plot_roc_curves(evaluation.scores, out / "roc.png")
        paths["loss_histograms"] = plot_loss_histograms(evaluation.scores, out / "loss_histograms.png")
    if history:
        paths["tradeoff"] = plot_tradeoff({method: list(history)}, out / "tradeoff.png")
        if history[0].kappa_per_tensor is not None:
            paths["kappa_heatmap"] = plot_kappa_heatmap(list(history), list(tensor_names), out / "kappa.png")
    return {k: Path(v) for k, v in paths.items()}
