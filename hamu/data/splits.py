"""Forget/retain/test splits with their digests: by record IDs, by class, at random, by the paper's ρ mixing,
and a harder variant that keeps near-duplicates of the forget rows in the retain set.

Every constructor takes the training and test sets (``datasets.Dataset`` in the hamu schema) and returns a
:class:`Split`. Random choices use :mod:`hamu.data.sampling` (keys from record IDs and the seed), so a split
is fully determined by its recipe (``strategy`` and ``params``) and can be rebuilt by an auditor.

Refused, with the reason: an empty forget set (nothing to unlearn), and a forget set that is the whole
training set (nothing to retain: retraining from scratch is the only honest answer).

The forget digest of :func:`split_by_ids` (real deletion requests) is keyed when given ``keyed_hash``: it
fingerprints the erased records alone, so unkeyed it would let anyone holding the training manifest find a
small forget set by enumeration. The other strategies' forget sets follow from their public recipe anyway.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import numpy as np

from hamu.data.digest import arrow_table, keyed_manifest_digest, manifest, manifest_digest, union_digest
from hamu.data.errors import InvalidSplitError, UnknownRecordIDsError
from hamu.data.sampling import seeded_sample, stratified_sample
from hamu.data.sources import build_dataset
from hamu.data.spec import LABEL, PIXELS, TEXT, DatasetSpec, spec_of

NearDuplicateKind = Literal["shift", "noise", "word-drop"]


@dataclass(frozen=True, eq=False)
class Split:
    """Retain, forget and test sets of one unlearning problem, with their content digests.

    ``train_digest`` is the digest of retain ∪ forget (what the original model trains on);
    ``retain_digest`` is what the retrained reference trains on. ``forget_digest`` is labelled
    ``hmac-sha256:`` when the split was built with a keyed hash (deletion requests), plain SHA-256 hex
    otherwise. ``params`` is the recipe that rebuilds the split (strategy options, seed, and for ρ mixing
    the exact composition).
    """

    retain: Any
    forget: Any
    test: Any
    retain_digest: str
    forget_digest: str
    test_digest: str
    train_digest: str
    spec: DatasetSpec
    strategy: str
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def train(self) -> Any:
        """retain ∪ forget as one dataset (retain rows first)."""
        import datasets

        return datasets.concatenate_datasets([self.retain, self.forget])

    def sizes(self) -> dict[str, int]:
        return {"retain": len(self.retain), "forget": len(self.forget), "test": len(self.test)}

    def forget_ids(self) -> list[str]:
        return [str(x) for x in arrow_table(self.forget).column("record_id").to_pylist()]

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary (recipe, sizes, digests). It names no forget record, so it can be logged."""
        return {
            "dataset": self.spec.name,
            "strategy": self.strategy,
            "params": dict(self.params),
            "sizes": self.sizes(),
            "digests": {
                "retain": self.retain_digest,
                "forget": self.forget_digest,
                "test": self.test_digest,
                "train": self.train_digest,
            },
        }

    def tensors(self, which: str, featurizer: Any = None) -> tuple[Any, Any]:
        """``(inputs, targets)`` of ``which``: retain, forget, test or train (see hamu.data.tensors)."""
        from hamu.data.tensors import to_tensors

        return to_tensors(self._part(which), featurizer)

    def loader(
        self,
        which: str,
        batch_size: int = 256,
        *,
        shuffle: bool = False,
        seed: int = 0,
        featurizer: Any = None,
    ) -> Any:
        """A ``DataLoader`` of ``(inputs, targets)`` batches over ``which``."""
        from hamu.data.tensors import make_loader

        return make_loader(self._part(which), featurizer, batch_size=batch_size, shuffle=shuffle, seed=seed)

    def _part(self, which: str) -> Any:
        parts = {"retain": self.retain, "forget": self.forget, "test": self.test}
        if which == "train":
            return self.train
        if which not in parts:
            raise ValueError(f"unknown part {which!r}; valid: retain, forget, test, train")
        return parts[which]


# ----------------------------------------------------------------------------------------------- helpers
def _labels(ds: Any) -> np.ndarray:
    return np.asarray(arrow_table(ds).column(LABEL).to_numpy(), dtype=np.int64)


def _build(
    train: Any,
    test: Any,
    forget_positions: np.ndarray,
    strategy: str,
    params: Mapping[str, Any],
    train_manifest: list[tuple[str, str]] | None = None,
    keyed_hash: Callable[[str], str] | None = None,
) -> Split:
    spec = spec_of(train)
    n = len(train)
    forget_positions = np.unique(np.asarray(forget_positions, dtype=np.int64))
    if forget_positions.size == 0:
        raise InvalidSplitError(
            f"the forget set is empty ({strategy}, {dict(params)}): there is nothing to unlearn"
        )
    if forget_positions.size == n:
        raise InvalidSplitError(
            f"the forget set is the whole training set ({n} records): nothing would be retained; "
            "retrain from scratch instead of unlearning"
        )
    mask = np.zeros(n, dtype=bool)
    mask[forget_positions] = True
    retain_positions = np.flatnonzero(~mask)
    full = train_manifest if train_manifest is not None else manifest(train)
    retain_m = [full[i] for i in retain_positions]
    forget_m = [full[i] for i in forget_positions]
    forget_digest = (
        manifest_digest(forget_m) if keyed_hash is None else keyed_manifest_digest(forget_m, keyed_hash)
    )
    return Split(
        retain=train.select(retain_positions),
        forget=train.select(forget_positions),
        test=test,
        retain_digest=manifest_digest(retain_m),
        forget_digest=forget_digest,
        test_digest=manifest_digest(manifest(test)),
        train_digest=union_digest(retain_m, forget_m),
        spec=spec,
        strategy=strategy,
        params=MappingProxyType(dict(params)),
    )


# ---------------------------------------------------------------------------------------------- strategies
def split_by_ids(
    train: Any, test: Any, forget_ids: Iterable[str], *, keyed_hash: Callable[[str], str] | None = None
) -> Split:
    """Forget exactly the named records (the real path: one deletion batch). Duplicated IDs count once.

    ``keyed_hash`` (the audit key's ``KeyedHasher.hash``) keys the forget digest; pass it whenever the IDs
    come from deletion requests, since the digest of the erased rows alone must not be enumerable from the
    training manifest. Without it the forget digest is plain SHA-256 (fine for experiments only).
    """
    wanted = list(dict.fromkeys(str(i) for i in forget_ids))
    if not wanted:
        raise InvalidSplitError("the forget set is empty: no record IDs were given")
    ids = [str(x) for x in arrow_table(train).column("record_id").to_pylist()]
    position = {rid: i for i, rid in enumerate(ids)}
    missing = [rid for rid in wanted if rid not in position]
    if missing:
        raise UnknownRecordIDsError(missing, f"the {spec_of(train).name} training set ({len(ids)} records)")
    positions = np.asarray([position[rid] for rid in wanted], dtype=np.int64)
    return _build(train, test, positions, "ids", {"count": len(wanted)}, keyed_hash=keyed_hash)


def split_by_class(train: Any, test: Any, forget_class: int | str) -> Split:
    """Forget every training record of one class (class unlearning, the paper's ρ = 0)."""
    cls = spec_of(train).class_index(forget_class)
    positions = np.flatnonzero(_labels(train) == cls)
    return _build(train, test, positions, "class", {"forget_class": cls})


def split_random(
    train: Any, test: Any, fraction: float | None = None, *, size: int | None = None, seed: int = 0
) -> Split:
    """Forget a seeded random sample: ``fraction`` of the training set, or exactly ``size`` records."""
    n = len(train)
    if (fraction is None) == (size is None):
        raise ValueError("give exactly one of fraction or size")
    if fraction is not None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction must be in [0, 1], got {fraction!r}")
        size = round(fraction * n)
    assert size is not None
    if not 0 <= size <= n:
        raise ValueError(f"size must be in [0, {n}], got {size}")
    ids = [str(x) for x in arrow_table(train).column("record_id").to_pylist()]
    positions = seeded_sample(ids, size, f"{seed}:random")
    return _build(train, test, positions, "random", {"size": size, "seed": seed, "fraction": fraction})


def split_rho(
    train: Any, test: Any, *, forget_class: int | str = 0, rho: float, seed: int = 0, size: int | None = None
) -> Split:
    """The paper's ρ mixing, with an exact composition.

    The forget set has ``size`` records (default: the class's size, as in the paper): ``size − m`` drawn
    from ``forget_class`` and ``m = ⌊ρ·size⌋`` from the other classes. ρ = 0 is (a sample of) the class;
    ρ = 1 is a random sample of the whole training set (the paper's separate i.i.d. path). The reference code
    puts the dropped class rows back into the pool, so its "rest" can contain the class again; here it
    cannot, so the composition is exactly as stated.
    """
    if not (0.0 <= rho <= 1.0 and math.isfinite(rho)):
        raise ValueError(f"rho must be in [0, 1], got {rho!r}")
    spec = spec_of(train)
    cls = spec.class_index(forget_class)
    labels = _labels(train)
    ids = [str(x) for x in arrow_table(train).column("record_id").to_pylist()]
    in_class = np.flatnonzero(labels == cls)
    rest = np.flatnonzero(labels != cls)
    size = len(in_class) if size is None else int(size)
    m = math.floor(rho * size + 1e-9)
    params: dict[str, Any] = {"forget_class": cls, "rho": rho, "seed": seed, "size": size}
    if rho == 1.0:
        if size > len(ids):
            raise ValueError(f"size {size} exceeds the training set ({len(ids)})")
        positions = seeded_sample(ids, size, f"{seed}:rho-iid")
        params.update(from_class=int(np.sum(labels[positions] == cls)), from_rest=None, iid=True)
        return _build(train, test, positions, "rho", params)
    if size - m > len(in_class):
        raise ValueError(f"need {size - m} records of class {cls}, the training set has {len(in_class)}")
    if m > len(rest):
        raise ValueError(f"need {m} records from other classes, the training set has {len(rest)}")
    from_class = in_class[seeded_sample([ids[i] for i in in_class], size - m, f"{seed}:rho-class")]
    from_rest = rest[seeded_sample([ids[i] for i in rest], m, f"{seed}:rho-rest")]
    params.update(from_class=size - m, from_rest=m, iid=False)
    return _build(train, test, np.concatenate([from_class, from_rest]), "rho", params)


# --------------------------------------------------------------------------------------- near-duplicates
def _rng(seed: int, rid: str, copy: int) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}:{rid}:{copy}:near-duplicate".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))


def _perturb_image(
    img: np.ndarray, kind: str, rng: np.random.Generator, scale: float, noise: float
) -> np.ndarray:
    """A 1-pixel shift (zero fill) in a random direction, or small Gaussian noise; never the same bytes."""
    out = img.astype(np.int16)
    if kind == "shift":
        axis = int(rng.integers(1, 3))  # H or W of (C, H, W)
        step = int(rng.choice([-1, 1]))
        out = np.roll(out, step, axis=axis)
        edge = [slice(None)] * 3
        edge[axis] = slice(0, 1) if step == 1 else slice(-1, None)
        out[tuple(edge)] = 0
    else:
        out = out + np.rint(rng.normal(0.0, noise * scale / 255.0, size=out.shape)).astype(np.int16)
    out = np.clip(out, 0, int(scale))
    if np.array_equal(out, img):  # e.g. a blank image: change one pixel so the content differs
        flat = out.reshape(-1)
        flat[0] = flat[0] + 1 if flat[0] < scale else flat[0] - 1
    return out.astype(np.uint8)


def _perturb_text(text: str, rng: np.random.Generator) -> str:
    words = text.split()
    if len(words) >= 2:
        del words[int(rng.integers(0, len(words)))]
        return " ".join(words)
    return text + " !"


def add_near_duplicates(
    split: Split,
    *,
    kind: NearDuplicateKind | None = None,
    copies: int = 1,
    seed: int = 0,
    noise_std: float = 8.0,
) -> Split:
    """The harder variant: add ``copies`` perturbed copies of every forget row to the retain set.

    Images: ``shift`` (1 pixel, default) or ``noise`` (Gaussian, ``noise_std`` grey levels of 255); text:
    ``word-drop`` (one word removed). The copies get IDs ``<forget id>.nd<k>``; the original's training set
    grows by them too, since they are retain rows. This mirrors the LLM experiment that keeps semantic
    duplicates of the forget items in the retain set: forgetting gets harder (κ rises).
    """
    import datasets

    spec = split.spec
    if copies < 1:
        raise ValueError(f"copies must be >= 1, got {copies}")
    kind = kind or ("shift" if spec.kind == "image" else "word-drop")
    valid = ("shift", "noise") if spec.kind == "image" else ("word-drop",)
    if kind not in valid:
        raise ValueError(f"near-duplicate kind {kind!r} does not apply to {spec.kind} data; valid: {valid}")
    table = arrow_table(split.forget)
    ids = [str(x) for x in table.column("record_id").to_pylist()]
    labels = np.asarray(table.column(LABEL).to_numpy(), dtype=np.int64)
    new_ids = [f"{rid}.nd{k}" for k in range(copies) for rid in ids]
    new_labels = np.tile(labels, copies)
    if spec.kind == "image":
        width = int(np.prod(spec.input_shape))
        pixels = np.asarray(table.column(PIXELS).combine_chunks().flatten().to_numpy(), dtype=np.uint8)
        images = pixels.reshape(-1, *spec.input_shape)
        dup = np.stack(
            [
                _perturb_image(images[i], kind, _rng(seed, rid, k), spec.pixel_scale, noise_std)
                for k in range(copies)
                for i, rid in enumerate(ids)
            ]
        ).reshape(-1, width)
        extra = build_dataset(spec, new_ids, new_labels, pixels=dup)
    else:
        texts = [str(t) for t in table.column(TEXT).to_pylist()]
        dup_texts = [
            _perturb_text(texts[i], _rng(seed, rid, k)) for k in range(copies) for i, rid in enumerate(ids)
        ]
        extra = build_dataset(spec, new_ids, new_labels, texts=dup_texts)
    retain = datasets.concatenate_datasets([split.retain, extra])
    retain_m = manifest(retain)
    forget_m = manifest(split.forget)
    params = dict(split.params)
    params["near_duplicates"] = {"kind": kind, "copies": copies, "seed": seed, "noise_std": noise_std}
    return Split(
        retain=retain,
        forget=split.forget,
        test=split.test,
        retain_digest=manifest_digest(retain_m),
        forget_digest=split.forget_digest,
        test_digest=split.test_digest,
        train_digest=union_digest(retain_m, forget_m),
        spec=spec,
        strategy=f"{split.strategy}+near-duplicates",
        params=MappingProxyType(params),
    )


# ---------------------------------------------------------------------------------------------- by name
def subset(ds: Any, size: int, *, seed: int = 0, stratify: bool = True) -> Any:
    """A seeded (class-stratified) subset of ``size`` rows in their original order: CPU presets use it."""
    if size >= len(ds):
        return ds
    table = arrow_table(ds)
    ids = [str(x) for x in table.column("record_id").to_pylist()]
    if stratify and LABEL in table.column_names:
        positions = stratified_sample(ids, np.asarray(table.column(LABEL).to_numpy()), size, f"{seed}:subset")
    else:
        positions = seeded_sample(ids, size, f"{seed}:subset")
    return ds.select(positions)


SPLITS: dict[str, Callable[..., Split]] = {
    "ids": split_by_ids,
    "class": split_by_class,
    "random": split_random,
    "rho": split_rho,
}


def make_split(
    strategy: str, train: Any, test: Any, *, near_duplicates: str | None = None, **options: Any
) -> Split:
    """Build a split by strategy name; ``near_duplicates`` (a kind, e.g. ``"shift"``) makes it harder."""
    try:
        build = SPLITS[strategy]
    except KeyError:
        raise ValueError(f"unknown split strategy {strategy!r}; valid: {', '.join(SPLITS)}") from None
    dup_seed = int(options.get("seed", 0))
    split = build(train, test, **options)
    if near_duplicates is not None:
        split = add_near_duplicates(split, kind=near_duplicates, seed=dup_seed)  # type: ignore[arg-type]
    return split
