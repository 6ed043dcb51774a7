"""What a dataset is, independent of where its rows came from: kind, classes, input shape, normalisation.

Every dataset :func:`hamu.data.load_dataset` returns carries its :class:`DatasetSpec` as JSON in
``ds.info.description`` (it survives ``select``, ``shuffle`` and ``concatenate_datasets``), so any subset can
be turned into tensors or trained on without the caller passing the spec around.

The row schema is fixed per kind, so the rest of the code never guesses column names:

* image: ``record_id`` (str), ``pixels`` (fixed-size list of uint8, C·H·W values, row-major), ``label``;
* text: ``record_id`` (str), ``text`` (str), ``label``;
* tabular: ``record_id`` (str), ``features`` (fixed-size list of float32, ``input_shape[0]`` values),
  ``label``: a user's own table (:func:`hamu.data.tabular_dataset`).

``label`` is a ``ClassLabel`` (int64 with the class names).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

SPEC_PREFIX = "hamu-spec:"
PIXELS = "pixels"
TEXT = "text"
FEATURES = "features"
LABEL = "label"

Kind = Literal["image", "text", "tabular"]


@dataclass(frozen=True)
class DatasetSpec:
    """Static facts about one dataset (``input_shape``, ``pixel_scale``, ``mean``, ``std``: images only)."""

    name: str
    kind: Kind
    class_names: tuple[str, ...]
    id_prefix: str
    input_shape: tuple[int, ...] = ()
    pixel_scale: float = 255.0
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    source: str = ""
    license: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetSpec:
        d = dict(data)
        for key in ("class_names", "input_shape", "mean", "std"):
            d[key] = tuple(d.get(key, ()))
        return cls(**d)

    def class_index(self, value: int | str) -> int:
        """The class index for an index or a class name; a clear error lists the valid ones."""
        if isinstance(value, str) and not value.lstrip("-").isdigit():
            if value not in self.class_names:
                raise ValueError(
                    f"unknown class {value!r} for {self.name}; classes: {', '.join(self.class_names)}"
                )
            return self.class_names.index(value)
        idx = int(value)
        if not 0 <= idx < self.num_classes:
            raise ValueError(f"class index {idx} out of range for {self.name} (0..{self.num_classes - 1})")
        return idx


def attach_spec_description(spec: DatasetSpec) -> str:
    """The ``DatasetInfo.description`` string that carries ``spec``."""
    return SPEC_PREFIX + spec.to_json()


def spec_of(ds: Any) -> DatasetSpec:
    """The :class:`DatasetSpec` a dataset carries; raises if it was not made by :mod:`hamu.data`."""
    description = getattr(getattr(ds, "info", None), "description", None) or ""
    if not description.startswith(SPEC_PREFIX):
        raise ValueError(
            "this dataset carries no hamu DatasetSpec (load it with hamu.data.load_dataset, or pass spec=...)"
        )
    return DatasetSpec.from_dict(json.loads(description[len(SPEC_PREFIX) :]))
