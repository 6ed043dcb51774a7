"""Datasets with stable record IDs and content digests, and forget/retain/test splits.

Everything is a ``datasets.Dataset`` in a fixed schema (``record_id``, ``pixels`` or ``text``, ``label``)
carrying its :class:`DatasetSpec`. Start with :func:`load_train_test` and one of the split constructors;
docs/data.md describes the sets, the digests and the measured numbers.
"""

from hamu.data.digest import (
    dataset_digest,
    manifest,
    manifest_digest,
    order_digest,
    record_digests,
    record_ids,
    union_digest,
)
from hamu.data.errors import DataUnavailableError, InvalidSplitError, UnknownRecordIDsError
from hamu.data.sources import (
    DIGITS,
    FASHION_MNIST,
    FASHION_MNIST_INSTALL,
    HUB_SOURCES,
    OFFLINE_NAMES,
    TWEETS,
    HubSource,
    build_dataset,
    convert_hub_dataset,
    dataset_names,
    hub_offline,
    load_dataset,
    load_fashion_mnist,
    load_train_test,
    load_tweets,
)
from hamu.data.spec import DatasetSpec, spec_of
from hamu.data.splits import (
    SPLITS,
    Split,
    add_near_duplicates,
    make_split,
    split_by_class,
    split_by_ids,
    split_random,
    split_rho,
    subset,
)
from hamu.data.tabular import tabular_dataset
from hamu.data.tensors import (
    Featurizer,
    ImageFeaturizer,
    TabularFeaturizer,
    TextFeaturizer,
    featurizer_for,
    featurizer_from_config,
    make_loader,
    to_tensors,
    tokenize,
)

__all__ = [
    "DIGITS",
    "FASHION_MNIST",
    "FASHION_MNIST_INSTALL",
    "HUB_SOURCES",
    "OFFLINE_NAMES",
    "SPLITS",
    "TWEETS",
    "DataUnavailableError",
    "DatasetSpec",
    "Featurizer",
    "HubSource",
    "ImageFeaturizer",
    "InvalidSplitError",
    "Split",
    "TabularFeaturizer",
    "TextFeaturizer",
    "UnknownRecordIDsError",
    "add_near_duplicates",
    "build_dataset",
    "convert_hub_dataset",
    "dataset_digest",
    "dataset_names",
    "featurizer_for",
    "featurizer_from_config",
    "hub_offline",
    "load_dataset",
    "load_fashion_mnist",
    "load_train_test",
    "load_tweets",
    "make_loader",
    "make_split",
    "manifest",
    "manifest_digest",
    "order_digest",
    "record_digests",
    "record_ids",
    "spec_of",
    "split_by_class",
    "split_by_ids",
    "split_random",
    "split_rho",
    "subset",
    "tabular_dataset",
    "to_tensors",
    "tokenize",
    "union_digest",
]
