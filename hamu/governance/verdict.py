"""The one verdict: whether a model's forgetting evidence passes.

Every place that states whether a candidate forgot (the batch flow's summary, MLflow tags, the ledger, the
receipts, the batch report and ``hamu promote``) calls :func:`decide` on the batch's evaluation report, so
"passed" has exactly one meaning.

The rule, gate by gate (docs/evaluation.md has the reasoning and the widths measured on the demo):

* **Equivalence, not closeness of point estimates.** A gated metric passes only when the whole confidence
  interval of its gap to the retrained reference lies inside ``[−δ, +δ]`` (two one-sided tests at the
  report's level, α = (1 − level)/2 per side). An interval entirely outside the band fails; one that crosses
  a band edge is ``inconclusive``, and inconclusive does not pass. All gates must pass (an
  intersection-union test), so no multiplicity correction is needed to pass.
* **Bands scale with what the attacks can see.** ``δ = max(noise, min(cap, fraction · |effect|))``: the
  effect is the original-vs-reference gap of the same metric, ``fraction`` defaults to one half (the
  non-inferiority convention of keeping at least half of the known effect: a candidate must close more than
  half of the way from the original to the reference, and may not overshoot by more than that), ``noise`` is
  the half-width of the reference's own interval for the metric (a band narrower than the metric's sampling
  noise could never be passed), and the cap keeps a huge effect from licensing a sloppy candidate. When the
  noise is above the cap the metric cannot resolve the cap at this sample size: the band is the noise, and
  the no-op control below is what notices that such a gate proves nothing.
* **The no-op must fail.** The original model goes through the same forgetting gates. The evidence is
  ``adequate`` only when at least one of them *fails* it (its interval lies wholly outside the band): only
  then can these attacks and statistics tell a model that has not forgotten from the reference. Otherwise
  it is ``insufficient`` and nothing passes without an explicit, recorded override.
* **Integrity gates** fail with their own reason: a proxy reference, a run that applied no step, weights
  identical to the original's, and an evaluation report whose digest differs from its ledger record.

This module is pure Python over the report's JSON; it imports no orchestration or tracking library.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from statistics import NormalDist
from typing import Any, Literal

from hamu.evaluation.forget_quality import member_direction, metric_kind

Status = Literal["pass", "fail", "inconclusive"]
Evidence = Literal["adequate", "insufficient"]

FORGET_METRICS = ("utility.forget.accuracy", "utility.forget.loss")
KS_METRIC = "forget_quality.ks_d"
#: The test-accuracy drop a candidate may show against the retrained reference unless a policy says otherwise.
UTILITY_BUDGET = 0.02


@dataclass(frozen=True)
class GatePolicy:
    """How wide the equivalence bands are and how much test accuracy a candidate may lose.

    ``caps`` are the old absolute bands, now upper limits only. ``ks_alpha`` sets the KS band's noise floor:
    the two-sample critical value of D at that level (D has no bootstrap interval in the report, so the KS
    gate compares D itself with a band whose floor is the D that sampling noise alone reaches).
    """

    fraction: float = 0.5
    caps: Mapping[str, float] = field(
        default_factory=lambda: {"accuracy": 0.05, "loss": 0.25, "auc": 0.05, "ks_d": 0.2}
    )
    utility_budget: float = UTILITY_BUDGET
    ks_alpha: float = 0.05

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"fraction must lie in (0, 1], got {self.fraction!r}")
        if not (math.isfinite(self.utility_budget) and self.utility_budget >= 0):
            raise ValueError(f"utility_budget must be a finite number >= 0, got {self.utility_budget!r}")
        if not 0.0 < self.ks_alpha < 1.0:
            raise ValueError(f"ks_alpha must lie in (0, 1), got {self.ks_alpha!r}")
        for kind, cap in self.caps.items():
            if not (math.isfinite(cap) and cap > 0):
                raise ValueError(f"cap for {kind!r} must be a finite number > 0, got {cap!r}")

    def band(self, kind: str, effect: float, noise: float) -> float:
        """``max(noise, min(cap, fraction·|effect|))``: the cap limits the effect's share, never the noise
        floor (a band under the metric's own noise would fail a model equivalent to the reference)."""
        cap = self.caps.get(kind, math.inf)
        return max(noise, min(cap, self.fraction * abs(effect)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "fraction": self.fraction,
            "caps": dict(self.caps),
            "utility_budget": self.utility_budget,
            "ks_alpha": self.ks_alpha,
        }


@dataclass(frozen=True)
class RunFacts:
    """What the report cannot know about the run that produced the candidate; read from the ledger.

    A fact left at its default (``None`` or ``""``) is unknown and its gate is not applied; the batch flow
    and ``hamu promote`` always know all of them.

    ``report_sha256_recorded``/``_actual``: the evaluation report's digest in its ledger record and of the
    file being judged (``None`` when the caller holds the report in memory and there is no file yet).
    """

    action: str = "unlearn"
    steps_applied: int | None = None
    candidate_weights: str = ""
    original_weights: str = ""
    report_sha256_recorded: str | None = None
    report_sha256_actual: str | None = None


@dataclass(frozen=True)
class Gate:
    name: str
    status: Status
    reason: str
    metric: str = ""
    gap: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    band: float | None = None
    direction: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Verdict:
    """The candidate's gates, the original's control gates, and what they add up to."""

    model: str
    status: Status
    evidence: Evidence
    evidence_reason: str
    gates: tuple[Gate, ...]
    control: tuple[Gate, ...]
    policy: GatePolicy

    @property
    def passed(self) -> bool:
        """Every gate passes and the evidence could have caught a model that did not forget."""
        return self.status == "pass" and self.evidence == "adequate"

    def promotable(self, *, accept_insufficient_evidence: bool = False) -> bool:
        """``passed``; or, with the override, insufficient evidence where no gate *fails*.

        The override only waives what weak evidence cannot decide (inconclusive gates); a gate that fails,
        an integrity gate included, is never overridden.
        """
        if self.passed:
            return True
        if not accept_insufficient_evidence or self.evidence != "insufficient":
            return False
        return self.status != "fail"

    @property
    def failing(self) -> tuple[Gate, ...]:
        return tuple(g for g in self.gates if g.status != "pass")

    @property
    def reason(self) -> str:
        """The outcome in plain words, naming every gate that did not pass."""
        if self.passed:
            return f"passes all {len(self.gates)} gates; evidence adequate ({self.evidence_reason})"
        parts = [f"{g.name} {g.status} ({g.reason})" for g in self.failing]
        if self.evidence == "insufficient":
            parts.append(f"evidence insufficient: {self.evidence_reason}")
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "status": self.status,
            "evidence": self.evidence,
            "evidence_reason": self.evidence_reason,
            "passed": self.passed,
            "reason": self.reason,
            "gates": [g.to_dict() for g in self.gates],
            "control": [g.to_dict() for g in self.control],
            "policy": self.policy.to_dict(),
        }


def decide(
    report: Mapping[str, Any],
    facts: RunFacts | None = None,
    *,
    model: str = "unlearned",
    original: str = "original",
    policy: GatePolicy | None = None,
) -> Verdict:
    """Judge ``model``'s evidence in an evaluation report (:class:`hamu.evaluation.EvaluationReport` JSON).

    Raises ``ValueError`` when the report lacks the model, the original, or the sections a gate needs:
    a verdict is never reached on missing evidence.
    """
    pol = policy or GatePolicy()
    if report.get("reference", {}).get("kind") == "bank":
        from hamu.governance.bank_gates import decide_bank

        return decide_bank(report, facts or RunFacts(), model=model, original=original, policy=pol)
    gaps = report.get("gaps", {})
    for name in (model, original):
        if name not in gaps:
            raise ValueError(f"the report has no gaps for model {name!r}; have {sorted(gaps)}")
    rows = {str(r["metric"]): r for r in gaps[model]}
    effects = {str(r["metric"]): r for r in gaps[original]}
    level = float(report.get("config", {}).get("confidence_level", 0.95))
    forget_names = _forgetting_metrics(rows)
    ks = report.get("forget_quality", {})
    forgetting = [_equivalence(rows[m], effects[m], pol) for m in forget_names]
    control = [_equivalence(effects[m], effects[m], pol) for m in forget_names]
    if KS_METRIC in rows:
        if model not in ks or original not in ks:
            raise ValueError(f"the report's forget_quality section lacks {model!r} or {original!r}")
        forgetting.append(_ks_gate(ks[model], ks[original], pol))
        control.append(_ks_gate(ks[original], ks[original], pol))
    gates = [
        *integrity(report, facts or RunFacts()),
        *forgetting,
        _utility_gate(rows, pol, level),
    ]
    evidence, why = evidence_of(control)
    return Verdict(
        model=model,
        status=combine(gates),
        evidence=evidence,
        evidence_reason=why,
        gates=tuple(gates),
        control=tuple(control),
        policy=pol,
    )


def forget_loss_target(
    original_losses: Sequence[float],
    reference_losses: Sequence[float],
    *,
    policy: GatePolicy | None = None,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """The forget-loss level an unlearning run should reach, and how close is close enough.

    Returns ``(target, tolerance, band)``: the reference's mean loss on the forget rows, half the
    ``forget-loss`` gate's band, and that band (from the same rule as :func:`decide`, with the noise floor
    as a normal-approximation half-width of the reference's mean). Aiming at half the band leaves room for
    the gate's interval, which must lie wholly inside the band.
    """
    pol = policy or GatePolicy()
    orig = [float(v) for v in original_losses]
    ref = [float(v) for v in reference_losses]
    if not orig or len(orig) != len(ref):
        raise ValueError(f"need equally many (>0) per-row losses, got {len(orig)} and {len(ref)}")
    if not all(math.isfinite(v) for v in (*orig, *ref)):
        raise ValueError("per-row losses must be finite")
    n = len(ref)
    mean_o, mean_r = sum(orig) / n, sum(ref) / n
    sd = math.sqrt(sum((v - mean_r) ** 2 for v in ref) / max(n - 1, 1))
    z = NormalDist().inv_cdf(0.5 + level / 2)
    band = pol.band("loss", mean_o - mean_r, z * sd / math.sqrt(n))
    return mean_r, band / 2, band


def forget_accuracy_target(
    original_correct: Sequence[float],
    reference_correct: Sequence[float],
    *,
    policy: GatePolicy | None = None,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """The forget accuracy an unlearned model should land near: ``(target, tolerance, band)``.

    The reference's mean correctness on the forget rows (0/1 per row for a retrain; a per-row expected
    value from a reference bank), half the ``forget-accuracy`` gate's band (the same rule as
    :func:`forget_loss_target`, with the binomial noise of the reference's mean), and that band. Why a
    second target: a run can reach the reference's mean forget *loss* by raising a few rows' losses a lot
    while most forget rows stay correctly classified; the gates then still tell it from the reference.
    """
    pol = policy or GatePolicy()
    orig = [float(v) for v in original_correct]
    ref = [float(v) for v in reference_correct]
    if not orig or len(orig) != len(ref):
        raise ValueError(f"need equally many (>0) per-row values, got {len(orig)} and {len(ref)}")
    if not all(math.isfinite(v) for v in (*orig, *ref)):
        raise ValueError("per-row correctness values must be finite")
    n = len(ref)
    mean_o, mean_r = sum(orig) / n, min(max(sum(ref) / n, 0.0), 1.0)
    z = NormalDist().inv_cdf(0.5 + level / 2)
    band = pol.band("accuracy", mean_o - mean_r, z * math.sqrt(mean_r * (1 - mean_r) / n))
    return mean_r, band / 2, band


# -- gates ---------------------------------------------------------------------------------------------


def _forgetting_metrics(rows: Mapping[str, Any]) -> list[str]:
    """Forget accuracy and loss, and the forget-vs-test AUC of every attack (population and LiRA)."""
    names = [m for m in FORGET_METRICS if m in rows]
    names += sorted(
        m
        for m in rows
        if m.endswith(".auc") and m.startswith(("attacks.forget_vs_test.", "shadow.forget_vs_test."))
    )
    missing = [m for m in FORGET_METRICS if m not in rows]
    if missing:
        raise ValueError(f"the report has no gap rows for {missing}: cannot judge forgetting")
    return names


def _gate_name(metric: str) -> str:
    if metric.startswith("utility.forget."):
        return "forget-" + metric.rsplit(".", 1)[-1]
    if metric.startswith("shadow."):
        return "mia-lira"
    return "mia-" + metric.split(".")[2]


def _equivalence(row: Mapping[str, Any], effect_row: Mapping[str, Any], pol: GatePolicy) -> Gate:
    metric = str(row["metric"])
    gap, lo, hi = float(row["gap"]), row.get("gap_ci_low"), row.get("gap_ci_high")
    noise = float(effect_row.get("reference_half_width") or 0.0)
    band = pol.band(metric_kind(metric), float(effect_row["gap"]), noise)
    if lo is None or hi is None:
        raise ValueError(f"metric {metric!r} has no interval: an equivalence test needs one")
    lo, hi = float(lo), float(hi)
    if -band <= lo and hi <= band:
        status: Status = "pass"
    elif hi < -band or lo > band:
        status = "fail"
    else:
        status = "inconclusive"
    direction = _direction(metric, gap) if status != "pass" else ""
    where = {"pass": "inside", "fail": "outside", "inconclusive": "crosses"}[status]
    reason = f"gap {gap:+.4f}, interval [{lo:+.4f}, {hi:+.4f}] {where} ±{band:.4f}"
    if direction:
        reason = f"{direction}: {reason}"
    return Gate(_gate_name(metric), status, reason, metric, gap, lo, hi, band, direction)


def _direction(metric: str, gap: float) -> str:
    sign = member_direction(metric) * (1 if gap > 0 else -1 if gap < 0 else 0)
    return "under-unlearning" if sign > 0 else "over-unlearning" if sign < 0 else "deviates"


def ks_critical_d(n: int, m: int, alpha: float) -> float:
    """The asymptotic two-sample KS critical value c(α)·√((n+m)/(n·m)), c(α) = √(−ln(α/2)/2)."""
    if n < 1 or m < 1:
        raise ValueError(f"KS sample sizes must be >= 1, got {n}, {m}")
    return math.sqrt(-math.log(alpha / 2) / 2) * math.sqrt((n + m) / (n * m))


def _ks_gate(found: Mapping[str, Any], original: Mapping[str, Any], pol: GatePolicy) -> Gate:
    """D against the reference; the band scales with the original's D and has the critical D as floor."""
    d = float(found["d"])
    noise = ks_critical_d(int(found["n_model"]), int(found["n_reference"]), pol.ks_alpha)
    band = pol.band("ks_d", float(original["d"]), noise)
    status: Status = "pass" if d <= band else "fail"
    reason = f"KS D={d:.3f} (p={float(found['p_value']):.3g}, n={int(found['n_model'])}) vs band {band:.3f}"
    return Gate("ks", status, reason, KS_METRIC, d, None, None, band, "" if status == "pass" else "deviates")


def _utility_gate(rows: Mapping[str, Any], pol: GatePolicy, level: float) -> Gate:
    """Non-inferiority on test accuracy against the reference: the gap's whole interval must lie above
    ``−budget``. Against the reference, not the original: the accuracy that exact retraining itself loses
    is the price of the deletion, not a defect of the candidate."""
    row = rows.get("utility.test.accuracy")
    if row is None or row.get("gap_ci_low") is None or row.get("gap_ci_high") is None:
        raise ValueError("the report has no test-accuracy gap with an interval")
    est, lo, hi = float(row["gap"]), float(row["gap_ci_low"]), float(row["gap_ci_high"])
    budget = pol.utility_budget
    status: Status = "pass" if lo >= -budget else "fail" if hi < -budget else "inconclusive"
    reason = (
        f"test accuracy {est:+.4f} against the reference, {level:.0%} interval [{lo:+.4f}, {hi:+.4f}], "
        f"allowed drop {budget:.4f}"
    )
    direction = "" if status == "pass" else "deviates"
    return Gate("test-accuracy", status, reason, "utility.test.accuracy", est, lo, hi, budget, direction)


def integrity(report: Mapping[str, Any], facts: RunFacts, *, bank: bool = False) -> list[Gate]:
    """The gates on how the candidate and its evidence were made (``bank``: a verified reference bank stands
    in for the retrain, so the reference-retrained gate does not apply)."""
    kind = str(report.get("reference", {}).get("kind", ""))
    gates = (
        []
        if bank
        else [
            Gate(
                "reference-retrained",
                "pass" if kind == "retrained" else "fail",
                "the reference is a model retrained without the forget rows"
                if kind == "retrained"
                else f"the reference is a {kind or 'missing'} model, not a retrain without the forget rows",
            )
        ]
    )
    if facts.action == "unlearn" and facts.steps_applied is not None:
        steps = facts.steps_applied
        ok = steps > 0
        gates.append(
            Gate(
                "steps-applied",
                "pass" if ok else "fail",
                f"{steps} unlearning steps applied"
                if ok
                else f"the run applied {steps or 0} unlearning steps",
            )
        )
    if facts.candidate_weights and facts.original_weights:
        same = facts.candidate_weights == facts.original_weights
        gates.append(
            Gate(
                "weights-changed",
                "fail" if same else "pass",
                "the candidate's weights are byte-for-byte the original's"
                if same
                else "the candidate's weights differ from the original's",
            )
        )
    if facts.report_sha256_recorded is not None or facts.report_sha256_actual is not None:
        match = facts.report_sha256_recorded == facts.report_sha256_actual
        gates.append(
            Gate(
                "report-integrity",
                "pass" if match else "fail",
                "evaluation.json matches its ledger record"
                if match
                else "evaluation.json does not match the digest in its ledger record",
            )
        )
    return gates


def combine(gates: Sequence[Gate]) -> Status:
    statuses = {g.status for g in gates}
    return "fail" if "fail" in statuses else "inconclusive" if "inconclusive" in statuses else "pass"


def evidence_of(control: Sequence[Gate]) -> tuple[Evidence, str]:
    caught = [g for g in control if g.status == "fail"]
    if caught:
        names = ", ".join(g.name for g in caught)
        return "adequate", f"the unmodified original fails {len(caught)} of {len(control)} gates ({names})"
    widest = max(control, key=lambda g: abs(g.gap or 0.0) - (g.band or 0.0))
    return (
        "insufficient",
        f"the unmodified original fails none of the {len(control)} forgetting gates, so these attacks cannot "
        f"tell a model that has not forgotten from the reference (closest: {widest.name}, {widest.reason})",
    )
