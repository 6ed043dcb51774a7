"""A user's own table as a hamu dataset: record IDs, a fixed-length feature vector per row, a class label.

This is the shape a workload (:mod:`hamu.workloads`) hands the pipeline when its data is neither images nor
text: a CSV of applicants, patients or transactions with the organisation's own record IDs. The IDs must
already be what a deletion request names (lowercase letters, digits, ``.``, ``_``, ``-``; see
docs/requests.md), and unique: a duplicate or malformed ID is an error naming it, never a silent drop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from hamu.data.digest import is_valid_record_id
from hamu.data.sources import build_dataset
from hamu.data.spec import DatasetSpec


def tabular_dataset(
    record_ids: Sequence[str],
    features: Any,
    labels: Sequence[Any],
    *,
    name: str,
    class_names: Sequence[str],
    source: str = "",
) -> Any:
    """A ``datasets.Dataset`` of kind ``tabular`` carrying its :class:`DatasetSpec`.

    ``features``: an ``(n, d)`` array of finite numbers; ``labels``: class names or indices into
    ``class_names``.
    """
    ids = [str(i) for i in record_ids]
    bad = next((i for i in ids if not is_valid_record_id(i)), None)  # it could never be erased
    if bad is not None:
        raise ValueError(f"{name}: record ID {bad!r} is not a valid record ID (lowercase a-z 0-9 . _ -)")
    seen: set[str] = set()
    duplicate = next((i for i in ids if i in seen or seen.add(i)), None)  # type: ignore[func-returns-value]
    if duplicate is not None:
        raise ValueError(f"{name}: record ID {duplicate!r} appears more than once")
    values = np.asarray(features, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] != len(ids):
        raise ValueError(f"{name}: expected features of shape ({len(ids)}, d), got {values.shape}")
    spec = DatasetSpec(
        name=name,
        kind="tabular",
        class_names=tuple(str(c) for c in class_names),
        id_prefix=name,
        input_shape=(int(values.shape[1]),),
        source=source,
    )
    index = np.asarray([spec.class_index(label) for label in labels], dtype=np.int64)
    return build_dataset(spec, ids, index, features=values)
