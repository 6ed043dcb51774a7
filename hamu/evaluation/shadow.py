"""Offline LiRA (Carlini et al. 2022): a per-example attack calibrated with K reference models.

Population attacks use one threshold for every row, so an example that is easy for *any* model (low loss
whether or not it was trained on) looks like a member, and a hard one never does. LiRA instead asks, per
example x: is the target model's logit-scaled confidence φ(x) = log p_y − log(1 − p_y) unusually high
compared with models that did *not* train on x?

Offline variant (no model trained *with* the targets, so it is cheap and never re-creates erased data):

1. train K reference models on random subsets of a pool that **excludes every target row** (for unlearning:
   the retain set, which contains neither forget nor test rows);
2. on each target row, fit a Gaussian N(μ_out(x), σ_out²) to the K reference values of φ(x). With few
   references, per-example variances are noisy, so by default σ_out is pooled across rows
   (``fixed_variance``, as the LiRA paper recommends for small K);
3. score = (φ_target(x) − μ_out(x)) / σ_out(x), higher = member; the one-sided p-value
   1 − Φ(score) is the offline LiRA test of the reference document.

Fan-out: training the K references is embarrassingly parallel. :func:`make_reference_specs` returns picklable
:class:`ReferenceSpec` objects and :func:`train_shadow_model` is a plain top-level function from a spec to
:class:`ReferenceStats`, so a caller can run them with ``map``, a process pool or an orchestrator's task map,
then hand the stats to :meth:`OfflineLira.fit`. The training recipe is injectable (``train_fn``): any
picklable callable ``(indices, seed) -> nn.Module`` that trains on the caller's own rows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats as sps
from torch import nn

from hamu.evaluation.per_example import (
    NonFiniteOutputError,
    Rows,
    collect_logits,
    per_example_from_logits,
    validate_split,
)
from hamu.models.nets import TextClassifier

TrainFn = Callable[[np.ndarray, int], nn.Module]
MapFn = Callable[
    [Callable[["ReferenceSpec"], "ReferenceStats"], Iterable["ReferenceSpec"]], Iterable["ReferenceStats"]
]

DEFAULT_K = 4
MIN_SIGMA = 1e-6


@dataclass(frozen=True)
class MLPTrainer:
    """The default reference recipe: an MLP on flattened inputs, full-batch Adam, seeded.

    Small enough for K = 4 references on a 2-core CPU in seconds on digits-sized data. A top-level dataclass
    so that it pickles (process pools). ``indices`` index ``inputs``/``targets``. A pipeline with its own
    training recipe should pass that instead: references should be trained the way the target was.
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    n_classes: int | None = None
    hidden: tuple[int, ...] = (128,)
    steps: int = 300
    lr: float = 1e-2
    weight_decay: float = 0.0

    def __call__(self, indices: np.ndarray, seed: int) -> nn.Module:
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        if idx.numel() == 0:
            raise ValueError("cannot train a reference model on zero rows")
        x = self.inputs[idx].reshape(idx.numel(), -1).float()
        y = self.targets[idx].long()
        n_classes = self.n_classes or int(self.targets.max()) + 1
        gen = torch.Generator().manual_seed(int(seed))
        layers: list[nn.Module] = [nn.Flatten()]
        width = x.shape[1]
        for h in self.hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, n_classes))
        model = nn.Sequential(*layers)
        with torch.no_grad():
            for p in model.parameters():
                if p.ndim > 1:
                    bound = 1.0 / float(np.sqrt(p.shape[1]))
                    p.uniform_(-bound, bound, generator=gen)
                else:
                    p.zero_()
        opt = torch.optim.Adam(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        for _ in range(self.steps):
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        return model.eval()


#: Input dtypes read as token IDs (what :class:`hamu.data.tensors.TextFeaturizer` produces), not as values.
TOKEN_DTYPES = frozenset({torch.int16, torch.int32, torch.int64})
UNKNOWN_TOKEN = 1  # the featurizers' ``<unk>`` ID (0 is padding)


class _KnownTokens(nn.Module):
    """Map token IDs outside the reference's vocabulary to ``<unk>``.

    A reference's embedding table covers the IDs of its training pool; a query row (forget or test) can hold a
    higher ID that no training row used. Its embedding would be untrained noise, and an index past the table
    would raise, so it is read as unknown, as the featurizer reads a token outside its vocabulary.
    """

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.vocab_size = int(vocab_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens.long()
        return torch.where((tokens >= 0) & (tokens < self.vocab_size), tokens, UNKNOWN_TOKEN)


@dataclass(frozen=True)
class TokenBagTrainer:
    """The reference recipe for token-ID inputs (text): the text presets' model, full-batch Adam, seeded.

    Why not :class:`MLPTrainer`: token IDs are categories, not magnitudes, so an MLP reading them as numbers
    models nothing (and a ``Linear`` layer refuses int64 inputs). The model is
    :class:`hamu.models.TextClassifier` (mean of token embeddings, padding ignored, one hidden layer), the
    architecture the text presets train, so references are trained like the target, as LiRA asks. Its
    vocabulary is the pool's highest token ID + 1; higher IDs in query rows read as unknown
    (:class:`_KnownTokens`). A top-level dataclass, so that it pickles.
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    n_classes: int | None = None
    embed_dim: int = 32
    hidden: int = 64
    steps: int = 300
    lr: float = 1e-2
    weight_decay: float = 0.0

    def __call__(self, indices: np.ndarray, seed: int) -> nn.Module:
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        if idx.numel() == 0:
            raise ValueError("cannot train a reference model on zero rows")
        if self.inputs.dtype not in TOKEN_DTYPES:
            raise ValueError(f"token inputs must be integer IDs, got dtype {self.inputs.dtype}")
        x = self.inputs[idx].reshape(idx.numel(), -1).long()
        y = self.targets[idx].long()
        n_classes = self.n_classes or int(self.targets.max()) + 1
        vocab_size = max(int(self.inputs.max()) + 1, UNKNOWN_TOKEN + 1)
        with torch.random.fork_rng(devices=[]):  # seeded initialisation, the caller's RNG untouched
            torch.manual_seed(int(seed))
            classifier = TextClassifier(vocab_size, self.embed_dim, self.hidden, n_classes)
        model = nn.Sequential(_KnownTokens(vocab_size), classifier)
        opt = torch.optim.Adam(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        for _ in range(self.steps):
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        return model.eval()


def reference_trainer(
    inputs: torch.Tensor, targets: torch.Tensor, n_classes: int | None = None
) -> MLPTrainer | TokenBagTrainer:
    """The default reference recipe for a pool of rows, chosen from what the inputs are.

    Integer inputs (:data:`TOKEN_DTYPES`) are token IDs from a text featurizer: :class:`TokenBagTrainer`.
    Anything else is real-valued (image pixels, features): :class:`MLPTrainer` on the flattened inputs.
    """
    if inputs.dtype in TOKEN_DTYPES:
        return TokenBagTrainer(inputs, targets, n_classes=n_classes)
    return MLPTrainer(inputs, targets, n_classes=n_classes)


def query_digest(query: Rows) -> str:
    """SHA-256 of the query rows, used only to check that reference stats belong to these rows.

    It is never written to a report (it is a fingerprint of forget-set content).
    """
    inputs, targets = query
    h = hashlib.sha256()
    for t in (inputs, targets):
        arr = t.detach().cpu().contiguous().numpy()
        h.update(str(arr.dtype).encode() + str(arr.shape).encode())
        h.update(arr.tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class ReferenceSpec:
    """Everything one reference model needs, picklable: which rows to train on, the recipe, the queries."""

    index: int
    seed: int
    train_indices: np.ndarray
    train_fn: TrainFn
    query_inputs: torch.Tensor
    query_targets: torch.Tensor
    query_digest: str
    num_threads: int | None = None


@dataclass(frozen=True)
class ReferenceStats:
    """What a reference model contributes: φ on every query row (nothing else leaves the worker)."""

    index: int
    seed: int
    n_train: int
    phi: np.ndarray
    query_digest: str


def make_reference_specs(
    query: Rows,
    *,
    train_fn: TrainFn,
    candidates: np.ndarray | Sequence[int] | int,
    k: int = DEFAULT_K,
    fraction: float = 0.5,
    seed: int = 0,
    num_threads: int | None = None,
) -> list[ReferenceSpec]:
    """K specs, each training on a seeded random ``fraction`` of ``candidates``.

    ``candidates`` are the caller's row indices (an int n means 0..n−1) that ``train_fn`` understands; they
    must exclude every query row, which this function cannot check (it never sees the caller's row IDs).
    """
    if k < 2:
        raise ValueError(f"offline LiRA needs k >= 2 reference models, got {k}")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    pool = np.arange(candidates) if isinstance(candidates, int) else np.asarray(candidates, dtype=np.int64)
    if pool.ndim != 1 or pool.size == 0:
        raise ValueError("candidates must be a non-empty 1-D set of row indices")
    inputs, targets = validate_split("query", query)
    digest = query_digest((inputs, targets))
    size = max(1, round(fraction * pool.size))
    specs = []
    for i in range(k):
        rng = np.random.default_rng([seed, i])
        specs.append(
            ReferenceSpec(
                index=i,
                seed=int(rng.integers(0, 2**31 - 1)),
                train_indices=np.sort(rng.choice(pool, size=size, replace=False)),
                train_fn=train_fn,
                query_inputs=inputs,
                query_targets=targets,
                query_digest=digest,
                num_threads=num_threads,
            )
        )
    return specs


def train_shadow_model(spec: ReferenceSpec) -> ReferenceStats:
    """Train one reference model and return its φ on the query rows. Top-level so that it pickles."""
    previous = torch.get_num_threads()
    if spec.num_threads is not None:
        torch.set_num_threads(spec.num_threads)
    try:
        model = spec.train_fn(spec.train_indices, spec.seed)
        if not isinstance(model, nn.Module):
            raise TypeError(f"train_fn must return an nn.Module, got {type(model).__name__}")
        logits = collect_logits(model, spec.query_inputs)
    finally:
        torch.set_num_threads(previous)
    if not bool(torch.isfinite(logits).all()):
        raise NonFiniteOutputError(f"model 'reference-{spec.index}' produced NaN/Inf logits on split 'query'")
    phi = per_example_from_logits(logits, spec.query_targets).phi
    return ReferenceStats(
        index=spec.index,
        seed=spec.seed,
        n_train=int(spec.train_indices.size),
        phi=phi,
        query_digest=spec.query_digest,
    )


def run_references(specs: Sequence[ReferenceSpec], *, map_fn: MapFn | None = None) -> list[ReferenceStats]:
    """Train every reference with ``map_fn`` (default: the built-in sequential ``map``)."""
    mapper: MapFn = map_fn or map
    return list(mapper(train_shadow_model, specs))


@dataclass(frozen=True)
class OfflineLira:
    """Per-row out-distribution of φ fitted from K reference models; scores any target model's φ."""

    mu_out: np.ndarray
    sigma_out: np.ndarray
    k: int
    fixed_variance: bool
    query_digest: str

    @classmethod
    def fit(cls, stats: Sequence[ReferenceStats], *, fixed_variance: bool = True) -> OfflineLira:
        if len(stats) < 2:
            raise ValueError(f"offline LiRA needs at least 2 reference models, got {len(stats)}")
        digests = {s.query_digest for s in stats}
        if len(digests) != 1:
            raise ValueError("the reference stats were computed on different query rows")
        lengths = {s.phi.shape for s in stats}
        if len(lengths) != 1:
            raise ValueError(f"the reference stats have different lengths: {sorted(lengths)}")
        phi = np.stack([np.asarray(s.phi, dtype=np.float64) for s in stats], axis=1)  # (rows, k)
        if not np.isfinite(phi).all():
            raise ValueError("reference φ contains NaN/Inf")
        mu = phi.mean(axis=1)
        var = phi.var(axis=1, ddof=1)
        sigma = np.full_like(mu, np.sqrt(var.mean())) if fixed_variance else np.sqrt(var)
        return cls(
            mu_out=mu,
            sigma_out=np.maximum(sigma, MIN_SIGMA),
            k=len(stats),
            fixed_variance=fixed_variance,
            query_digest=digests.pop(),
        )

    def score(self, phi: np.ndarray) -> np.ndarray:
        """(φ − μ_out) / σ_out per row: higher = the target is more confident than models without the row."""
        arr = np.asarray(phi, dtype=np.float64)
        if arr.shape != self.mu_out.shape:
            raise ValueError(f"expected {self.mu_out.shape[0]} target φ values, got shape {arr.shape}")
        return (arr - self.mu_out) / self.sigma_out

    def p_value(self, phi: np.ndarray) -> np.ndarray:
        """One-sided p-value of "x was not trained on": 1 − Φ(score)."""
        return np.asarray(sps.norm.sf(self.score(phi)), dtype=np.float64)


@dataclass(frozen=True)
class ShadowConfig:
    """How :func:`hamu.evaluation.evaluate.evaluate_models` runs offline LiRA.

    ``train_fn=None`` uses :func:`reference_trainer` (an MLP, or for token IDs an embedding-bag classifier) on
    the *retain* split (which holds no forget or test row) and ``candidates`` = all retain rows. With a custom
    ``train_fn``, ``candidates`` must be given: the caller's row indices that exclude the forget and test
    rows. ``map_fn`` fans the K trainings out.
    """

    k: int = DEFAULT_K
    fraction: float = 0.5
    seed: int = 0
    fixed_variance: bool = True
    train_fn: TrainFn | None = None
    candidates: np.ndarray | Sequence[int] | int | None = None
    map_fn: MapFn | None = None
    num_threads: int | None = None

    def __post_init__(self) -> None:
        if self.k < 2:
            raise ValueError(f"offline LiRA needs k >= 2 reference models, got {self.k}")
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"fraction must lie in (0, 1], got {self.fraction}")
        if self.train_fn is not None and self.candidates is None:
            raise ValueError(
                "a custom train_fn needs candidates: row indices that exclude forget and test rows"
            )
