"""From hamu datasets to torch tensors and ``DataLoader`` s of ``(inputs, targets)`` batches.

A *featurizer* turns rows into model inputs. Images need only their :class:`DatasetSpec` (scale, mean,
std). Text needs a vocabulary, and the vocabulary is part of what a model learned from its training data:
it is fitted on the model's own training set (the retrained reference's vocabulary never sees a forget
row) and saved in the checkpoint metadata via :meth:`to_config`.

The tokenizer is deliberately simple and deterministic: lowercase, URLs become ``<url>``, words (with an
inner apostrophe), ``#hashtags`` and ``@mentions`` are tokens, any other non-space character is a token.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from hamu.data.digest import arrow_table
from hamu.data.spec import FEATURES, LABEL, PIXELS, TEXT, DatasetSpec, spec_of

PAD, UNK, URL = "<pad>", "<unk>", "<url>"
_URL_RE = re.compile(r"(?:https?://|www\.)\S+")
_TOKEN_RE = re.compile(r"<url>|[#@][a-z0-9_]+|[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")


def tokenize(text: str) -> list[str]:
    """Deterministic tokens of ``text`` (see the module docstring)."""
    return _TOKEN_RE.findall(_URL_RE.sub(f" {URL} ", text.lower()))


class Featurizer(Protocol):
    """Turns dataset rows into a model-input tensor; serialisable for checkpoints."""

    kind: str

    def encode(self, ds: Any) -> torch.Tensor: ...

    def to_config(self) -> dict[str, Any]: ...


class ImageFeaturizer:
    """uint8 pixels → float32 ``(n, C, H, W)``, scaled to [0, 1] then standardised per channel."""

    kind = "image"

    def __init__(
        self, input_shape: Sequence[int], pixel_scale: float, mean: Sequence[float], std: Sequence[float]
    ) -> None:
        self.input_shape = tuple(int(s) for s in input_shape)
        self.pixel_scale = float(pixel_scale)
        channels = self.input_shape[0]
        self.mean = tuple(float(m) for m in mean) or (0.0,) * channels
        self.std = tuple(float(s) for s in std) or (1.0,) * channels
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(f"mean/std need {channels} values, got {self.mean} / {self.std}")

    @classmethod
    def from_spec(cls, spec: DatasetSpec) -> ImageFeaturizer:
        return cls(spec.input_shape, spec.pixel_scale, spec.mean, spec.std)

    def encode(self, ds: Any) -> torch.Tensor:
        column = arrow_table(ds).column(PIXELS)
        flat = np.asarray(column.combine_chunks().flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
        x = torch.from_numpy(flat.reshape(-1, *self.input_shape)) / self.pixel_scale
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)
        return (x - mean) / std

    def to_config(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "input_shape": list(self.input_shape),
            "pixel_scale": self.pixel_scale,
            "mean": list(self.mean),
            "std": list(self.std),
        }


class TextFeaturizer:
    """Text → ``(n, max_len)`` int64 token IDs (0 = padding, 1 = unknown), from a fixed vocabulary."""

    kind = "text"

    def __init__(self, vocab: Sequence[str], max_len: int = 64) -> None:
        if len(vocab) < 2 or vocab[0] != PAD or vocab[1] != UNK:
            raise ValueError(f"a vocabulary starts with {PAD!r}, {UNK!r}")
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        self.vocab = tuple(vocab)
        self.max_len = int(max_len)
        self.index = {tok: i for i, tok in enumerate(self.vocab)}
        if len(self.index) != len(self.vocab):
            raise ValueError("the vocabulary has duplicate tokens")

    @classmethod
    def fit(
        cls, texts: Iterable[str], *, max_size: int = 20000, min_freq: int = 2, max_len: int = 64
    ) -> TextFeaturizer:
        """Vocabulary of the ``max_size`` most frequent tokens seen at least ``min_freq`` times.

        Ties are broken alphabetically, so the same texts always give the same vocabulary. ``min_freq`` 2
        keeps one-off tokens (often names in a single record) out of the model's vocabulary.
        """
        counts = Counter(tok for text in texts for tok in tokenize(text))
        kept = sorted(
            (t for t, c in counts.items() if c >= min_freq and t not in (PAD, UNK)),
            key=lambda t: (-counts[t], t),
        )
        return cls([PAD, UNK, *kept[: max(0, max_size - 2)]], max_len=max_len)

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        out = torch.zeros((len(texts), self.max_len), dtype=torch.int64)
        for row, text in enumerate(texts):
            ids = [self.index.get(tok, 1) for tok in tokenize(text)[: self.max_len]]
            if ids:
                out[row, : len(ids)] = torch.tensor(ids, dtype=torch.int64)
        return out

    def encode(self, ds: Any) -> torch.Tensor:
        return self.encode_texts([str(t) for t in arrow_table(ds).column(TEXT).to_pylist()])

    def to_config(self) -> dict[str, Any]:
        return {"kind": self.kind, "max_len": self.max_len, "vocab": list(self.vocab)}


class TabularFeaturizer:
    """Feature vectors → float32 ``(n, d)``, standardised with the mean and spread of the model's own
    training rows (fitted like a text vocabulary: a retrain never sees a forget row's values)."""

    kind = "tabular"

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        if len(mean) != len(std) or not len(mean):
            raise ValueError(f"mean and std need one value per feature, got {len(mean)} and {len(std)}")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) if s > 0 else 1.0 for s in std)

    @staticmethod
    def values(ds: Any) -> np.ndarray:
        """The ``features`` column as a float32 ``(n, d)`` array."""
        column = arrow_table(ds).column(FEATURES).combine_chunks()
        width = column.type.list_size
        flat = np.asarray(column.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
        return flat.reshape(-1, width)

    @classmethod
    def fit(cls, ds: Any) -> TabularFeaturizer:
        values = cls.values(ds).astype(np.float64)
        if not len(values):
            raise ValueError("a tabular featurizer needs at least one training row to fit on")
        return cls(values.mean(axis=0).tolist(), values.std(axis=0).tolist())

    def encode(self, ds: Any) -> torch.Tensor:
        values = self.values(ds)
        if values.shape[1] != len(self.mean):
            raise ValueError(
                f"rows have {values.shape[1]} features; this featurizer was fitted on {len(self.mean)}"
            )
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        return torch.from_numpy((values - mean) / std)

    def to_config(self) -> dict[str, Any]:
        return {"kind": self.kind, "mean": list(self.mean), "std": list(self.std)}


class FeaturizerPluginError(ValueError):
    """A project's featurizer cannot be used; the message names it."""


class PluginFeaturizer:
    """A project's own featurizer, named ``"module:Class"`` by a recipe, wrapped so checkpoints rebuild it.

    The class provides ``fit(train_rows) -> instance`` (a classmethod: fitted on the model's own training
    rows only, like a vocabulary), ``encode(rows) -> Tensor``, ``to_config() -> dict`` (JSON values) and
    ``from_config(dict) -> instance``. The wrapper stores the class's name next to its state, so
    :func:`featurizer_from_config` rebuilds it wherever the project's code imports.
    """

    kind = "plugin"

    def __init__(self, factory: str, inner: Any) -> None:
        self.factory = factory
        self.inner = inner

    @classmethod
    def fit(cls, factory: str, ds: Any) -> PluginFeaturizer:
        """Fitted on ``ds``, and its state checked to survive a checkpoint (JSON) before any training."""
        fitted = cls(factory, _plugin_call(factory, "fit", ds))
        try:
            json.dumps(fitted.to_config())
        except Exception as exc:
            raise FeaturizerPluginError(
                f"featurizer {factory!r}: to_config must return JSON values (for the checkpoint): {exc}"
            ) from exc
        return fitted

    @classmethod
    def from_state(cls, factory: str, state: dict[str, Any]) -> PluginFeaturizer:
        return cls(factory, _plugin_call(factory, "from_config", state))

    def encode(self, ds: Any) -> torch.Tensor:
        try:
            encoded = self.inner.encode(ds)
        except Exception as exc:
            raise FeaturizerPluginError(f"featurizer {self.factory!r}: encode raised: {exc}") from exc
        if not isinstance(encoded, torch.Tensor) or encoded.dim() < 1 or len(encoded) != len(ds):
            raise FeaturizerPluginError(
                f"featurizer {self.factory!r}: encode must return a tensor with one row per input row"
            )
        return encoded

    def to_config(self) -> dict[str, Any]:
        return {"kind": self.kind, "factory": self.factory, "state": self.inner.to_config()}


def _plugin_call(factory: str, method: str, argument: Any) -> Any:
    """``Class.method(argument)`` of the project's featurizer class, every failure named."""
    from hamu.plugins import PluginImportError, import_target

    try:
        found = import_target(factory)
    except PluginImportError as exc:
        raise FeaturizerPluginError(f"featurizer {factory!r}: {exc}") from exc
    missing = [m for m in ("fit", "from_config") if not callable(getattr(found, m, None))]
    if missing:
        raise FeaturizerPluginError(
            f"featurizer {factory!r} has no {' or '.join(missing)} (see PluginFeaturizer)"
        )
    try:
        return getattr(found, method)(argument)
    except Exception as exc:
        raise FeaturizerPluginError(f"featurizer {factory!r}: {method} raised: {exc}") from exc


def featurizer_for(data: Any, *, fit_on: Any = None, **text_options: Any) -> Featurizer:
    """The featurizer for a dataset (or a :class:`DatasetSpec`); text fits its vocabulary on ``fit_on``."""
    spec = data if isinstance(data, DatasetSpec) else spec_of(data)
    if spec.kind == "image":
        return ImageFeaturizer.from_spec(spec)
    source = fit_on if fit_on is not None else (None if isinstance(data, DatasetSpec) else data)
    if source is None:
        raise ValueError(f"a {spec.kind} featurizer needs training data to fit on (fit_on=...)")
    if spec.kind == "tabular":
        return TabularFeaturizer.fit(source)
    return TextFeaturizer.fit((str(t) for t in arrow_table(source).column(TEXT).to_pylist()), **text_options)


def featurizer_from_config(config: dict[str, Any]) -> Featurizer:
    """Rebuild a featurizer from :meth:`to_config` output (e.g. from checkpoint metadata)."""
    kind = config.get("kind")
    if kind == "image":
        return ImageFeaturizer(config["input_shape"], config["pixel_scale"], config["mean"], config["std"])
    if kind == "text":
        return TextFeaturizer(config["vocab"], max_len=int(config["max_len"]))
    if kind == "tabular":
        return TabularFeaturizer(config["mean"], config["std"])
    if kind == PluginFeaturizer.kind:
        return PluginFeaturizer.from_state(config["factory"], config["state"])
    raise ValueError(f"unknown featurizer kind {kind!r}; valid: image, text, tabular, plugin")


def labels_tensor(ds: Any) -> torch.Tensor:
    return torch.from_numpy(np.asarray(arrow_table(ds).column(LABEL).to_numpy(), dtype=np.int64).copy())


def to_tensors(ds: Any, featurizer: Featurizer | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, targets)`` for a whole dataset; images default to their spec's featurizer."""
    if featurizer is None:
        spec = spec_of(ds)
        if spec.kind != "image":
            raise ValueError(
                f"{spec.kind} needs a fitted featurizer: featurizer_for(train_set) or the model's metadata"
            )
        featurizer = ImageFeaturizer.from_spec(spec)
    return featurizer.encode(ds), labels_tensor(ds)


def make_loader(
    ds: Any,
    featurizer: Featurizer | None = None,
    *,
    batch_size: int = 256,
    shuffle: bool = False,
    seed: int = 0,
    drop_last: bool = False,
) -> DataLoader[tuple[torch.Tensor, ...]]:
    """A ``DataLoader`` of ``(inputs, targets)``; shuffling uses its own seeded generator (reproducible)."""
    inputs, targets = to_tensors(ds, featurizer)
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(
        TensorDataset(inputs, targets),
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        drop_last=drop_last,
    )
