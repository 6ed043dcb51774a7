"""Evaluate once, compare many: original, retrained reference and unlearned candidates in one call.

:func:`evaluate_models` runs each model over each split exactly once (:mod:`~hamu.evaluation.per_example`),
then derives every number from those per-example outputs with one shared set of bootstrap resamples:

1. utility: accuracy and mean loss per split, overall (with intervals) and per class;
2. population attacks (LOSS, confidence, entropy, modified entropy) on forget-vs-test and, as a control,
   retain-vs-test: AUC, best balanced accuracy, TPR at each FPR budget, with intervals;
3. optionally offline LiRA with K reference models (:mod:`~hamu.evaluation.shadow`);
4. forget quality: KS between each model's and the reference's per-example losses on the forget rows;
5. gaps to the reference for every metric, with paired intervals and the reference's own sampling noise;
6. each candidate's test-accuracy drop against the original, with its paired interval;
7. the detection floor: the same attacks on the original vs the reference.

The report measures and never judges: whether a model's evidence passes is decided by one function,
:func:`hamu.governance.verdict.decide`, from this report.

The reference is required. A stand-in that is not a retrain on D_r must be labelled
``reference_kind="proxy"``; nothing is ever silently compared with ``None``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from hamu.evaluation.attacks import ATTACKS, CONTRASTS, attack_score, fpr_resolution
from hamu.evaluation.bootstrap import (
    DEFAULT_LEVEL,
    DEFAULT_RESAMPLES,
    Resampler,
    percentile_interval,
)
from hamu.evaluation.forget_quality import gap_row, ks_forget_quality
from hamu.evaluation.metrics import (
    DEFAULT_FPRS,
    SMALL_SAMPLE,
    ScoreGrid,
    per_class_table,
    summarise_counts,
    tpr_key,
)
from hamu.evaluation.per_example import FIELDS, PerExample, Rows, compute_all, validate_split
from hamu.evaluation.report import (
    EvaluationReport,
    PerExampleScores,
    assert_free_of_ids,
    digest_ids,
    jsonable_metadata,
)
from hamu.evaluation.shadow import (
    OfflineLira,
    ReferenceStats,
    ShadowConfig,
    make_reference_specs,
    query_digest,
    reference_trainer,
    run_references,
)

REQUIRED_SPLITS = ("retain", "forget", "test")
ReferenceKind = Literal["retrained", "proxy"]


class MissingReferenceError(ValueError):
    """The retrained reference (or the original model) is absent; gaps would silently be meaningless."""


@dataclass(frozen=True)
class EvaluationConfig:
    """Knobs of one evaluation. Defaults suit a 2-core CPU and digits-sized splits (well under a second)."""

    n_resamples: int = DEFAULT_RESAMPLES
    level: float = DEFAULT_LEVEL
    seed: int = 0
    fprs: tuple[float, ...] = DEFAULT_FPRS
    attacks: tuple[str, ...] = tuple(ATTACKS)
    ks_statistic: str = "loss"
    batch_size: int = 1024

    def __post_init__(self) -> None:
        if self.n_resamples < 100:
            raise ValueError(f"n_resamples must be >= 100 for percentile intervals, got {self.n_resamples}")
        if not 0.0 < self.level < 1.0:
            raise ValueError(f"level must lie in (0, 1), got {self.level}")
        for a in self.attacks:
            if a not in ATTACKS:
                raise ValueError(f"unknown attack {a!r}; expected some of {sorted(ATTACKS)}")
        if not self.attacks:
            raise ValueError("at least one population attack is needed")
        if self.ks_statistic not in FIELDS or self.ks_statistic == "correct":
            raise ValueError(
                f"ks_statistic must be a continuous per-example statistic, got {self.ks_statistic!r}"
            )
        for alpha in self.fprs:
            if not 0.0 < alpha < 1.0:
                raise ValueError(f"FPR budgets must lie in (0, 1), got {alpha}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_resamples": self.n_resamples,
            "confidence_level": self.level,
            "seed": self.seed,
            "fprs": list(self.fprs),
            "attacks": list(self.attacks),
            "ks_statistic": self.ks_statistic,
            "bootstrap": "percentile, rows resampled per split, shared across models (paired gaps)",
        }


@dataclass
class Evaluation:
    """What :func:`evaluate_models` returns: the JSON-safe report and the in-memory per-example scores."""

    report: EvaluationReport
    scores: PerExampleScores


@dataclass
class _Metric:
    estimate: float
    replicates: np.ndarray


def evaluate_models(
    models: Mapping[str, nn.Module],
    splits: Mapping[str, Rows],
    *,
    original: str = "original",
    reference: str = "retrained",
    reference_kind: ReferenceKind = "retrained",
    config: EvaluationConfig | None = None,
    shadow: ShadowConfig | Sequence[ReferenceStats] | None = None,
    record_ids: Mapping[str, Sequence[str]] | None = None,
    digest_key: bytes | None = None,
    digests: Mapping[str, str] | None = None,
    metadata: Mapping[str, Any] | None = None,
    model_inputs: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
) -> Evaluation:
    """Evaluate every model on every split once and compare all of them with the reference.

    ``models`` must contain ``original`` and ``reference``; every other entry is a candidate (an unlearned
    model; several methods can be compared in one call). ``splits`` must contain ``retain``, ``forget`` and
    ``test`` as (inputs, targets) tensors; extra splits get utility metrics only.

    ``shadow`` runs offline LiRA: a :class:`ShadowConfig` (references trained here), or precomputed
    :class:`ReferenceStats` from :func:`~hamu.evaluation.shadow.train_shadow_model` on the query rows
    forget ⊕ test (see :func:`shadow_query`), e.g. fanned out by an orchestrator.

    ``record_ids`` (per split) are reduced to counts and digests (HMAC with ``digest_key``); ``digests`` are
    caller-computed digests passed through. The serialised report is checked to contain none of the IDs.

    ``model_inputs[model][split]`` replaces that split's inputs for that model only: its own encoding of
    the same rows, in the same order (the targets stay the split's). Why: every comparison here is paired
    over *rows* (one set of bootstrap resamples), not over one input tensor, and a model can only be judged
    on inputs encoded the way it was trained. A text model's vocabulary is fitted on its own training set,
    so the retrained reference (fitted on the retain rows) maps words to other IDs than the original, and
    fed the original's encoding it would be scored on inputs it never learned to read. Passing encodings
    instead of wrapping each model with its featurizer keeps the evaluated modules the registered ones.
    Models without an entry (and every image model: one featurizer for all) use ``splits``; so does offline
    LiRA's query, whose references are trained on ``splits``' encoding.
    """
    cfg = config or EvaluationConfig()
    _check_roles(models, original, reference, reference_kind)
    checked = {name: validate_split(name, split) for name, split in splits.items()}
    missing = [s for s in REQUIRED_SPLITS if s not in checked]
    if missing:
        raise ValueError(f"splits {missing} are missing; evaluation needs {list(REQUIRED_SPLITS)}")
    id_digests = _record_digests(record_ids, checked, digest_key)

    own = _own_splits(models, checked, model_inputs)
    outputs = {  # the only forward passes
        m: compute_all({m: model}, own[m], batch_size=cfg.batch_size)[m] for m, model in models.items()
    }
    sizes = {s: int(split[1].shape[0]) for s, split in checked.items()}
    resampler = Resampler(sizes, n_resamples=cfg.n_resamples, seed=cfg.seed)
    metrics: dict[str, dict[str, _Metric]] = {m: {} for m in models}
    warnings: list[str] = []

    utility = _utility(outputs, resampler, metrics, cfg, reference)
    attacks = _population_attacks(outputs, resampler, metrics, cfg)
    scores = PerExampleScores(outputs=outputs)
    shadow_section = _shadow(shadow, checked, outputs, resampler, metrics, cfg, scores)

    forget_quality: dict[str, Any] = {}
    ref_forget = outputs[reference]["forget"].field(cfg.ks_statistic)
    for m in models:
        if m == reference:
            continue
        ks = ks_forget_quality(
            outputs[m]["forget"].field(cfg.ks_statistic), ref_forget, statistic=cfg.ks_statistic
        )
        forget_quality[m] = ks.to_dict()

    gaps = _gaps(metrics, forget_quality, reference, cfg)
    drops = _test_accuracy_drops(metrics, original, reference, cfg)
    floor = _detection_floor(metrics, original, reference, cfg)

    for contrast, (mem, non) in CONTRASTS.items():
        if min(sizes[mem], sizes[non]) < SMALL_SAMPLE:
            warnings.append(
                f"{contrast}: only {sizes[mem]} members vs {sizes[non]} non-members (< {SMALL_SAMPLE}); "
                "AUC and KS are computed but carry little information"
            )
    for alpha, ok in fpr_resolution(sizes["test"], cfg.fprs).items():
        if not ok:
            warnings.append(
                f"TPR at FPR {alpha}: {sizes['test']} non-members cannot resolve this budget (needs >= "
                f"{int(np.ceil(1 / float(alpha)))}); the value is the TPR at zero false positives"
            )
    if reference_kind == "proxy":
        warnings.append(
            f"the reference {reference!r} is a proxy, not a model retrained without the forget rows"
        )

    report = EvaluationReport(
        models={m: _role(m, original, reference) for m in models},
        reference={"name": reference, "kind": reference_kind},
        counts=sizes,
        config=cfg.to_dict(),
        utility=utility,
        attacks=attacks,
        shadow=shadow_section,
        forget_quality=forget_quality,
        gaps=gaps,
        utility_drop=drops,
        detection_floor=floor,
        warnings=warnings,
        digests={**id_digests, **{str(k): str(v) for k, v in (digests or {}).items()}},
        metadata=jsonable_metadata(metadata),
    )
    if record_ids:
        assert_free_of_ids(report.to_dict(), (i for ids in record_ids.values() for i in ids))
    return Evaluation(report=report, scores=scores)


def shadow_query(splits: Mapping[str, Rows]) -> Rows:
    """The rows offline LiRA scores: forget rows then test rows, in split order."""
    forget = validate_split("forget", splits["forget"])
    test = validate_split("test", splits["test"])
    return torch.cat([forget[0], test[0]]), torch.cat([forget[1], test[1]])


# -- pieces --------------------------------------------------------------------------------------------


def _own_splits(
    models: Mapping[str, nn.Module],
    splits: Mapping[str, Rows],
    model_inputs: Mapping[str, Mapping[str, torch.Tensor]] | None,
) -> dict[str, dict[str, Rows]]:
    """Each model's splits: the shared ones, with the inputs it brings its own encoding of swapped in.

    Only inputs are swapped, so every model is scored on the same rows with the same targets; an encoding
    with another row count cannot be of the same rows and is refused.
    """
    given = dict(model_inputs or {})
    unknown = sorted(set(given) - set(models))
    if unknown:
        raise ValueError(f"model_inputs for unknown models {unknown}; have {sorted(models)}")
    own: dict[str, dict[str, Rows]] = {}
    for m in models:
        own[m] = dict(splits)
        for s, inputs in given.get(m, {}).items():
            if s not in splits:
                raise ValueError(f"model_inputs[{m!r}] has unknown split {s!r}; have {sorted(splits)}")
            own[m][s] = validate_split(f"{s} as encoded for {m}", (inputs, splits[s][1]))
    return own


def _check_roles(models: Mapping[str, nn.Module], original: str, reference: str, kind: str) -> None:
    if kind not in ("retrained", "proxy"):
        raise ValueError(f"reference_kind must be 'retrained' or 'proxy', got {kind!r}")
    if reference not in models:
        raise MissingReferenceError(
            f"no reference model {reference!r} among {sorted(models)}: gaps need the model retrained without "
            "the forget rows; pass it, or pass a stand-in under that name with reference_kind='proxy'"
        )
    if original not in models:
        raise MissingReferenceError(
            f"no original model {original!r} among {sorted(models)}: it sets the detection floor "
            "(can the attacks tell the original from the reference at all?)"
        )
    if original == reference:
        raise ValueError("original and reference must be different models")
    for name, model in models.items():
        if not isinstance(model, nn.Module):
            raise ValueError(f"model {name!r} is a {type(model).__name__}, not an nn.Module")


def _role(name: str, original: str, reference: str) -> str:
    return "original" if name == original else "reference" if name == reference else "candidate"


def _record_digests(
    record_ids: Mapping[str, Sequence[str]] | None, splits: Mapping[str, Rows], key: bytes | None
) -> dict[str, str]:
    out: dict[str, str] = {}
    for split, ids in (record_ids or {}).items():
        if split not in splits:
            raise ValueError(f"record_ids for unknown split {split!r}")
        ids = list(ids)
        n = int(splits[split][1].shape[0])
        if len(ids) != n:
            raise ValueError(f"record_ids[{split!r}] has {len(ids)} IDs but the split has {n} rows")
        if len(set(ids)) != len(ids):
            raise ValueError(f"record_ids[{split!r}] contains duplicates")
        out[f"{split}_ids"] = digest_ids(ids, key=key)
    return out


def _interval(m: _Metric, level: float) -> dict[str, float]:
    return percentile_interval(m.estimate, m.replicates, level).to_dict()


def _utility(
    outputs: Mapping[str, Mapping[str, PerExample]],
    resampler: Resampler,
    metrics: dict[str, dict[str, _Metric]],
    cfg: EvaluationConfig,
    reference: str,
) -> dict[str, Any]:
    section: dict[str, Any] = {}
    for m, per_split in outputs.items():
        section[m] = {}
        for s, pe in per_split.items():
            acc = _Metric(float(pe.correct.mean()), resampler.mean(s, pe.correct))
            loss = _Metric(float(pe.loss.mean()), resampler.mean(s, pe.loss))
            metrics[m][f"utility.{s}.accuracy"] = acc
            metrics[m][f"utility.{s}.loss"] = loss
            section[m][s] = {
                "n": len(pe),
                "accuracy": _interval(acc, cfg.level),
                "loss": _interval(loss, cfg.level),
                "per_class": {
                    str(c): row for c, row in per_class_table(pe.targets, pe.correct, pe.loss).items()
                },
            }
    for m in outputs:
        if m == reference:
            continue
        for s, block in section[m].items():
            ref_rows = section[reference][s]["per_class"]
            for c, row in block["per_class"].items():
                row["gap_accuracy"] = row["accuracy"] - ref_rows[c]["accuracy"]
                row["gap_loss"] = row["loss"] - ref_rows[c]["loss"]
    return section


def _roc_metrics(
    prefix: str,
    members: np.ndarray,
    nonmembers: np.ndarray,
    member_split: str,
    nonmember_split: str,
    resampler: Resampler,
    cfg: EvaluationConfig,
) -> dict[str, _Metric]:
    grid = ScoreGrid.build(members, nonmembers)
    point = summarise_counts(*grid.counts(), cfg.fprs)
    reps = resampler.roc(member_split, nonmember_split, grid, cfg.fprs)
    est = {"auc": point.auc[0], "balanced_accuracy": point.balanced_accuracy[0]}
    est.update({tpr_key(a): v[0] for a, v in point.tpr_at_fpr.items()})
    return {f"{prefix}.{k}": _Metric(float(est[k]), reps[k]) for k in reps}


def _attack_block(
    found: Mapping[str, _Metric], prefix: str, n_m: int, n_n: int, cfg: EvaluationConfig
) -> dict[str, Any]:
    return {
        "metrics": {k[len(prefix) + 1 :]: _interval(v, cfg.level) for k, v in found.items()},
        "n_members": n_m,
        "n_nonmembers": n_n,
        "small_sample": min(n_m, n_n) < SMALL_SAMPLE,
        "fpr_resolved": fpr_resolution(n_n, cfg.fprs),
    }


def _population_attacks(
    outputs: Mapping[str, Mapping[str, PerExample]],
    resampler: Resampler,
    metrics: dict[str, dict[str, _Metric]],
    cfg: EvaluationConfig,
) -> dict[str, Any]:
    section: dict[str, Any] = {}
    for m, per_split in outputs.items():
        section[m] = {}
        for contrast, (mem, non) in CONTRASTS.items():
            section[m][contrast] = {}
            for attack in cfg.attacks:
                prefix = f"attacks.{contrast}.{attack}"
                found = _roc_metrics(
                    prefix,
                    attack_score(per_split[mem], attack),
                    attack_score(per_split[non], attack),
                    mem,
                    non,
                    resampler,
                    cfg,
                )
                metrics[m].update(found)
                section[m][contrast][attack] = _attack_block(
                    found, prefix, len(per_split[mem]), len(per_split[non]), cfg
                )
    return section


def _shadow(
    shadow: ShadowConfig | Sequence[ReferenceStats] | None,
    splits: Mapping[str, Rows],
    outputs: Mapping[str, Mapping[str, PerExample]],
    resampler: Resampler,
    metrics: dict[str, dict[str, _Metric]],
    cfg: EvaluationConfig,
    scores: PerExampleScores,
) -> dict[str, Any]:
    if shadow is None:
        return {"status": "not run", "reason": "no shadow configuration or reference statistics were given"}
    query = shadow_query(splits)
    if isinstance(shadow, ShadowConfig):
        train_fn = shadow.train_fn
        candidates = shadow.candidates
        if train_fn is None:
            n_classes = max(pe.n_classes for per_split in outputs.values() for pe in per_split.values())
            retain_x, retain_y = splits["retain"]
            train_fn = reference_trainer(retain_x, retain_y, n_classes=n_classes)  # MLP, or token IDs' bag
            candidates = int(retain_y.shape[0])
        assert candidates is not None
        specs = make_reference_specs(
            query,
            train_fn=train_fn,
            candidates=candidates,
            k=shadow.k,
            fraction=shadow.fraction,
            seed=shadow.seed,
            num_threads=shadow.num_threads,
        )
        stats = run_references(specs, map_fn=shadow.map_fn)
        lira = OfflineLira.fit(stats, fixed_variance=shadow.fixed_variance)
        recipe = (
            f"{type(train_fn).__name__} on the retain split"
            if shadow.train_fn is None
            else "caller-supplied train_fn"
        )
        fraction: float | None = shadow.fraction
    else:
        stats = list(shadow)
        if not stats:
            raise ValueError("an empty sequence of reference statistics was given for the shadow attack")
        if stats[0].query_digest != query_digest(query):
            raise ValueError("the reference statistics were not computed on these forget ⊕ test rows")
        lira = OfflineLira.fit(stats)
        recipe, fraction = "precomputed reference statistics", None
    n_f = int(splits["forget"][1].shape[0])
    section: dict[str, Any] = {
        "status": "run",
        "method": "offline-lira",
        "k": lira.k,
        "fixed_variance": lira.fixed_variance,
        "reference_fraction": fraction,
        "recipe": recipe,
        "reference_train_sizes": sorted({s.n_train for s in stats}),
        "models": {},
    }
    for m, per_split in outputs.items():
        z = lira.score(np.concatenate([per_split["forget"].phi, per_split["test"].phi]))
        scores.lira[m] = {"forget": z[:n_f], "test": z[n_f:]}
        prefix = "shadow.forget_vs_test"
        found = _roc_metrics(prefix, z[:n_f], z[n_f:], "forget", "test", resampler, cfg)
        metrics[m].update(found)
        section["models"][m] = {"forget_vs_test": _attack_block(found, prefix, n_f, z.size - n_f, cfg)}
    return section


def _gaps(
    metrics: Mapping[str, Mapping[str, _Metric]],
    forget_quality: Mapping[str, Mapping[str, Any]],
    reference: str,
    cfg: EvaluationConfig,
) -> dict[str, list[dict[str, Any]]]:
    """Every metric of every non-reference model (the original included: it is the no-op control) minus
    the reference's, with the paired interval from the shared resamples."""
    gaps: dict[str, list[dict[str, Any]]] = {}
    ref = metrics[reference]
    for m, found in metrics.items():
        if m == reference:
            continue
        rows = []
        for name, metric in found.items():
            r = ref[name]
            interval = percentile_interval(
                metric.estimate - r.estimate, metric.replicates - r.replicates, cfg.level
            )
            own = percentile_interval(r.estimate, r.replicates, cfg.level)
            rows.append(gap_row(name, metric.estimate, r.estimate, interval, own))
        d = float(forget_quality[m]["d"])
        rows.append(gap_row("forget_quality.ks_d", d, 0.0, None, None))
        gaps[m] = [row.to_dict() for row in rows]
    return gaps


def _test_accuracy_drops(
    metrics: Mapping[str, Mapping[str, _Metric]], original: str, reference: str, cfg: EvaluationConfig
) -> dict[str, dict[str, float]]:
    """Test accuracy of the original minus each other model's, paired over the same resampled test rows."""
    key = "utility.test.accuracy"
    o = metrics[original][key]
    return {
        m: percentile_interval(
            o.estimate - found[key].estimate, o.replicates - found[key].replicates, cfg.level
        ).to_dict()
        for m, found in metrics.items()
        if m != original
    }


def _detection_floor(
    metrics: Mapping[str, Mapping[str, _Metric]], original: str, reference: str, cfg: EvaluationConfig
) -> dict[str, Any]:
    """AUC gaps original − reference of every forget-vs-test attack, with nominal and Bonferroni intervals.

    Several attacks are tried, so the decision "some attack separates them" uses intervals widened for
    multiple comparisons (level 1 − (1 − level)/m); otherwise one attack in twenty would look significant by
    chance alone.
    """
    names = [
        k
        for k in metrics[original]
        if k.endswith(".auc") and k.startswith(("attacks.forget_vs_test.", "shadow.forget_vs_test."))
    ]
    m = len(names)
    adjusted = 1.0 - (1.0 - cfg.level) / m
    rows: dict[str, Any] = {}
    significant: list[str] = []
    for name in names:
        o, r = metrics[original][name], metrics[reference][name]
        diff = o.replicates - r.replicates
        nominal = percentile_interval(o.estimate - r.estimate, diff, cfg.level)
        wide = percentile_interval(o.estimate - r.estimate, diff, adjusted)
        sig = not wide.contains(0.0)
        key = name.removesuffix(".auc").replace(".forget_vs_test", "")
        rows[key] = {
            "auc_original": o.estimate,
            "auc_reference": r.estimate,
            "gap": nominal.to_dict(),
            "gap_adjusted": wide.to_dict(),
            "significant": sig,
        }
        if sig:
            significant.append(key)
    return {
        "contrast": "forget_vs_test",
        "description": "the same attacks on the original model vs the reference: the largest gap the attacks "
        "can see; a candidate's gaps are only evidence if this one is detectable",
        "adjusted_level": adjusted,
        "attacks": rows,
        "significant_attacks": significant,
    }
