"""A workload written outside hamu: a tabular classifier on a CSV with the organisation's own record IDs.

``patients.csv`` holds one row per patient: ``record_id`` (what a deletion request names), 30 numeric
measurements, and ``diagnosis``. Every fourth row is held out as the test set (non-members), the rest is
the training manifest that deletion requests are validated against. The model is hamu's MLP, trained with
the recipe below for the original, every exact retrain and every reference.

Data: the Breast Cancer Wisconsin (Diagnostic) data set (UCI Machine Learning Repository, CC BY 4.0), as
shipped with scikit-learn; the record IDs are this example's.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

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


WORKLOAD = Workload(
    name="patients",
    load=load,
    recipe=Recipe(
        model="mlp",
        model_config={"hidden": [64, 64]},
        epochs=40,
        batch_size=64,
        lr=2e-3,
        optimizer="adam",
        seed=0,
    ),
    description="MLP on 30 measurements per patient; a CSV with its own record IDs",
)
