"""The deletion-batch flow: claim → validate → hardness gate → unlearn (or retrain) → evaluate → register.

Every stage appends a hash-chained audit record. The champion alias is never moved here (promotion is a
separate, gated step), so a crash at any point leaves the served model as it was; claimed requests of a
dead batch are released by the next run.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import mlflow
import numpy as np
from prefect import flow
from prefect.context import get_run_context
from prefect_dask import DaskTaskRunner

from flows.config import BatchConfig
from hamu.audit import ANCHOR_TAG, KeyedHasher, load_or_create_key, sha256_json
from hamu.data import split_by_ids
from hamu.drift import advance, batch_gaps, breaches
from hamu.evaluation import MissingReferenceError, ReferenceSpec, ReferenceStats
from hamu.models.checkpoint import tensors_digest as _tensors_digest
from hamu.requests import RequestQueue, Status
from hamu.verdict import RunFacts, decide
from tasks.audit import BatchAudit
from tasks.batch_report import write_batch_report
from tasks.env import configure_environment
from tasks.evaluation import evaluate, make_plots, own_inputs, shadow_specs, train_shadow
from tasks.failure import record_failure, redacted_run_logs
from tasks.faults import check_fault_spec, maybe_fault
from tasks.hardness import assess, gate
from tasks.intake import claim_batch, close_requests, record_verdicts
from tasks.lease import keep_lease
from tasks.lineage import drift_of, plan_batch
from tasks.locks import BatchLock
from tasks.models import candidate_source, ensure_champion, load_preset_data, retrained_reference
from tasks.recovery import recover_dead_batches
from tasks.registration import (
    complete_candidate,
    log_dataset_digests,
    log_report_metrics,
    refresh_model_card,
    register_candidate,
)
from tasks.reporting import publish
from tasks.tracking import ensure_experiment
from tasks.unlearning import encoded_for, forget_target, retrain_instead, run_unlearning, target_summary
from tasks.validation import requests_frame, validate_requests_task


def new_batch_id() -> str:
    return datetime.now(UTC).strftime("b%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


@flow(
    name="shadow-references",
    # prefect_dask's DaskTaskRunner subclasses the bare TaskRunner, whose (invariant) future type then
    # defaults to PrefectConcurrentFuture, so flow()'s TaskRunner[PrefectFuture[Any]] refuses it; it runs fine
    task_runner=DaskTaskRunner(cluster_kwargs={"n_workers": 1, "threads_per_worker": 2, "processes": False}),  # type: ignore[arg-type]
)
def shadow_references(specs: list[ReferenceSpec]) -> list[ReferenceStats]:
    """Train the LiRA reference models in parallel on a Dask cluster (one task per model)."""
    futures = train_shadow.map(specs)
    return [f.result() for f in futures]


@contextmanager
def _timed(timings: dict[str, float], stage: str) -> Any:
    start = time.perf_counter()
    yield
    timings[stage] = round(time.perf_counter() - start, 3)


@flow(name="deletion-batch")
def deletion_batch(config: BatchConfig | None = None, batch_id: str | None = None) -> dict[str, Any]:
    cfg = config or BatchConfig()
    check_fault_spec()
    paths = configure_environment()
    batch_id = batch_id or new_batch_id()
    name = cfg.registered_name
    timings: dict[str, float] = {}
    hasher = KeyedHasher(load_or_create_key(paths.home, ledger=paths.audit / "ledger.jsonl"))
    queue = RequestQueue(paths.requests_url)
    lock = BatchLock(paths.work, batch_id)
    if not lock.acquire():
        raise RuntimeError(f"batch {batch_id} is already running")
    audit = BatchAudit(paths.audit, hasher, batch_id)
    summary: dict[str, Any] = {"batch_id": batch_id, "model_name": name}
    try:
        with _timed(timings, "setup"):
            ensure_experiment(paths)
            recovered = recover_dead_batches(queue, paths.work, paths.audit, hasher, batch_id)
            if recovered:
                summary["recovered"] = {
                    "released": recovered.released,
                    "abandoned_versions": recovered.abandoned_versions,
                    "deleted_work_areas": recovered.deleted_work_areas,
                }
            data = load_preset_data(cfg.preset)
            champion = ensure_champion(paths, data, name)
        with _timed(timings, "claim"):
            claimed = audit.run(claim_batch, queue, batch_id, cfg.max_requests)
        if not claimed:
            summary.update(requests=0, **_nothing_claimed(queue, batch_id))
            return summary
        summary["requests"] = len(claimed)
        maybe_fault("claim")
        # What a failure's text may quote: the claimed IDs, and the manifest's (carried-over erasures).
        raw_ids = {i for r in claimed for i in (r.request_id, r.record_id)} | set(data.manifest_ids)
        try:
            # keep_lease renews the claims' lease while the batch runs; Prefect's run logs get no raw ID
            with keep_lease(queue, batch_id), redacted_run_logs(raw_ids, hasher):
                summary.update(
                    _run_claimed(cfg, paths, data, champion, claimed, queue, audit, timings, summary)
                )
        except BaseException as exc:
            record_failure(exc, queue=queue, audit=audit, raw_ids=raw_ids, work_dir=paths.work_dir(batch_id))
            raise  # scrubbed in place: Prefect logs the redacted message
        summary["stage_seconds"] = timings
        publish(summary)
        return summary
    finally:
        lock.release()
        queue.close()


def _run_claimed(
    cfg: BatchConfig,
    paths: Any,
    data: Any,
    champion: Any,
    claimed: list[Any],
    queue: RequestQueue,
    audit: BatchAudit,
    timings: dict[str, float],
    summary: dict[str, Any],
) -> dict[str, Any]:
    batch_id = audit.batch_id
    hasher = audit.hasher
    out: dict[str, Any] = {}
    flow_run_id = str(get_run_context().flow_run.id)  # type: ignore[union-attr]
    with mlflow.start_run(run_name=f"batch-{batch_id}") as run:
        audit.mlflow_run_id = run.info.run_id
        out["mlflow_run_id"] = run.info.run_id
        out["prefect_flow_run_id"] = flow_run_id
        mlflow.set_tags(
            {"batch_id": batch_id, "prefect_flow_run_id": flow_run_id, "source_version": champion.version}
        )
        mlflow.log_params({k: v for k, v in cfg.model_dump().items() if v is not None})
        audit.record(
            "claim",
            decision=f"{len(claimed)} claimed",
            params={"requests": len(claimed), "champion_version": champion.version},
            inputs={"request_hashes": sha256_json(sorted(hasher.hash(r.request_id) for r in claimed))},
        )

        with _timed(timings, "validate"):
            erased_before = queue.erased_record_ids()
            frame = requests_frame(claimed)
            outcome = audit.run(validate_requests_task, frame, data.manifest_ids, erased_before)
            audit.run(record_verdicts, queue, batch_id, outcome.verdict_map())
        counts = outcome.counts()
        out["verdicts"] = counts
        gx = json.dumps(outcome.gx_result, sort_keys=True, default=str).encode()
        audit.record(
            "validate",
            decision=f"{counts.get('accepted', 0)} accepted",
            params={
                "counts": counts,
                "suite": outcome.suite.suite_name,
                "suite_sha256": outcome.suite.suite_sha256,
            },
            artifacts={"gx_result": ("gx_result.json", gx)},
        )
        maybe_fault("validate")
        rows = list(outcome.verdicts.itertuples(index=False))
        verdict_rows = [(str(r.request_id), str(r.record_id), str(r.verdict), str(r.reason)) for r in rows]
        accepted = outcome.accepted()
        accepted_requests = [str(x) for x in accepted["request_id"]]
        if accepted.empty:
            out.update(action="none", reason="no request was accepted")
            out.update(
                write_batch_report(
                    audit,
                    summary={**summary, **out, "source_version": champion.version},
                    verdict_rows=verdict_rows,
                    hardness={},
                    decision={},
                    evaluation=None,
                    verdict=None,
                    drift={},
                    plots={},
                    folder=paths.work_dir(batch_id) / "report",
                )
            )
            audit.issue_receipts(verdict_rows, model_name=name_of(champion), model_version="", evidence={})
            audit.run(close_requests, queue, batch_id, [], "")
            audit.delete_work_area(paths.work_dir(batch_id))
            audit.record("completed", decision="rejected", reason="no request was accepted")
            out["status"] = "rejected"
            return out

        with _timed(timings, "split"):
            accepted_records = [str(x) for x in accepted["record_id"]]
            plan = audit.run(plan_batch, data.manifest_ids, accepted_records, erased_before, champion, hasher)
            train_now = data.train
            if plan.absent:
                train_now = train_now.filter(lambda r: r["record_id"] not in plan.absent)
            split = split_by_ids(train_now, data.test, list(plan.forget), keyed_hash=hasher.hash)
            feat = champion.featurizer
            retain, forget, test = (split.tensors(p, feat) for p in ("retain", "forget", "test"))
        out["carried_over"] = len(plan.carried_over)
        # The forget digest is keyed (hmac-sha256:): no one finds the erased rows by enumerating the manifest
        digests = {"retain": split.retain_digest, "forget": split.forget_digest, "test": split.test_digest}
        log_dataset_digests(digests, split.spec.name, split.sizes())
        mlflow.log_params({f"size_{k}": v for k, v in split.sizes().items()})
        audit.record(
            "split",
            params={
                "sizes": split.sizes(),
                "previously_erased": len(erased_before),
                "absent_from_source": len(plan.absent),
                "carried_over": len(plan.carried_over),
            },
            inputs={**digests, "erasures_after": plan.manifest_after.digest()},
        )
        maybe_fault("split")

        source_drift = drift_of(champion)
        budget = cfg.drift_budget()
        with _timed(timings, "hardness"):
            report, per_step = audit.run(assess, champion, retain, forget, cfg)
            over_source = breaches(source_drift, budget)
            decision = audit.run(gate, report, per_step, champion, len(retain[1]), cfg, over_source)
        out.update(
            action=decision.action,
            reason=decision.reason,
            hardness_verdict=report.verdict,
            kappa=report.kappa,
        )
        mlflow.log_metrics({f"hardness.{k}": float(v) for k, v in report.to_dict().items() if _number(v)})
        audit.record(
            "hardness",
            decision=decision.action,
            reason=decision.reason,
            params={"verdict": report.verdict, "warnings": list(decision.warnings)},
            artifacts={
                "hardness": ("hardness.json", json.dumps(report.to_dict(), sort_keys=True).encode()),
                "decision": ("decision.json", json.dumps(decision.to_dict(), sort_keys=True).encode()),
            },
        )
        maybe_fault("hardness")

        with _timed(timings, "reference"):
            reference, kind, ref_seconds = audit.run(
                retrained_reference,
                paths,
                split,
                champion,
                train=cfg.train_reference or decision.action == "retrain",
            )
        if reference is None:
            raise MissingReferenceError(
                "no retrained reference for this retain set and train_reference is off: "
                "enable it or train one with the train-reference deployment"
            )
        audit.record(
            "reference",
            decision=kind,
            params={"train_seconds": round(ref_seconds, 3)},
            outputs={"weights": tensors_digest(reference.model)},
        )
        maybe_fault("reference")

        history: list[Any] = []
        tensor_names: tuple[str, ...] = ()
        action, target_params = decision.action, {}
        with _timed(timings, "unlearn"):
            if action == "unlearn":
                target = None
                if cfg.to_target and kind == "retrained":
                    ref_inputs = encoded_for(reference, feat, split.forget, forget[0])
                    policy = cfg.verdict_policy()
                    target = audit.run(
                        forget_target, champion, reference.model, forget, ref_inputs, policy, cfg.check_every
                    )
                result, seconds = audit.run(
                    run_unlearning, champion, retain, forget, cfg, run.info.run_id, target
                )
                model, history, tensor_names = result.model, result.history, result.tensor_names
                stop, steps = result.stop_reason, result.steps_applied
                target_params = target_summary(result, target)
                fallback = retrain_instead(target_params, steps)
                if fallback:
                    action, model, stop = "retrain", reference.model, fallback
                    out["fallback"] = fallback
            else:
                if kind != "retrained":
                    raise MissingReferenceError("retraining was chosen but only a proxy reference exists")
                model, seconds, stop, steps = reference.model, ref_seconds, "retrained", 0
        mlflow.log_metrics({"unlearn_seconds": seconds, "steps_applied": float(steps)})
        champion_weights, candidate_weights = tensors_digest(champion.model), tensors_digest(model)
        out.update(action=action, reason=stop if action != decision.action else decision.reason)
        audit.record(
            "unlearn",
            decision=action,
            reason=stop,
            params={
                "method": cfg.method if decision.action == "unlearn" else "exact-retrain",
                "steps": steps,
                **target_params,
            },
            inputs={"champion_weights": champion_weights},
            outputs={"weights": candidate_weights},
        )
        maybe_fault("unlearn")

        with _timed(timings, "evaluate"):
            gen = np.random.default_rng(cfg.seed)
            keep = np.sort(
                gen.choice(len(retain[1]), size=min(cfg.eval_retain_rows, len(retain[1])), replace=False)
            )
            splits = {"retain": (retain[0][keep], retain[1][keep]), "forget": forget, "test": test}
            source = candidate_source(champion, reference, action)  # the candidate's featurizer
            featurizers = {"retrained": reference.featurizer, "unlearned": source.featurizer}
            own = own_inputs(split, featurizers, feat, keep)  # text retrains read their own vocabulary
            stats = None
            if cfg.shadow_models >= 2:
                specs = shadow_specs(splits, cfg.shadow_models, cfg.seed, len(split.spec.class_names))
                stats = shadow_references(specs)
            evaluation = audit.run(
                evaluate,
                {"original": champion.model, "retrained": reference.model, "unlearned": model},
                splits,
                reference_kind=kind,
                stats=stats,
                digests=digests,
                seed=cfg.seed,
                model_inputs=own,
            )
            work = paths.work_dir(batch_id)
            evaluation.scores.save(work / "scores")
            plots = audit.run(make_plots, evaluation, history, tensor_names, cfg.method, work / "plots")
            report_path = evaluation.report.write(work / "evaluation.json")
        report_dict = evaluation.report.to_dict()
        log_report_metrics(report_dict)
        facts = RunFacts(
            action=action,
            steps_applied=steps,
            candidate_weights=candidate_weights,
            original_weights=champion_weights,
        )
        verdict = decide(report_dict, facts, policy=cfg.verdict_policy())
        passed = verdict.passed
        out.update(
            evidence=verdict.evidence,
            gates_passed=passed,
            verdict=verdict.status,
            verdict_reason=verdict.reason,
        )
        mlflow.set_tags(
            {"verdict": verdict.status, "evidence": verdict.evidence, "gates_passed": str(passed)}
        )
        deficit, auc_gap = batch_gaps(report_dict)
        drift_state = advance(
            source_drift, exact=action == "retrain", utility_deficit=deficit, auc_gap=auc_gap
        )
        over = breaches(drift_state, budget)
        drift = {
            "state": drift_state.to_dict(),
            "budget": budget.to_dict(),
            "breaches": over,
            "recommendation": (
                ("the next batch retrains exactly" if cfg.drift_action == "retrain" else "retrain fully")
                + " (cumulative drift over budget)"
                if over
                else ""
            ),
        }
        out["drift"] = drift
        mlflow.log_metrics({f"drift.{k}": float(v) for k, v in drift_state.to_dict().items()})
        audit.record(
            "evaluate",
            decision=verdict.status,
            reason=f"evidence {verdict.evidence}: {verdict.reason}"[:2000],
            params={"drift": drift, "verdict": verdict.to_dict()},
            artifacts={"evaluation": ("evaluation.json", report_path.read_bytes())},
        )
        out["report_path"] = str(paths.audit / "batches" / batch_id / "evaluation.json")
        maybe_fault("evaluate")

        with _timed(timings, "register"):
            metadata = dict(source.metadata)  # a retrain carries the reference's featurizer and config
            metadata.update(
                role="unlearned" if action == "unlearn" else "retrained",
                data_digest=split.retain_digest,
                data_size=len(retain[1]),
                batch_id=batch_id,
                source_version=champion.version,
            )
            metadata.pop("split", None)
            version = audit.run(
                register_candidate,
                name=champion.name,
                model=model,
                metadata=metadata,
                example=source.featurizer.encode(split.test.select(range(2))),
                report_path=report_path,
                manifest=plan.manifest_after,
                tags={
                    "batch_id": batch_id,
                    "prefect_flow_run_id": flow_run_id,
                    "source_version": champion.version,
                    "code_version": audit.ledger.records()[-1].code_version,
                    ANCHOR_TAG: _head_tag(audit),
                    "action": action,
                    "gates_passed": str(passed),
                    "verdict": verdict.status,
                    "evidence": verdict.evidence,
                    "erased_in_batch": str(len(accepted_requests)),
                    "carried_over": str(len(plan.carried_over)),
                    "retrain_recommended": "; ".join(over)[:500],
                    **drift_state.to_tags(),
                },
            )
        model_version = str(version.version)
        out["model_version"] = model_version
        audit.record(
            "register",
            decision="registered",
            params={"erased_records": len(plan.manifest_after), "carried_over": len(plan.carried_over)},
            outputs={
                "model_version": model_version,
                "weights": tensors_digest(model),
                "erasures": plan.manifest_after.digest(),
            },
        )
        maybe_fault("register")

        out.update(
            write_batch_report(
                audit,
                summary={**summary, **out, "source_version": champion.version},
                verdict_rows=verdict_rows,
                hardness=report.to_dict(),
                decision={**decision.to_dict(), "unlearning": target_params, "outcome": action},
                evaluation=report_dict,
                verdict=verdict.to_dict(),
                drift=drift,
                plots=plots,
                folder=work / "report",
            )
        )
        maybe_fault("report")
        evidence = {
            "status": "pending promotion: the candidate no longer carries the record; the served model "
            "does until `hamu promote` moves champion to it (a second receipt is issued then)",
            "verdict": verdict.status,
            "gates_passed": passed,
            "evidence": verdict.evidence,
            "action": action,
        }
        audit.issue_receipts(
            verdict_rows, model_name=champion.name, model_version=model_version, evidence=evidence
        )
        maybe_fault("receipts")
        audit.run(close_requests, queue, batch_id, accepted_requests, model_version)
        maybe_fault("close-requests")
        audit.run(complete_candidate, champion.name, model_version)
        maybe_fault("close")
        refresh_model_card(champion.name)
        audit.delete_work_area(paths.work_dir(batch_id))
        audit.record("completed", decision="candidate", outputs={"model_version": model_version})
        out["status"] = "completed"
    return out


def _nothing_claimed(queue: RequestQueue, batch_id: str) -> dict[str, str]:
    """Why a run claimed nothing: an empty queue, or another running batch holds the pending work."""
    held = Counter(r.batch_id for r in queue.list(Status.CLAIMED) if r.batch_id and r.batch_id != batch_id)
    if not held:
        return {"status": "empty", "message": "no pending requests to handle"}
    owners = ", ".join(f"{b} ({n})" for b, n in sorted(held.items()))
    return {
        "status": "busy",
        "message": f"nothing left to claim: {sum(held.values())} request(s) are being handled by running "
        f"batch {owners}; this run handles none of them (no request is handled twice)",
    }


def _head_tag(audit: BatchAudit) -> str:
    """The chain head now, for the version's anchor tag (a ledger cut back before it is then detected)."""
    head = audit.ledger.head()
    return head.to_tag() if head else ""


def tensors_digest(model: Any) -> str:
    """SHA-256 of a model's weights (name, dtype, shape, bytes), as stored in checkpoints."""
    return _tensors_digest({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})


def name_of(champion: Any) -> str:
    return str(champion.name)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value)
