"""A workload written outside hamu: a tabular classifier on a CSV with the organisation's own record IDs.

``patients.csv`` holds one row per patient: ``record_id`` (what a deletion request names), 30 numeric
measurements, and ``diagnosis``. Every fourth row is held out as the test set (non-members), the rest is
the training manifest that deletion requests are validated against. The model is hamu's MLP; it is trained
by this project's own loop, :func:`train` (AdamW with weight decay), which the recipe names by
import path so that the original, every exact retrain and every bank member are trained the same way.

Data: the Breast Cancer Wisconsin (Diagnostic) data set (UCI Machine Learning Repository, CC BY 4.0), as
shipped with scikit-learn; the record IDs are this example's.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hamu.data import tabular_dataset
from hamu.train import Recipe
from hamu.workloads import Workload

DATA = Path(__file__).resolve().parent / "patients.csv"
CLASSES = ("malignant", "benign")


def load() -> tuple[Any, Any]:
    """(training manifest, test set) from the CSV."""
    with open(DATA, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    columns = [c for c in rows[0] if c not in ("record_id", "diagnosis")]
    table = tabular_dataset(
        [r["record_id"] for r in rows],
        np.array([[float(r[c]) for c in columns] for r in rows]),
        [r["diagnosis"] for r in rows],
        name="patients",
        class_names=CLASSES,
        source=DATA.name,
    )
    test = [i for i in range(len(rows)) if i % 4 == 0]
    train = [i for i in range(len(rows)) if i % 4 != 0]
    return table.select(train), table.select(test)


def train(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *, seed: int, recipe: Recipe
) -> None:
    """This project's training loop: AdamW with weight decay and cross-entropy (the recipe's default loss,
    which unlearning also differentiates), the recipe's epochs, batch size and learning rate, batches in an
    order drawn from ``seed``. A loop that minimised another loss would name it as the recipe's ``loss``."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=1e-4)
    order = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    for _ in range(recipe.epochs):
        for idx in torch.randperm(len(targets), generator=order).split(recipe.batch_size):
            loss = F.cross_entropy(model(inputs[idx].to(device)), targets[idx].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()


WORKLOAD = Workload(
    name="patients",
    load=load,
    recipe=Recipe(
        model="mlp",
        model_config={"hidden": [64, 64]},
        epochs=40,
        batch_size=64,
        lr=2e-3,
        seed=0,
        train_loop="patients_workload:train",
    ),
    description="MLP on 30 measurements per patient; a CSV with its own record IDs",
)
